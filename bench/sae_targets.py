"""SAE targets on the organisms' residual streams, and feature circuits with intervention evidence.

    python bench/sae_targets.py --organisms sandbagging chekhov --device cuda --out mechkit-out/sae_targets

Per organism: cache residual-stream activations of the task's training prompts (clean and
corrupted, every position), train a TopK SAE (d_sae = 8 x d_model) per hook with mechkit's
default dead-feature window (a tenth of the run), and evaluate it on held-out prompts
(explained variance, CE loss recovered, dead features: never firing on the held-out tokens).

Feature circuits: attribute the task's logit difference to the SAE's features (attribution
patching with an error term) on training-split prompts, at the positions intervened on, and
rank the features by it. Sandbagging keeps only the features the clean prompt has and the
corrupted one lacks (the cue); chekhov keeps both people's (the pair's two prompts name
different threateners, so a threatener feature is on in the clean prompt of one pair and in the
corrupted prompt of another). On the same training-split prompts, choose the smallest top-n
set meeting the ablation targets (sandbagging: zeroing the cue features makes >= 80% of cue
prompts truthful and keeps >= 95% of plain prompts truthful; chekhov: zeroing the threatener
features at least halves accuracy), then the smallest steering scale (1, 2, 4, 8) at which
setting the features to scale x their clean values flips half of the corrupted prompts. Both are
then measured on held-out prompts. Sandbagging intervenes at every position; chekhov where the
pair's prompts differ (the threatener's two mentions: the story names every person too), and,
separately, at the answer position only (``blocks.0.hook_resid_post`` is
``blocks.1.hook_resid_pre``: at the answer position it is what layer 1 reads there), and at
every position (after layer 0 the threatener's name has been copied to positions where the
prompts are identical: the answer position and those layer 1 reads its keys from).

``--rank activation`` ranks the features instead by their mean activation times decoder norm
at the positions intervened on, over both prompts of the same training-split pairs
(:func:`mechkit.sae.feature_strength`: how much each writes there, no labels used; sandbagging
still keeps only the cue prompt's features); the size and the steering scale are chosen on those
pairs as above. ``--sae DIR`` uses an SAE already trained (SAELens's on-disk format, e.g. a
shipped one under ``bench/results/saes``) at its own hook, with no activation cache or training;
``--where`` restricts the position sets tried.

Writes ``targets.json``, the feature circuits (``*.circuit.json``, features as nodes) and a
feature dashboard per organism under ``--out``.
"""

import argparse
import json
import time
from dataclasses import asdict
from types import SimpleNamespace
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
    feature_strength,
    intervention_report,
    load_sae,
    sae_hook,
    train_sae,
    write_cache,
    write_dashboard,
)
from mechkit.sae.attribution import where_mask

SIZES = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256)
SCALES = (1.0, 2.0, 4.0, 8.0)


def ablation_ok(name: str, r) -> bool:
    """The ablation half of the targets: sandbagging's cue features restore the truth on cue
    prompts and leave plain prompts truthful; chekhov's threatener features halve accuracy."""
    if name == "sandbagging":
        return r.ablated_clean_gives_wrong >= 0.8 and r.ablated_corrupted_gives_wrong >= 0.95
    return r.ablated_clean_gives_answer <= 0.5 * r.clean_gives_answer


def ablation_strength(name: str, r) -> float:
    """How close the ablation comes to its targets (larger is better), for ranking sets that miss."""
    if name == "sandbagging":
        return r.ablated_clean_gives_wrong + r.ablated_corrupted_gives_wrong
    return -r.ablated_clean_gives_answer


def passes(name: str, r) -> bool:
    """Both halves: the ablation targets, and adding the features flips >= half the plain prompts."""
    return ablation_ok(name, r) and r.patched_corrupted_gives_answer >= 0.5


# where each organism's features are intervened on (mechkit.sae.intervention_report's ``where``)
WHERE = {"sandbagging": ("all",), "chekhov": ("diff", "answer", "all")}
PRESENT = {"sandbagging": "clean"}  # chekhov: None (both prompts' threateners)


