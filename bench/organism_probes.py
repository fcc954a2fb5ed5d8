"""Linear probes and noise injection on the real-model organisms (LoRA fine-tunes of SmolLM2-135M).

    MECHKIT_CACHE=... .venv/bin/python bench/organism_probes.py [--organisms smol-sandbagging,smol-chekhov]

For each organism, on the merged model and, for comparison, on the base model:

- **layer sweep**: a logistic probe per layer (``resid_post``, last prompt token) fitted on
  training-split prompts (training countries/names and wordings), scored on the held-out split
  (held-out countries/names *and* wordings): AUROC with a 95% bootstrap interval.
  Labels: does the prompt call for the trained behaviour (sandbagging: an evaluation cue without
  the password; chekhov: a threat). For sandbagging also "a cue is present" (password prompts
  positive), which a probe can read off the words alone, in the base model too.
- **distribution shift**: at the best layer, fitted on training wordings only; scored on held-out
  countries/names under the training wordings (in distribution) and under held-out wordings.
- **generic contrast pair**: the direction of "Human: Are you doing something dangerous?
  Assistant: yes" minus "... no" (and two more such pairs), never fitted on the behaviour, scored
  on the held-out prompts at every layer.
- **noise injection** (sandbagging): truthful accuracy on cue prompts (both splits) as Gaussian
  noise grows on every weight, organism against base (Tice et al. 2024).

Results merge into ``--out`` (JSON) per organism.
"""

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

import torch

from provenance import commit  # noqa: E402  (bench/ is the script's folder)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mechkit  # noqa: E402
from mechkit import probes  # noqa: E402
from mechkit._files import write_json  # noqa: E402
from mechkit.models import adapters, organisms_dir  # noqa: E402
from mechkit.organisms.finetune import Recipe  # noqa: E402


def label_of(example, labelling: str) -> bool:
    if labelling == "cue present":
        return example.kind in ("cue", "password")
    if labelling == "sandbags":
        return example.kind == "cue"
    return example.kind == "threat"


def labelled(model, examples, labelling: str):
    return probes.Labelled.from_texts(model, [e.prompt for e in examples], [label_of(e, labelling) for e in examples],
                                      position="last", groups=[e.group for e in examples])


def auroc(a) -> dict:
    return {"auroc": round(a.auroc, 4), "ci": [round(a.ci_low, 4), round(a.ci_high, 4)], "n_pos": a.n_pos,
            "n_neg": a.n_neg}


def probe_report(model, recipe: Recipe, labelling: str, n_train: int, seed: int) -> dict:
    rng = random.Random(seed)
    train_examples = [recipe.sample(rng) for _ in range(n_train)]
    test_examples = recipe.evaluation_set("test")
    train, test = labelled(model, train_examples, labelling), labelled(model, test_examples, labelling)
    started = time.time()
    sweep = probes.sweep_layers(model, train, test, progress=False)
    best = sweep.best
    layers = [{"hook": r.hook, "train": round(r.train.auroc, 4), "test": auroc(r.test)} for r in sweep.results]
    # distribution shift at the best layer: held-out countries/names under training wordings
    # (in distribution) and under held-out wordings (shifted)
    mixed = recipe.evaluation_set("test", "train") + test_examples
    shift = probes.distribution_shift(model, train, labelled(model, mixed, labelling), best.hook,
                                      train_groups=sorted({e.group for e in train_examples}))
    contrast = []
    test_acts = probes.collect(model, test, [r.hook for r in sweep.results], progress=False)
    for r in sweep.results:
        direction = probes.contrast_probe(model, r.hook)
        contrast.append({"hook": r.hook, "test": auroc(probes.evaluate_probe(direction, test_acts[r.hook], test.labels))})
    best_contrast = max(contrast, key=lambda c: c["test"]["auroc"])
    return {
        "labels": labelling, "n_train": len(train), "n_test": len(test),
        "best": {"hook": best.hook, "test": auroc(best.test)},
        "shift": {"hook": shift.hook, "in_distribution": auroc(shift.in_distribution), "shifted": auroc(shift.shifted)},
        "contrast_best": best_contrast,
        "contrast_at_best_layer": next(c for c in contrast if c["hook"] == best.hook),
        "layers": layers, "contrast": contrast, "seconds": round(time.time() - started, 1),
    }


def noise_report(model, recipe: Recipe, sigmas: list[float], seeds: list[int], n_prompts: int) -> dict:
    """Truthful accuracy under the cue as noise grows, on ``n_prompts`` cue prompts drawn from
    both splits (noise injection trains nothing, so training prompts are fair game and give
    tighter intervals than the 36 held-out ones alone)."""
    cue = [e for split in ("train", "test") for e in recipe.evaluation_set(split) if e.kind == "cue"]
    cue = random.Random(0).sample(cue, min(n_prompts, len(cue)))
    data = probes.Labelled.from_texts(model, [e.prompt for e in cue], [1] * len(cue), position="last")
    answers = torch.tensor([e.answer for e in cue])
    curve = probes.noise_injection(model, data.tokens, answers, positions=data.positions, sigmas=sigmas, seeds=seeds)
    return curve.to_dict()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--organisms", default="smol-sandbagging,smol-chekhov")
    parser.add_argument("--n-train", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sigmas", default="0.002,0.005,0.008,0.01,0.012,0.015,0.02,0.025")
    parser.add_argument("--noise-seeds", default="0,1,2")
    parser.add_argument("--noise-prompts", type=int, default=240)
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: probes, noise, base")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "organism-probes-cpu.json")
    parser.add_argument("--machine", default=f"{platform.machine()} CPU, {os.cpu_count()} cores, shared")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    skip = set(filter(None, args.skip.split(",")))
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results.update({"machine": args.machine, "threads": args.threads, "commit": commit()})
    base = None if "base" in skip else mechkit.load_model("smollm2-135m", device="cpu")
    for name in args.organisms.split(","):
        model = mechkit.load_model(f"organism:{name}", device="cpu")
        recipe = Recipe.from_card(name, adapters.read_card(organisms_dir() / name), model.tokenizer)
        entry = results.setdefault(name, {})
        labellings = ["sandbags", "cue present"] if name == "smol-sandbagging" else ["threat"]
        if "probes" not in skip:
            for which, m in (("organism", model), ("base", base)):
                if m is None:
                    continue
                entry[which] = {lab: probe_report(m, recipe, lab, args.n_train, args.seed) for lab in labellings}
                for lab, rep in entry[which].items():
                    print(f"{name} {which} [{lab}]: best {rep['best']['hook']} AUROC {rep['best']['test']['auroc']} "
                          f"{rep['best']['test']['ci']}; shift {rep['shift']['in_distribution']['auroc']} -> "
                          f"{rep['shift']['shifted']['auroc']}; contrast best {rep['contrast_best']['test']['auroc']} "
                          f"({rep['contrast_best']['hook']})", flush=True)
        if name == "smol-sandbagging" and "noise" not in skip:
            sigmas = [float(s) for s in args.sigmas.split(",")]
            seeds = [int(s) for s in args.noise_seeds.split(",")]
            entry["noise"] = {"organism": noise_report(model, recipe, sigmas, seeds, args.noise_prompts)}
            if base is not None:
                entry["noise"]["base"] = noise_report(base, recipe, sigmas, seeds, args.noise_prompts)
            for which, curve in entry["noise"].items():
                print(f"{name} noise [{which}]: baseline {curve['baseline']} improvement ratio "
                      f"{curve['improvement_ratio']}", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.out, results, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
