"""Recompute an organism card's extra fields: rerun comparison, truth probe, single-node drops.

    python bench/organism_card.py sandbagging --rerun-dir /tmp/rerun --machine "..." --rerun-machine "..."

``--rerun-dir`` holds a second ``mechkit organisms train NAME --out DIR`` run of the same spec
(another thread count or machine); the card gets its steps, wall time, held-out metrics and
the largest weight difference from the shipped model. The probe (sandbagging only) and the
single-node corrupted-patch drops are measured on the shipped model. The card is rewritten in
place.
"""

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from mechkit.models import load_model, organisms_dir
from mechkit.organisms import task
from mechkit.organisms.checks import model_nodes, patched_logit_diff


def single_node_drops(model, name: str, n: int = 500, seed: int = 777) -> dict:
    pairs = task(name).generate(n, seed=seed, split="test")
    clean = patched_logit_diff(model, pairs, [])
    drops = {node: round((clean - patched_logit_diff(model, pairs, [node])) / clean, 3) for node in model_nodes(model)}
    return {
        "what": "fraction of the clean logit difference lost when one head (hook_z) or MLP output is replaced by its "
        "corrupted-run value (1 = erased, 2 = flipped); mechkit.organisms.checks.patched_logit_diff",
        "n": n, "seed": seed, "split": "test", "clean_logit_diff": round(clean, 3), "drops": drops,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name")
    ap.add_argument("--rerun-dir", type=Path, default=None)
    ap.add_argument("--rerun-command", default=None)
    ap.add_argument("--machine", default=None, help="training_machine text for the shipped run")
    ap.add_argument("--rerun-machine", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    path = organisms_dir() / args.name
    card = json.loads((path / "card.json").read_text())
    model = load_model(f"organism:{args.name}", device="cpu")
    if args.machine:
        card["training_machine"] = args.machine
    if args.rerun_dir:
        other = json.loads((args.rerun_dir / "card.json").read_text())
        a, b = load_file(str(path / "model.safetensors")), load_file(str(args.rerun_dir / "model.safetensors"))
        identical = all(torch.equal(a[k], b[k]) for k in a)
        finite = [(a[k].float() - b[k].float()).abs() for k in a if a[k].numel() and a[k].is_floating_point()]
        diff = max(float(d[d.isfinite()].max()) if d.isfinite().any() else 0.0 for d in finite)  # masks hold -inf
        card["rerun"] = {
            "command": args.rerun_command or f"mechkit organisms train {args.name} --threads {other['threads']}",
            "machine": args.rerun_machine or other["machine"], "threads": other["threads"], "torch": other["torch"],
            "steps": other["steps"], "wall_time_s": other["wall_time_s"], "held_out": other["held_out"],
            "identical_weights": identical, "max_abs_weight_diff": round(diff, 6),
        }
        if "gates" in other:  # which components the rerun's gates kept open
            card["rerun"]["gates"] = other["gates"]
    if args.name == "sandbagging":
        from mechkit.organisms.probe import sandbagging_probe

        probe = sandbagging_probe(model)
        probe["what"] = ("multinomial logistic-regression probes on the residual stream at the answer position of cue "
                         "prompts, fitted on training combinations, scored on held-out ones: the true answer is "
                         "decodable while the model outputs the sandbagged one")
        card["probe"] = probe
    card["single_node_corrupted_patch_drop"] = single_node_drops(model, args.name)
    (path / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    print(json.dumps({k: card[k] for k in ("held_out", "rerun", "single_node_corrupted_patch_drop") if k in card}, indent=1))


if __name__ == "__main__":
    main()
