"""Circuits and SAE features of the real-model organisms (SmolLM2-135M fine-tuned with LoRA).

    MECHKIT_CACHE=... .venv/bin/python bench/smol_organisms.py --steps circuit,heads,features [--organisms ...]

Steps (each merges its part into ``--out``, so they can run one process at a time):

- ``circuit``: EAP-IG (5 steps) on ``--n-train`` training-split pairs of the organism's pair task
  (``smol-sandbagging``: cue vs a neutral sentence of equal length; ``smol-chekhov``: the
  threatener swapped for another person of the story); the MIB faithfulness curve (10 budgets,
  resample ablation) with 95% per-prompt bootstrap intervals on ``--n-test`` held-out test-split
  pairs; the smallest budget keeping >= 0.8 of the logit difference; its faithfulness under
  resample, mean and zero ablation; the circuit shipped as ``circuits/<organism>.circuit.json``
  and verified. The components the scores rank highest are listed (node scores).
- ``nodes``: component circuits from the same scores: the top-k heads and MLPs by |node score|
  with every edge among them, faithfulness with intervals for k = 5 .. all on the held-out pairs;
  and the reverse: only the top-k components' outputs ablated, what is left of the logit difference.
- ``heads``: activation patching of every attention head's output (all positions) and every MLP's
  output, cue prompt into neutral (denoising, normalised logit difference) on held-out pairs:
  which components carry the behaviour, and how well EAP-IG's node scores rank them (Spearman).
- ``features`` (smol-sandbagging): an SAE (SAELens, TopK) on the hook where the behaviour probe
  first peaks, trained on the organism's training-split prompts; its features ranked by
  attribution (what the cue prompt has and the neutral one lacks); the smallest top-n set whose
  ablation makes >= 80% of cue prompts truthful while >= 95% of neutral prompts stay truthful,
  then the smallest steering scale at which setting them to their cue-prompt values makes >= 50%
  of neutral prompts give the sandbagged answer; measured on held-out pairs (unseen countries
  and wordings) and shipped as ``circuits/smol-sandbagging-cue-features.circuit.json`` with its
  SAE under ``circuits/saes/``.
"""

import argparse
import dataclasses
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from provenance import commit  # noqa: E402  (bench/ is the script's folder)

ROOT = Path(__file__).resolve().parents[1]
CIRCUITS = ROOT / "circuits"
TARGET = 0.8  # the circuit keeps 80% of the logit difference
TASKS = {"smol-sandbagging": ("smol-sandbagging", {}), "smol-chekhov": ("smol-chekhov", {"corruption": "swap"})}
# the behaviour probe's best layer (bench/results/organism-probes-cpu.json, first layer at AUROC 1.000)
FEATURE_HOOK = "blocks.2.hook_resid_post"


def data(name: str, model, n_train: int, n_test: int):
    from mechkit.tasks import task

    t = task(TASKS[name][0], **TASKS[name][1])
    return t.generate(n_train, seed=1, split="train", model=model), t.generate(n_test, seed=0, split="test", model=model)


def cached_scores(model, pairs, name: str, work: Path, tag: str = "train"):
    """EAP-IG (5 steps) scores of ``pairs`` and their run record (time, integral check), kept
    under ``work/name`` between runs (``bench/smollm2_ioi.py``'s store)."""
    from smollm2_ioi import load_scores, scored

    (work / name).mkdir(parents=True, exist_ok=True)
    run = scored(model, pairs, "eap-ig", work / name, tag, None)
    return load_scores(model, work / name, "eap-ig", tag), run


def node_ranking(scores, top: int = 15) -> list[dict]:
    """The ``top`` graph nodes by |node score| (heads L{layer}H{head}, MLPs M{layer})."""
    order = scores.node_scores.abs().argsort(descending=True)[:top]
    return [{"node": scores.graph.node_names[i], "score": round(float(scores.node_scores[i]), 4)} for i in order.tolist()]