def positions(pairs, where: str) -> list[int] | None:
    """The positions whose attributions rank the features: those intervened on."""
    mask = where_mask(pairs, where)
    return None if mask is None else mask.any(0).nonzero().flatten().tolist()


RANKS = ("attribution", "activation")
RANK_TEXT = {"attribution": "attribution patching of the logit difference at the positions intervened on",
             "activation": "mean activation x decoder norm at the positions intervened on, both prompts (no labels)"}


def ranking(name: str, model, sae, pairs, attr, where: str, rank: str):
    """``top(n)``: the n best features at the positions intervened on, by attribution, or by
    mean activation x decoder norm there (label-free; features never active there are left out)."""
    at = positions(pairs, where)
    if rank == "attribution":
        return lambda n: attr.top(n, present=PRESENT.get(name), positions=at)
    allowed = set(attr.top(int(sae.cfg.d_sae), present=PRESENT.get(name), positions=at))
    strength = feature_strength(model, sae, pairs, where=where)
    order = [f for f in strength.argsort(descending=True).tolist() if strength[f] > 0 and f in allowed]
    return lambda n: order[:n]


def select(name: str, model, sae, pairs, attr, where: str, rank: str = "attribution"):
    """On training-split pairs: the smallest top-n feature set meeting the ablation targets (else
    the best tried), then the smallest steering scale that flips half the corrupted prompts."""
    tried = []
    top = ranking(name, model, sae, pairs, attr, where, rank)
    for n in SIZES:
        feats = top(n)
        if tried and len(feats) == len(tried[-1][0]):
            break
        rep = intervention_report(model, sae, pairs, feats, where=where)
        tried.append((feats, rep))
        if ablation_ok(name, rep):
            break
    key = lambda r: ablation_strength(name, r)  # noqa: E731
    feats, rep = next(((f, r) for f, r in tried if ablation_ok(name, r)), max(tried, key=lambda fr: key(fr[1])))
    scale = SCALES[-1]
    for sc in SCALES:
        if intervention_report(model, sae, pairs, feats, steer_scale=sc, where=where).patched_corrupted_gives_answer >= 0.5:
            scale = sc
            break
    return feats, scale, [asdict(r) for _, r in tried]


@torch.no_grad()
def what_they_encode(model, sae, pairs, feats) -> dict:
    """For chekhov: how much of the chosen features' activation at the answer position (clean
    prompts) the threatener's name explains, and how much the answer (the threatener's secret)
    does: the between-group share of the variance (eta squared), pooled over the features."""
    hook = sae.cfg.metadata.hook_name
    rows = torch.arange(len(pairs))
    acts = []
    for start in range(0, len(pairs), 512):
        batch = pairs[start : start + 512]
        _, cache = model.run_with_cache(batch.clean, names_filter=[hook])
        acts.append(sae.encode(cache[hook])[torch.arange(len(batch)), batch.answer_pos][:, feats])
    acts = torch.cat(acts).float()  # [pairs, features]
    first_diff = (pairs.clean != pairs.corrupted).float().argmax(1)
    groups = {"threatener": pairs.clean[rows, first_diff], "answer": pairs.answer}
    total = (acts - acts.mean(0)).pow(2).sum()
    out = {"variance": float(total / len(pairs))}
    for key, g in groups.items():
        between = sum(((g == v).sum() * (acts[g == v].mean(0) - acts.mean(0)).pow(2)).sum() for v in g.unique())
        out[f"eta2_{key}"] = float(between / total.clamp(min=1e-12))
    return out


SHIP_NAMES = {"sandbagging": "cue", "chekhov": "threatener"}


