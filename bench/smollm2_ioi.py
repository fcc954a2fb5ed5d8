"""The IOI circuit of SmolLM2-135M-Instruct, found and checked as the IOI paper (Wang et al.
2022) and MIB (Mueller et al. 2025) do.

    MECHKIT_CACHE=... .venv/bin/python bench/smollm2_ioi.py [--steps scores,curves,circuit,roles,exact]

Steps (each merges its part into ``--out``, so they can run one process at a time):

- ``scores``: EAP and EAP-IG-inputs (5 steps) on ``--n-train`` training-split pairs; EAP-IG-activations
  (5 steps) on ``--n-activations`` of them (it runs one gradient pass per sender group and step:
  61 groups on this model).
- ``curves``: each method's MIB faithfulness curve (10 budgets, resample ablation) and CPR/CMD on
  ``--n-test`` held-out test-split pairs.
- ``circuit``: EAP-IG's smallest MIB budget of at most 5% of edges whose circuit keeps >= 0.8 of
  the logit difference on the test pairs (top-n by |score|, then by signed score; else the best
  tried); its faithfulness with bootstrap intervals
  under resample, mean and zero ablation; the circuit shipped as
  ``circuits/smollm2-135m-ioi.circuit.json`` (resample faithfulness recorded, what ``mechkit
  verify`` re-measures) and verified, timed.
- ``roles``: head-role evidence (attention, OV copy scores, repeated-token scores, path patching).
- ``exact``: EAP, EAP-IG and EAP-IG-activations against exact edge patching on the first
  ``--n-exact`` training pairs (each method re-scored on them), on a sample of edges stratified by
  |EAP-IG score| rank and receiver type.

Scores are kept as safetensors under ``--work`` between steps.
"""

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from provenance import commit  # noqa: E402  (bench/ is the script's folder)

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("eap", "eap-ig", "eap-ig-activations")
CIRCUIT_FILE = ROOT / "circuits" / "smollm2-135m-ioi.circuit.json"
MAX_SHARE = 0.05  # the circuit may keep at most 5% of edges
TARGET = 0.8  # ... and must keep 80% of the logit difference


def data(args, model):
    """(training pairs, held-out test pairs): ``--n-train`` and ``--n-test`` of them."""
    from mechkit.tasks import task

    ioi = task("ioi")
    return (ioi.generate(args.n_train, seed=1, split="train", model=model),
            ioi.generate(args.n_test, seed=0, split="test", model=model))


def scores_path(work: Path, method: str, tag: str = "train") -> Path:
    return work / f"{method}-{tag}.safetensors"


def load_scores(model, work: Path, method: str, tag: str = "train"):
    from mechkit.discovery import EdgeScores, Graph

    t = load_file(str(scores_path(work, method, tag)))
    meta = json.loads((work / f"{method}-{tag}.json").read_text())
    return EdgeScores(Graph.from_model(model), t["edges"], t["nodes"], method, meta["hyperparameters"],
                      meta["model_spec"], meta["model_fingerprint"], meta["task"])