def step_circuit(name: str, model, args) -> dict:
    from mechkit.artifacts import save_circuit
    from mechkit.artifacts.ship import readme
    from mechkit.artifacts.verify import verify_circuit
    from mechkit.discovery import MIB_FRACTIONS, faithfulness_curve, robustness

    train, test = data(name, model, args.n_train, args.n_test)
    wall = time.perf_counter()
    scores, run = cached_scores(model, train, name, args.work)
    scores_s = time.perf_counter() - wall
    curves, rows_by = {}, {}
    for absolute in (True, False):  # |score| first (MIB's ranking), then signed (edges raising the metric first)
        wall = time.perf_counter()
        curve = faithfulness_curve(model, test, scores, MIB_FRACTIONS, absolute=absolute)
        rows = [{"fraction": f, "n_edges": n, "faithfulness": v, "ci": [lo, hi], "absolute": absolute}
                for f, n, v, lo, hi in zip(curve.fractions, curve.n_edges, curve.faithfulness, curve.ci_low, curve.ci_high)]
        key = "abs" if absolute else "signed"
        curves[key] = {"rows": rows, "cpr": curve.cpr, "cmd": curve.cmd, "wall_s": time.perf_counter() - wall}
        print(f"{name} curve ({key}): CPR {curve.cpr:.3f} CMD {curve.cmd:.3f} "
              + " ".join(f"{r['fraction']:g}:{r['faithfulness']:.3f}" for r in rows), flush=True)
    # the smallest budget reaching the target under either ranking
    reaching = [r for c in curves.values() for r in c["rows"] if r["faithfulness"] >= TARGET]
    chosen = min(reaching, key=lambda r: (r["n_edges"], not r["absolute"]))
    circuit = scores.select(chosen["fraction"], absolute=chosen["absolute"])
    wall = time.perf_counter()
    measured = robustness(model, test, circuit)
    robust_s = time.perf_counter() - wall
    circuit = dataclasses.replace(
        circuit, task=dict(test.task), faithfulness=(measured[0],),
        hyperparameters={**circuit.hyperparameters, "discovery_task": dict(train.task)},
        selection={**circuit.selection, "budgets_tried": [[r["fraction"], r["absolute"]] for c in curves.values()
                                                          for r in c["rows"]], "target_faithfulness": TARGET},
    )
    path = save_circuit(circuit, args.circuits / f"{name}.circuit.json")
    (args.circuits / "README.md").write_text(readme(args.circuits))
    wall = time.perf_counter()
    verified = verify_circuit(path, load_model=lambda spec, device=None: model)
    verify_s = time.perf_counter() - wall
    print("\n".join(verified.lines()), flush=True)
    return {"n_train": len(train), "n_test": len(test),
            "scores_s": scores_s, "convergence_relative_error": run.get("convergence_relative_error"),
            "curves": curves,
            "chosen": chosen, "n_edges": int(circuit.in_circuit.sum()), "n_edges_graph": len(circuit.edge_names),
            "faithfulness": {f.ablation: asdict(f) for f in measured}, "robustness_wall_s": robust_s,
            "top_nodes": node_ranking(scores),
            "verify": {"passed": verified.passed, "wall_s": verify_s, "lines": verified.lines()},
            "artifact": str(path)}


NODE_COUNTS = (5, 10, 20, 40, 80, 120, 160, 200, 240, 300)
ABLATE_COUNTS = (1, 2, 4, 8, 16, 32, 64)