def ship(name: str, hook: str, item: dict, sae_dir: Path, dest: Path) -> str:
    """Copy a feature circuit and its SAE (SAELens's on-disk format) under ``dest``, the
    circuit naming the SAE by a path relative to the circuit's folder (an SAE already there,
    as with ``--sae`` on a shipped one, is left as it is)."""
    import dataclasses
    import shutil

    from mechkit.artifacts import load_circuit, save_circuit

    sae_dest = dest / "saes" / f"{name}-{hook}"
    sae_dest.mkdir(parents=True, exist_ok=True)
    if sae_dest.resolve() != Path(sae_dir).resolve():
        for f in ("cfg.json", "sae_weights.safetensors", "sparsity.safetensors"):
            shutil.copyfile(Path(sae_dir) / f, sae_dest / f)
    circuit = load_circuit(item["circuit"])
    hp = {**circuit.hyperparameters, "sae": sae_dest.relative_to(dest).as_posix()}
    path = dest / f"{name}-{SHIP_NAMES.get(name, 'task')}-features.circuit.json"
    save_circuit(dataclasses.replace(circuit, hyperparameters=hp), path)
    return str(path)


def run(name: str, args, out: Path) -> dict:
    t0 = time.time()
    model = load_model(f"organism:{name}", device=args.device)
    t = task(name)
    train_pairs = t.generate(args.n_train, seed=0, split="train")
    select_pairs = t.generate(args.n_select, seed=2, split="train")
    test_pairs = t.generate(args.n_test, seed=1, split="test")
    if args.sae:  # an SAE already trained, at its own hook
        from mechkit.models import fingerprint

        given = load_sae(args.sae, device=args.device)
        if getattr(given.cfg.metadata, "mechkit_model_fingerprint", None) not in (None, fingerprint(model)):
            raise SystemExit(f"{args.sae} was trained on other weights than organism:{name}'s")
        hooks = [sae_hook(given)]
    else:
        hooks = args.hooks or [f"blocks.{l}.hook_resid_post" for l in range(model.cfg.n_layers - 1)] + [
            f"blocks.{model.cfg.n_layers - 1}.hook_resid_mid", f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"]
        cache = write_cache(model, train_pairs, out / name / "cache", hooks, batch_size=512, progress=False)
    result: dict = {"organism": name, "d_model": model.cfg.d_model, "rank": args.rank, "hooks": {}}
    sae_dirs: dict[str, Path] = {}
    for hook in hooks:
        cfg = TrainConfig(architecture="topk", expansion=8, k=args.k, steps=args.steps, batch_size=args.batch_size,
                          lr=args.lr, device=args.device, seed=0, **({"init": args.init} if args.init else {}))
        sae_dir = sae_dirs[hook] = Path(args.sae) if args.sae else out / name / "saes" / hook
        t1 = time.time()
        if not args.sae and not (args.reuse and (sae_dir / "cfg.json").is_file()):
            train_sae(cache, hook, sae_dir, cfg)
        train_s = time.time() - t1
        sae = load_sae(sae_dir, device=args.device)
        ev = evaluate_sae(model, sae, test_pairs, batch_size=256)
        attr = attribute_features(model, sae, select_pairs, batch_size=256)
        entry = {"eval": ev.to_dict(), "train": {"sae": str(sae_dir)} if args.sae else asdict(cfg),
                 "train_seconds": round(train_s, 1), "interventions": {}}
        for where in args.where or WHERE.get(name, ("all",)):
            feats, scale, tried = select(name, model, sae, select_pairs, attr, where, args.rank)
            final = intervention_report(model, sae, test_pairs, feats, steer_scale=scale, where=where)
            item = {"selection": {"pairs": select_pairs.task, "tried": tried}, "features": feats,
                    "steer_scale": scale, "held_out": asdict(final), "passes": passes(name, final)}
            if scale != 1.0:  # what adding the features at their own strength does
                item["held_out_scale_1"] = asdict(intervention_report(model, sae, test_pairs, feats, where=where))
            if name == "chekhov" and where == "answer" and feats:
                item["encodes"] = what_they_encode(model, sae, test_pairs, feats)
            circuit = feature_circuit(
                model, f"organism:{name}", attr, feats, task=select_pairs.task,
                hyperparameters={"sae": str(sae_dir), "where": where, "rank": RANK_TEXT[args.rank],
                                 "selection": "smallest top-n meeting the "
                                 "ablation targets on training-split pairs", "steer_scale": scale,
                                 "held_out": asdict(final), "held_out_task": test_pairs.task,
                                 "passes": item["passes"]})
            from mechkit.artifacts import save_circuit

            path = out / f"{name}.{hook}.{where}.circuit.json"
            save_circuit(circuit, path)
            item["circuit"] = str(path)
            entry["interventions"][where] = item
            f = item["held_out"]
            print(json.dumps({name: {hook: {k: round(entry["eval"][k], 4) for k in (
                "explained_variance", "ce_recovered", "dead_fraction", "l0")}, "where": where,
                "n_features": len(feats), "steer_scale": scale, "restore": f["ablated_clean_gives_wrong"],
                "keep": f["ablated_corrupted_gives_wrong"], "ablated_clean_gives_answer": f["ablated_clean_gives_answer"],
                "induce": f["patched_corrupted_gives_answer"], "passes": item["passes"]}}), flush=True)
        entry["passes"] = any(i["passes"] for i in entry["interventions"].values())
        result["hooks"][hook] = entry
    def item_rank(i: dict):  # passing first, then the strongest ablation, then the fewest features
        return i["passes"], ablation_strength(name, SimpleNamespace(**i["held_out"])), -len(i["features"])

    def rank(hook: str):
        return max(item_rank(i) for i in result["hooks"][hook]["interventions"].values())

    best = max(hooks, key=rank)
    sae = load_sae(sae_dirs[best], device=args.device)
    stats = feature_stats(model, sae, test_pairs)
    item = max(result["hooks"][best]["interventions"].values(), key=item_rank)
    feats = item["features"]
    write_dashboard(model, sae, stats, out / f"{name}.dashboard.html", features=list(feats)[:16] + stats.most_frequent(8),
                    title=f"organism:{name} {best}")
    result["best_hook"] = best
    if args.ship:  # the circuit's hyperparameters record whether it passes
        result["shipped"] = ship(name, best, item, sae_dirs[best], Path(args.ship))
    result["seconds"] = round(time.time() - t0, 1)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--organisms", nargs="+", default=["sandbagging", "chekhov"])
    ap.add_argument("--hooks", nargs="+", default=None, help="default: every residual stream between blocks")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default="mechkit-out/sae_targets")
    ap.add_argument("--n-train", type=int, default=8192)
    ap.add_argument("--n-test", type=int, default=4096, help="held-out pairs (evaluation and interventions)")
    ap.add_argument("--n-select", type=int, default=1024, help="training-split pairs for choosing features")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--init", default=None, help="SAE initialisation (TrainConfig.init); default: mechkit's")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--reuse", action="store_true", help="keep SAEs already trained under --out")
    ap.add_argument("--rank", choices=RANKS, default="attribution", help="how features are ranked before "
                    "choosing the top n: attribution, or mean activation x decoder norm where intervened on")
    ap.add_argument("--sae", default=None, help="an SAE already trained (folder, SAELens format): use it at its "
                    "hook instead of caching activations and training (one organism)")
    ap.add_argument("--where", nargs="+", default=None, choices=("all", "diff", "answer"),
                    help="position sets to intervene at (default: per organism)")
    ap.add_argument("--ship", default=None, help="copy each organism's best feature circuit (passing if "
                    "any does) and its SAE here (e.g. bench/results)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.sae and len(args.organisms) != 1:
        ap.error("--sae takes one organism")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"args": vars(args), "torch_threads": torch.get_num_threads(), "organisms": {}}
    for name in args.organisms:
        results["organisms"][name] = run(name, args, out)
        (out / "targets.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results["organisms"], indent=1)[:4000])


if __name__ == "__main__":
    main()