def score(model, pairs, method: str, work: Path, tag: str, max_memory) -> dict:
    from mechkit.discovery import attribute

    wall, cpu = time.perf_counter(), time.process_time()
    options = {} if method == "eap" else {"ig_steps": 5}
    s = attribute(model, pairs, method, max_memory=max_memory, **options)
    row = {"n_pairs": len(pairs), "wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}
    if s.convergence is not None:
        row["convergence_relative_error"] = s.convergence.relative_error
    save_file({"edges": s.scores.contiguous(), "nodes": s.node_scores.contiguous()}, str(scores_path(work, method, tag)))
    (work / f"{method}-{tag}.json").write_text(json.dumps({
        "hyperparameters": s.hyperparameters, "model_spec": s.model_spec,
        "model_fingerprint": s.model_fingerprint, "task": s.task, "run": row}))
    return row


def scored(model, pairs, method: str, work: Path, tag: str, max_memory) -> dict:
    """``score``, or the record of an earlier run that saved these scores (its own pair count:
    runs on a shared machine are split into several processes, with fewer pairs where time ran short)."""
    meta = work / f"{method}-{tag}.json"
    if meta.exists() and scores_path(work, method, tag).exists():
        return {**json.loads(meta.read_text())["run"], "resumed": True}
    return score(model, pairs, method, work, tag, max_memory)


def step_scores(model, args) -> dict:
    train, _ = data(args, model)
    out = {}
    for method in args.methods.split(","):
        pairs = train[: args.n_activations] if method == "eap-ig-activations" else train
        out[method] = scored(model, pairs, method, args.work, "train", args.max_memory)
        print(f"scores {method}: {out[method]}", flush=True)
    return out


def step_curves(model, args) -> dict:
    from mechkit.discovery import faithfulness_curve

    _, test = data(args, model)
    out = {}
    for method in args.methods.split(","):
        wall = time.perf_counter()
        curve = faithfulness_curve(model, test, load_scores(model, args.work, method), max_memory=args.max_memory)
        out[method] = {"fractions": list(curve.fractions), "n_edges": list(curve.n_edges),
                       "faithfulness": list(curve.faithfulness), "cpr": curve.cpr, "cmd": curve.cmd,
                       "wall_s": time.perf_counter() - wall}
        print(f"curve {method}: CPR {curve.cpr:.3f} CMD {curve.cmd:.3f} {[round(f, 3) for f in curve.faithfulness]}", flush=True)
    return out


def step_circuit(model, args) -> dict:
    """Budgets are searched with batched curves (the masks ``scores.select(fraction)`` makes):
    top-n by |score| as MIB ranks edges, then by signed score (edges that raise the logit
    difference first) if no |score| budget reaches the target."""
    import dataclasses

    from mechkit.artifacts import save_circuit
    from mechkit.artifacts.ship import readme
    from mechkit.artifacts.verify import verify_circuit
    from mechkit.discovery import MIB_FRACTIONS, faithfulness_curve, robustness

    train, test = data(args, model)
    scores = load_scores(model, args.work, "eap-ig")
    fractions = tuple(f for f in MIB_FRACTIONS if f <= MAX_SHARE)
    tried, chosen = [], None
    for absolute in (True, False):
        wall = time.perf_counter()
        curve = faithfulness_curve(model, test, scores, fractions, absolute=absolute, max_memory=args.max_memory)
        rows = [{"fraction": f, "absolute": absolute, "n_edges": n, "faithfulness": v}
                for f, n, v in zip(curve.fractions, curve.n_edges, curve.faithfulness)]
        tried += rows
        print(f"circuit search (absolute={absolute}, {time.perf_counter() - wall:.0f} s): {rows}", flush=True)
        chosen = next((r for r in rows if r["faithfulness"] >= TARGET), None)
        if chosen:
            break
    chosen = chosen or max(tried, key=lambda r: r["faithfulness"])
    circuit = scores.select(chosen["fraction"], absolute=chosen["absolute"])
    wall = time.perf_counter()
    measured = robustness(model, test, circuit, max_memory=args.max_memory)
    robust_s = time.perf_counter() - wall
    circuit = dataclasses.replace(
        circuit, task=dict(test.task), faithfulness=(measured[0],),
        hyperparameters={**circuit.hyperparameters, "discovery_task": dict(train.task)},
        selection={**circuit.selection, "budgets_tried": [[t["fraction"], t["absolute"]] for t in tried],
                   "target_faithfulness": TARGET},
    )
    path = save_circuit(circuit, CIRCUIT_FILE)
    (CIRCUIT_FILE.parent / "README.md").write_text(readme(CIRCUIT_FILE.parent))
    wall = time.perf_counter()
    verified = verify_circuit(path, device="cpu")
    verify_s = time.perf_counter() - wall
    print("\n".join(verified.lines()), flush=True)
    nodes = sorted({n for e in circuit.edges for n in (e.src, e.dst)})
    return {"tried": tried, "fraction": chosen["fraction"], "absolute": chosen["absolute"],
            "n_edges": int(circuit.in_circuit.sum()), "n_edges_graph": len(circuit.edge_names), "nodes": nodes,
            "faithfulness": {f.ablation: dataclasses.asdict(f) for f in measured}, "robustness_wall_s": robust_s,
            "verify": {"passed": verified.passed, "wall_s": verify_s, "lines": verified.lines()},
            "artifact": str(path.relative_to(ROOT))}


def receiver_kind(edge_name: str) -> str:
    """q, k, v, mlp or logits."""
    from mechkit._types import Edge, Node

    e = Edge.parse(edge_name)
    return e.qkv or Node.parse(e.dst).kind


def stratified_sample(scores: torch.Tensor, receivers: list[str], per_stratum: int, top: int, seed: int = 0) -> torch.Tensor:
    """Edge indices: the ``top`` highest-|score| edges, then ``per_stratum`` from each band of
    |score| rank, spread evenly over receiver types (q, k, v, MLP, logits) within the band."""
    rng = np.random.default_rng(seed)
    order = scores.abs().argsort(descending=True).numpy()
    bands = [(top, 500), (500, 2_000), (2_000, 10_000), (10_000, 50_000), (50_000, len(order))]
    chosen = list(order[:top])
    for lo, hi in bands:
        band = order[lo:hi]
        kinds = {}
        for i in band:
            kinds.setdefault(receivers[i], []).append(i)
        quota = per_stratum // len(kinds)
        picked = []
        for members in kinds.values():
            picked += list(rng.choice(members, size=min(quota, len(members)), replace=False))
        rest = np.setdiff1d(band, picked)
        picked += list(rng.choice(rest, size=per_stratum - len(picked), replace=False))
        chosen += picked
    return torch.tensor(sorted(set(int(i) for i in chosen)))


def step_exact(model, args) -> dict:
    from scipy.stats import pearsonr, spearmanr

    from mechkit.discovery import Graph
    from mechkit.discovery.evaluate import run_edge_masks

    train, _ = data(args, model)
    # the first training pairs: EAP-IG-activations' own pairs when the counts agree (it costs
    # 61 gradient passes per step, so it is not run twice)
    pairs = train[: args.n_exact]
    graph = Graph.from_model(model)
    out = {"n_pairs": len(pairs), "split": "train", "methods": {}}
    methods = args.methods.split(",")
    tags = {m: "train" if m == "eap-ig-activations" and args.n_activations == args.n_exact else "exact" for m in methods}
    for method in methods:
        out["methods"][method] = scored(model, pairs, method, args.work, tags[method], args.max_memory)
    attributed = {m: load_scores(model, args.work, m, tags[m]).scores for m in methods}
    receivers = [receiver_kind(name) for name in graph.edge_names]
    sample = stratified_sample(attributed["eap-ig"], receivers, args.per_stratum, args.top)
    wall = time.perf_counter()
    exact = []
    for start in range(0, len(sample), 64):
        idx = sample[start : start + 64]
        masks = torch.ones(len(idx), graph.n_edges, dtype=torch.bool)
        masks[torch.arange(len(idx)), idx] = False
        run = run_edge_masks(model, graph, pairs, masks, "resample", max_memory=args.max_memory)
        exact.append(run.circuits.mean(1) - run.clean.mean())
        print(f"exact {start + len(idx)}/{len(sample)} edges, {time.perf_counter() - wall:.0f} s", flush=True)
    exact = torch.cat(exact).double().numpy()
    out["exact_wall_s"] = time.perf_counter() - wall
    out["n_edges"] = len(sample)
    out["sample_receivers"] = {k: sum(receivers[i] == k for i in sample.tolist()) for k in sorted(set(receivers))}
    k = 50
    top_exact = set(np.argsort(-np.abs(exact))[:k])
    # the same correlation without the always-sampled top edges: does it hold beyond the few big ones?
    rest = ~np.isin(sample.numpy(), attributed["eap-ig"].abs().argsort(descending=True)[: args.top].numpy())
    for method, s in attributed.items():
        a = s[sample].double().numpy()
        top_a = set(np.argsort(-np.abs(a))[:k])
        out["methods"].setdefault(method, {}).update(
            pearson=float(pearsonr(a, exact)[0]), spearman=float(spearmanr(a, exact)[0]),
            top50_overlap=len(top_a & top_exact) / k,
            pearson_without_top=float(pearsonr(a[rest], exact[rest])[0]),
        )
        print(f"exact vs {method}: {out['methods'][method]}", flush=True)
    out["edges"] = [graph.edge_names[i] for i in sample.tolist()]
    out["exact_scores"] = exact.tolist()
    out["scores"] = {m: s[sample].tolist() for m, s in attributed.items()}
    return out


def step_roles(model, args) -> dict:
    from smollm2_ioi_roles import roles  # beside this script

    return roles(model, args)


def report(result: dict) -> str:
    """Markdown tables of a results file (what BENCHMARKS.md shows)."""
    lines = []
    if "curves" in result:
        lines += ["| method | training pairs | scoring time | CPR | CMD | faithfulness at 0.1 / 1 / 2 / 5 / 10% of edges | curve time |",
                  "|---|---:|---:|---:|---:|---|---:|"]
        for m, c in result["curves"].items():
            if m not in METHODS:
                continue
            sc = result.get("scores", {}).get(m, {})
            f = dict(zip(c["fractions"], c["faithfulness"]))
            pts = " / ".join(f"{f[x]:.3f}" for x in (0.001, 0.01, 0.02, 0.05, 0.1))
            lines.append(f"| {m} | {sc.get('n_pairs', '?')} | {sc.get('wall_s', float('nan')):.0f} s | {c['cpr']:.3f} | "
                         f"{c['cmd']:.3f} | {pts} | {c['wall_s']:.0f} s |")
        lines.append("")
    if "circuit" in result:
        c = result["circuit"]
        lines += [f"Circuit: {c['n_edges']} of {c['n_edges_graph']} edges ({c['fraction']:.1%} budget, "
                  f"{'|score|' if c['absolute'] else 'signed score'}), "
                  f"{len(c['nodes'])} nodes; verify {c['verify']['wall_s']:.0f} s, passed {c['verify']['passed']}", "",
                  "| ablation | faithfulness [95% CI] |", "|---|---|"]
        for a, f in c["faithfulness"].items():
            lines.append(f"| {a} | {f['value']:.3f} [{f['ci_low']:.3f}, {f['ci_high']:.3f}] |")
        lines += ["", "budgets tried: " + ", ".join(
            f"{t['fraction']:.1%} {'|score|' if t['absolute'] else 'signed'} ({t['n_edges']} edges): {t['faithfulness']:.3f}"
            for t in c["tried"]), ""]
    if "exact" in result:
        e = result["exact"]
        lines += [f"Exact: {e['n_edges']} edges on {e['n_pairs']} pairs, {e['exact_wall_s']:.0f} s; receivers {e['sample_receivers']}",
                  "", "| method | scoring time | Pearson | Pearson without the top edges | Spearman | top-50 overlap |",
                  "|---|---:|---:|---:|---:|---:|"]
        for m, r in e["methods"].items():
            lines.append(f"| {m} | {r['wall_s']:.0f} s | {r['pearson']:.3f} | {r.get('pearson_without_top', float('nan')):.3f} | "
                         f"{r['spearman']:.3f} | {r['top50_overlap']:.2f} |")
        lines.append("")
    if "roles" in result:
        keys = ("END->IO", "END->S2", "S2->S1", "S2->S1+1", "copy_score", "negative_copy_score", "induction", "duplicate", "previous")
        lines += ["| head | role | path patching | effect | " + " | ".join(keys) + " | in circuit |",
                  "|---|---|---|---:|" + "---:|" * len(keys) + "---|"]
        for r in result["roles"]["roles"]:
            eff = "–" if r["effect"] is None else f"{r['effect']:+.3f}"
            lines.append(f"| {r['head']} | {r['role']} | {r['path_patching'] or '–'} | {eff} | "
                         + " | ".join(f"{r[k]:.2f}" for k in keys) + f" | {'yes' if r['in_circuit'] else 'no'} |")
    return "\n".join(lines)


STEPS = {"scores": step_scores, "curves": step_curves, "circuit": step_circuit, "roles": step_roles, "exact": step_exact}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", default="scores,curves,circuit,roles,exact")
    parser.add_argument("--methods", default=",".join(METHODS), help="scores, curves, exact: which methods")
    parser.add_argument("--n-train", type=int, default=64, help="training pairs (EAP, EAP-IG scores)")
    parser.add_argument("--n-test", type=int, default=64, help="held-out pairs (curves, circuit, roles)")
    parser.add_argument("--n-activations", type=int, default=4, help="training pairs for EAP-IG-activations")
    parser.add_argument("--n-exact", type=int, default=4, help="training pairs for the exact comparison")
    parser.add_argument("--n-roles", type=int, default=16, help="test pairs for path patching")
    parser.add_argument("--top", type=int, default=64, help="exact: the top-|EAP-IG| edges always sampled")
    parser.add_argument("--per-stratum", type=int, default=90, help="exact: edges per |score|-rank band")
    parser.add_argument("--max-memory")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("/tmp/smollm2-ioi"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "smollm2-ioi-cpu.json")
    parser.add_argument("--machine", default=f"{platform.machine()} CPU, {os.cpu_count()} cores, shared")
    parser.add_argument("--report", action="store_true", help="print the tables of --out and exit")
    args = parser.parse_args()
    if args.report:
        print(report(json.loads(args.out.read_text())))
        return
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    import mechkit

    model = mechkit.load_model("smollm2-135m", device="cpu")
    for name in args.steps.split(","):
        result = json.loads(args.out.read_text()) if args.out.exists() else {}
        load, wall = os.getloadavg(), time.perf_counter()
        part = STEPS[name](model, args)
        part.update(wall_s=time.perf_counter() - wall, load_average_at_start=load, load_average_at_end=os.getloadavg(),
                    date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), commit=commit(), machine=args.machine,
                    threads=args.threads, torch=torch.__version__)
        if name in ("scores", "curves") and name in result:  # run method by method: keep the others
            part = {**{k: v for k, v in result[name].items() if k in METHODS}, **part}
        result[name] = part
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"step {name}: {part['wall_s']:.0f} s", flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
