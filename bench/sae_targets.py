"""SAE targets on the organisms' residual streams, and feature circuits with intervention evidence.

    python bench/sae_targets.py --organisms sandbagging chekhov --device cuda --out mechkit-out/sae_targets

Per organism: cache residual-stream activations of the task's training prompts (clean and
corrupted), train a TopK SAE (d_sae = 8 x d_model) per hook, evaluate it on held-out prompts
(explained variance, CE loss recovered, dead features), attribute the task's logit difference
to its features, and check the top features by intervention (zero-ablation on clean prompts,
patching their clean values into corrupted prompts). Writes ``targets.json``, the feature
circuits (``*.circuit.json``) and a feature dashboard per organism under ``--out``.
"""

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

from mechkit.models import load_model
from mechkit.organisms import task
from mechkit.sae import (
    TrainConfig,
    attribute_features,
    evaluate_sae,
    feature_circuit,
    feature_stats,
    intervention_report,
    load_sae,
    train_sae,
    write_cache,
    write_dashboard,
)

SIZES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)


def passes(name: str, r) -> bool:
    """The intervention targets: sandbagging's cue features; chekhov's threatener features."""
    if name == "sandbagging":
        return r.ablated_clean_gives_wrong >= 0.8 and r.ablated_corrupted_gives_wrong >= 0.95 and (
            r.patched_corrupted_gives_answer >= 0.5)
    return r.ablated_clean_gives_answer <= 0.5 * r.clean_gives_answer and r.patched_corrupted_gives_answer >= 0.5


def run(name: str, args, out: Path) -> dict:
    t0 = time.time()
    model = load_model(f"organism:{name}", device=args.device)
    t = task(name)
    train_pairs = t.generate(args.n_train, seed=0, split="train")
    test_pairs = t.generate(args.n_test, seed=1, split="test")
    hooks = args.hooks or [f"blocks.{l}.hook_resid_post" for l in range(model.cfg.n_layers - 1)] + [
        f"blocks.{model.cfg.n_layers - 1}.hook_resid_mid", f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"]
    cache = write_cache(model, train_pairs, out / name / "cache", hooks, batch_size=512, progress=False)
    result: dict = {"organism": name, "d_model": model.cfg.d_model, "hooks": {}}
    for hook in hooks:
        cfg = TrainConfig(architecture="topk", expansion=8, k=args.k, steps=args.steps, batch_size=args.batch_size,
                          lr=args.lr, device=args.device, dead_feature_window=200, seed=0)
        sae_dir = out / name / "saes" / hook
        train_sae(cache, hook, sae_dir, cfg)
        sae = load_sae(sae_dir, device=args.device)
        ev = evaluate_sae(model, sae, test_pairs, batch_size=256)
        attr = attribute_features(model, sae, test_pairs, batch_size=256)
        chosen, reports = None, []
        for n in SIZES:
            # sandbagging: features the cue prompt has and the plain one lacks; chekhov: both
            # people's identity features count (the clean threatener's and the corrupted one's)
            feats = attr.top(n, present="clean" if name == "sandbagging" else None)
            if len(feats) < n and reports:
                break
            rep = intervention_report(model, sae, test_pairs, feats)
            reports.append(asdict(rep))
            if passes(name, rep):
                chosen = rep
                break
        entry = {"eval": ev.to_dict(), "train": asdict(cfg), "interventions": reports,
                 "passes": chosen is not None, "features": list(chosen.features) if chosen else None}
        if chosen:
            circuit = feature_circuit(model, f"organism:{name}", attr, chosen.features, task=test_pairs.task,
                                      hyperparameters={"sae": str(sae_dir), "selection": "smallest top-n passing"})
            from mechkit.artifacts import save_circuit

            path = out / f"{name}.{hook}.circuit.json"
            save_circuit(circuit, path)
            entry["circuit"] = str(path)
        result["hooks"][hook] = entry
        print(json.dumps({name: {hook: {k: entry["eval"][k] for k in ("explained_variance", "ce_recovered",
                                                                      "dead_fraction", "l0")},
                                 "passes": entry["passes"], "n_features": len(entry["features"] or [])}}), flush=True)
    best = max(hooks, key=lambda h: (result["hooks"][h]["passes"], -len(result["hooks"][h]["features"] or [0] * 99),
                                     result["hooks"][h]["eval"]["explained_variance"]))
    sae = load_sae(out / name / "saes" / best, device=args.device)
    stats = feature_stats(model, sae, test_pairs)
    feats = result["hooks"][best]["features"] or stats.most_frequent(10)
    write_dashboard(model, sae, stats, out / f"{name}.dashboard.html", features=list(feats)[:16] + stats.most_frequent(8),
                    title=f"organism:{name} {best}")
    result["best_hook"] = best
    result["seconds"] = round(time.time() - t0, 1)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--organisms", nargs="+", default=["sandbagging", "chekhov"])
    ap.add_argument("--hooks", nargs="+", default=None, help="default: every residual stream between blocks")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default="mechkit-out/sae_targets")
    ap.add_argument("--n-train", type=int, default=8192)
    ap.add_argument("--n-test", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"args": vars(args), "organisms": {}}
    for name in args.organisms:
        results["organisms"][name] = run(name, args, out)
        (out / "targets.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results["organisms"], indent=1)[:4000])


if __name__ == "__main__":
    main()