def step_nodes(name: str, model, args) -> dict:
    """Component circuits: the top-k heads and MLPs by |EAP-IG node score| (the circuit step's
    training-pair scores), every edge between them kept (embeddings and logits always), the
    rest resample-ablated; faithfulness with 95% intervals on the held-out pairs."""
    from mechkit.discovery.evaluate import run_edge_masks

    train, test = data(name, model, args.n_train, args.n_test)
    scores, _ = cached_scores(model, train, name, args.work)
    graph = scores.graph
    counts = [k for k in NODE_COUNTS if k < len(graph.node_names)] + [len(graph.node_names)]
    order = scores.node_scores.abs().argsort(descending=True)
    nodes = torch.zeros(len(counts), len(graph.node_names), dtype=torch.bool)
    for i, k in enumerate(counts):
        nodes[i, order[:k]] = True
    wall = time.perf_counter()
    run = run_edge_masks(model, graph, test, graph.node_mask_to_edges(nodes))
    values = run.faithfulness().tolist()
    rows = [{"nodes": k, "faithfulness": v, "ci": list(run.bootstrap(i))} for i, (k, v) in enumerate(zip(counts, values))]
    print(f"{name} node curve: " + " ".join(f"{r['nodes']}:{r['faithfulness']:.3f}" for r in rows), flush=True)
    chosen = next((r for r in rows if r["faithfulness"] >= TARGET), rows[-1])
    # necessity: resample-ablate only the outputs of the top-k components, keep everything else
    ablate = [k for k in ABLATE_COUNTS if k < len(graph.node_names)]
    src_node = graph.edge_index[:, 0] - 1  # sender's index in node_names (-1: the embeddings)
    masks = torch.stack([~((src_node[:, None] == order[:k][None, :]).any(1)) for k in ablate])
    cut = run_edge_masks(model, graph, test, masks)
    kept = cut.faithfulness().tolist()
    removed = [{"ablated": k, "remaining": v, "ci": list(cut.bootstrap(i)),
                "nodes": [graph.node_names[j] for j in order[:k].tolist()] if k <= 16 else None}
               for i, (k, v) in enumerate(zip(ablate, kept))]
    print(f"{name} ablating the top-k components leaves: " + " ".join(f"{r['ablated']}:{r['remaining']:.3f}" for r in removed),
          flush=True)
    return {"rows": rows, "chosen": chosen, "nodes_in_chosen": [graph.node_names[i] for i in order[: chosen["nodes"]].tolist()],
            "n_nodes": len(graph.node_names), "ablating_top": removed, "curve_s": time.perf_counter() - wall}


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = a.argsort().argsort().double(), b.argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def step_heads(name: str, model, args) -> dict:
    from mechkit import patching

    _, test = data(name, model, args.n_train, args.n_heads)
    wall = time.perf_counter()
    heads = patching.get_act_patch_attn_head_out_all_pos(model, test, metric="normalized-logit-diff")
    mlps = patching.get_act_patch_mlp_out(model, test, metric="normalized-logit-diff")
    patch_s = time.perf_counter() - wall
    head_values = heads.values  # [layer, head]
    mlp_values = mlps.values.sum(-1) if mlps.values.dim() > 1 else mlps.values  # by position: summed
    top_heads = sorted(((float(v), f"L{l}H{h}") for (l, h), v in zip(
        ((l, h) for l in range(head_values.shape[0]) for h in range(head_values.shape[1])), head_values.flatten().tolist())),
        key=lambda t: -abs(t[0]))[:15]
    # EAP-IG node scores of the heads on the same pairs, ranked against the patching effects
    scores, _ = cached_scores(model, test, name, args.work, "heads")
    node = scores.node_dict()
    head_nodes = torch.tensor([node[f"L{l}H{h}"]
                               for l in range(head_values.shape[0]) for h in range(head_values.shape[1])])
    return {"n_pairs": len(test), "patch_s": patch_s, "top_heads": [{"head": n, "effect": round(v, 4)} for v, n in top_heads],
            "heads": head_values.tolist(), "mlp_by_position_summed": mlp_values.tolist(),
            "spearman_eap_ig_nodes_vs_patching_abs": spearman(head_nodes.abs(), head_values.flatten().abs()),
            "spearman_eap_ig_nodes_vs_patching": spearman(head_nodes, head_values.flatten())}


def step_features(name: str, model, args) -> dict:
    """The cue features of smol-sandbagging (see the module docstring)."""
    from sae_targets import passes, select  # the organisms' selection rule (sandbagging's targets)

    from mechkit.artifacts import save_circuit
    from mechkit.sae import (TrainConfig, attribute_features, evaluate_sae, feature_circuit, intervention_report,
                             load_sae, train_sae, verify_feature_circuit, write_cache)
    from mechkit.tasks import task

    if name != "smol-sandbagging":
        return {"skipped": "features are measured on smol-sandbagging's cue"}
    t = task(*TASKS[name][:1], **TASKS[name][1])
    work = args.work / name
    cache_pairs = t.generate(args.n_cache, seed=3, split="train", model=model)
    select_pairs = t.generate(args.n_select, seed=2, split="train", model=model)
    test_pairs = t.generate(args.n_test, seed=0, split="test", model=model)
    wall = time.perf_counter()
    cache = write_cache(model, cache_pairs, work / "cache", [args.hook], batch_size=64, skip_first=True, progress=False)
    cache_s = time.perf_counter() - wall
    cfg = TrainConfig(architecture="topk", expansion=args.expansion, k=args.k, steps=args.sae_steps,
                      batch_size=args.sae_batch, lr=args.lr, device="cpu", seed=0)
    sae_dir = work / "sae"
    wall = time.perf_counter()
    if not (args.reuse and (sae_dir / "cfg.json").is_file()):
        train_sae(cache, args.hook, sae_dir, cfg)
    train_s = time.perf_counter() - wall
    sae = load_sae(sae_dir, device="cpu")
    ev = evaluate_sae(model, sae, test_pairs, batch_size=64)
    print(f"SAE: {ev.to_dict()}", flush=True)
    attr = attribute_features(model, sae, select_pairs, batch_size=32)
    feats, scale, tried = select("sandbagging", model, sae, select_pairs, attr, "all")
    final = intervention_report(model, sae, test_pairs, feats, steer_scale=scale, batch_size=64)
    ok = passes("sandbagging", final)
    print(f"features: {len(feats)} at scale {scale}: {asdict(final) | {'features': len(feats)}} passes={ok}", flush=True)
    # ship: the SAE in SAELens's format beside the circuit, named by a relative path
    sae_dest = args.circuits / "saes" / f"{name}-{args.hook}"
    sae_dest.mkdir(parents=True, exist_ok=True)
    for f in ("cfg.json", "sae_weights.safetensors", "sparsity.safetensors"):
        if (sae_dir / f).is_file():
            shutil.copyfile(sae_dir / f, sae_dest / f)
    circuit = feature_circuit(
        model, f"organism:{name}", attr, feats, task=select_pairs.task,
        hyperparameters={"sae": sae_dest.relative_to(args.circuits).as_posix(), "where": "all",
                         "selection": "smallest top-n meeting the ablation targets on training-split pairs",
                         "steer_scale": scale, "held_out": asdict(final), "held_out_task": test_pairs.task,
                         "passes": ok})
    path = save_circuit(circuit, args.circuits / f"{name}-cue-features.circuit.json")
    from mechkit.artifacts.ship import readme

    (args.circuits / "README.md").write_text(readme(args.circuits))
    wall = time.perf_counter()
    check = verify_feature_circuit(path, load_model=lambda spec, device=None: model)
    print("\n".join(check.lines()), flush=True)
    return {"hook": args.hook, "n_cache_pairs": len(cache_pairs), "cache_s": cache_s, "sae": asdict(cfg),
            "sae_train_s": train_s, "eval": ev.to_dict(), "n_select": len(select_pairs), "n_test": len(test_pairs),
            "features": feats, "steer_scale": scale, "tried": tried, "held_out": asdict(final), "passes": ok,
            "held_out_scale_1": asdict(intervention_report(model, sae, test_pairs, feats, batch_size=64)) if scale != 1 else None,
            "verify": {"passed": check.passed, "lines": check.lines(), "wall_s": time.perf_counter() - wall},
            "artifact": str(path)}


STEPS = {"circuit": step_circuit, "nodes": step_nodes, "heads": step_heads, "features": step_features}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--organisms", default="smol-sandbagging,smol-chekhov")
    parser.add_argument("--steps", default="circuit,heads,features")
    parser.add_argument("--n-train", type=int, default=64, help="training pairs (EAP-IG scores)")
    parser.add_argument("--n-test", type=int, default=64, help="held-out pairs (curve, circuit, features)")
    parser.add_argument("--n-heads", type=int, default=32, help="held-out pairs for head and MLP patching")
    parser.add_argument("--n-cache", type=int, default=1024, help="training pairs whose activations train the SAE")
    parser.add_argument("--n-select", type=int, default=256, help="training pairs for choosing features")
    parser.add_argument("--hook", default=FEATURE_HOOK)
    parser.add_argument("--expansion", type=int, default=4)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--sae-steps", type=int, default=1000)
    parser.add_argument("--sae-batch", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--reuse", action="store_true", help="keep an SAE already trained under --work")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("/tmp/smol-organisms"))
    parser.add_argument("--circuits", type=Path, default=CIRCUITS, help="where circuits (and the SAE) are shipped")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "smol-organisms-cpu.json")
    parser.add_argument("--machine", default=f"{platform.machine()} CPU, {os.cpu_count()} cores, shared")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    import mechkit

    for name in args.organisms.split(","):
        model = mechkit.load_model(f"organism:{name}", device="cpu")
        for step in args.steps.split(","):
            result = json.loads(args.out.read_text()) if args.out.exists() else {}
            load, wall = os.getloadavg(), time.perf_counter()
            part = STEPS[step](name, model, args)
            part.update(wall_s=time.perf_counter() - wall, load_average_at_start=load, load_average_at_end=os.getloadavg(),
                        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), commit=commit(), machine=args.machine,
                        threads=args.threads, torch=torch.__version__)
            result.setdefault(name, {})[step] = part
            args.out.write_text(json.dumps(result, indent=1) + "\n")
            print(f"{name} {step}: {part['wall_s']:.0f} s", flush=True)
        del model


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "bench"))  # smollm2_ioi's score store, sae_targets' selection rule
    main()
