"""Benchmark circuit discovery on the shipped organisms.

    .venv/bin/python bench/discovery.py [--n 64] [--out bench-discovery.json] [--organisms a,b]

For every organism under assets/organisms (missing ones are skipped with a note):

- wired organisms (known circuit in card.json): node and edge AUROC of EAP-IG scores
  (targets 1.0 and >= 0.95). The table's AUROCs use zero ablation: a wired circuit also has
  edges whose value is the same on clean and corrupted prompts (position-driven heads), which
  no resample-ablation method can see; the JSON has the resample AUROCs too;
- every organism: faithfulness of the EAP-IG circuit at 10% of edges, top-n and greedy
  (target >= 0.9), the selected circuit: the smallest top-n budget that reaches 0.9 (target:
  <= 10% of edges), Jaccard of its nodes (and of the 10%-edge circuit's) with the oracle's
  smallest node set reaching 0.9 (target >= 0.9), Pearson of EAP-IG against exact edge patching (target >= 0.9; also of the EAP-IG library's
  EAP-IG-activations variant, for comparison), CPR/CMD of
  the MIB faithfulness curve, ACDC's circuit (tau 0.1 on |metric change|) for comparison,
  time of full EAP-IG scoring (target <= 10 s on CPU), and time of
  the whole curve in units of one plain forward over the same prompts (target <= 20; both timed
  in CPU time of this process, so other jobs on the machine do not skew the ratio).
"""

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from mechkit.discovery import (
    attribute,
    discover,
    edge_auroc,
    evaluate,
    faithfulness_curve,
    ground_truth,
    jaccard,
    node_auroc,
    oracle,
)
from mechkit.discovery.evaluate import run_edge_masks
from mechkit.discovery.ground_truth import GroundTruthError, circuit_nodes
from mechkit.discovery.oracle import OracleError
from mechkit.discovery.select import prune_dangling, topn_masks
from mechkit.models import available_organisms, load_model, organisms_dir

ORGANISMS = ("wired-induction", "wired-chekhov", "induction", "chekhov", "sandbagging")


def task_for(name: str):
    """The organism's task: card.json's "task" if present, else the name without "wired-"."""
    from mechkit.organisms import task

    card = organisms_dir() / name / "card.json"
    meta = json.loads(card.read_text()) if card.is_file() else {}
    t = meta.get("task")
    if isinstance(t, dict):
        return task(t["name"], **t.get("params", {}))
    return task(t if isinstance(t, str) else name.removeprefix("wired-"))


def timed(fn, repeats: int = 1, cpu: bool = False):
    """(result, median seconds): wall-clock, or this process's CPU time with ``cpu`` (a fair
    ratio of two workloads on a machine other jobs share)."""
    clock = time.process_time if cpu else time.perf_counter
    times, out = [], None
    for _ in range(repeats):
        start = clock()
        out = fn()
        times.append(clock() - start)
    return out, statistics.median(times)


def bench_one(name: str, n: int, seed: int) -> dict:
    model = load_model(f"organism:{name}", device="cpu")
    pairs = task_for(name).generate(n, seed=seed, split="test")
    row: dict = {"organism": name, "n_prompts": len(pairs)}
    with torch.no_grad():
        model(pairs.clean)  # warm-up
        _, t_forward = timed(lambda: model(pairs.clean), repeats=20, cpu=True)
    scores, t_scores = timed(lambda: attribute(model, pairs, "eap-ig", model_spec=f"organism:{name}"))
    row.update(n_edges=scores.graph.n_edges, n_nodes=len(scores.graph.node_names), eap_ig_s=t_scores)

    try:
        truth = ground_truth(name)
    except GroundTruthError:
        truth = None
    if truth is not None:
        row.update(node_auroc=node_auroc(scores, truth), edge_auroc=edge_auroc(scores, truth))

    if truth is not None:
        zero = attribute(model, pairs, "eap-ig", ablation="zero")
        row.update(
            node_auroc_resample=row["node_auroc"], edge_auroc_resample=row["edge_auroc"],
            node_auroc=node_auroc(zero, truth), edge_auroc=edge_auroc(zero, truth),
        )

    curve, t_curve = timed(lambda: faithfulness_curve(model, pairs, scores), repeats=5, cpu=True)
    row.update(
        curve=dict(zip(map(str, curve.fractions), curve.faithfulness)),
        cpr=curve.cpr, cmd=curve.cmd, curve_forwards=t_curve / t_forward, forward_s=t_forward,
    )
    for rule in ("top-n", "greedy"):
        circuit = scores.select("10%", rule=rule)
        f = evaluate(model, pairs, circuit)
        row[f"faith10_{rule}"] = f.value
        row[f"faith10_{rule}_ci"] = (f.ci_low, f.ci_high)
        row[f"edges10_{rule}"] = int(circuit.in_circuit.sum())
        row[f"nodes10_{rule}"] = sorted(circuit_nodes(circuit.edge_names, circuit.in_circuit))

    counts = list(range(1, scores.graph.n_edges + 1))
    masks = prune_dangling(scores.graph, topn_masks(scores.scores, counts))
    faith = run_edge_masks(model, scores.graph, pairs, masks).faithfulness()
    reach = [n for n, f in zip(counts, faith.tolist()) if f >= 0.9]
    if reach:
        selected = masks[reach[0] - 1]  # the selected circuit: the smallest top-n budget reaching 0.9
        row.update(min_budget_f90=reach[0], min_budget_f90_frac=reach[0] / scores.graph.n_edges,
                   min_budget_f90_kept=int(selected.sum()),
                   nodes_f90=sorted(circuit_nodes(scores.graph.edge_names, selected)))

    try:  # exhaustive over live heads and MLPs (at most 16)
        found = oracle(model, pairs, target=0.9)
    except OracleError as e:
        found, row["oracle_skipped"] = None, str(e)
    if found is not None:
        k = len(found.nodes)
        order = scores.node_scores.abs().argsort(descending=True).tolist()
        top_k = {scores.graph.node_names[i] for i in order[:k]}
        row.update(
            oracle_nodes=list(found.nodes), oracle_faith=found.faithfulness, oracle_reached=found.reached,
            jaccard_topk=jaccard(top_k, found.nodes),
            jaccard_circuit=jaccard(set(row["nodes10_top-n"]), found.nodes),
        )
        if "nodes_f90" in row:
            row["jaccard_selected"] = jaccard(set(row["nodes_f90"]), found.nodes)
    acdc, t_acdc = timed(lambda: discover(model, pairs, "acdc", tau=0.1, objective="metric", n_boot=0))
    row.update(acdc_edges=int(acdc.in_circuit.sum()), acdc_faith=acdc.faithfulness[0].value, acdc_s=t_acdc)
    exact = attribute(model, pairs, "exact")
    row["pearson_exact"] = float(np.corrcoef(scores.scores.numpy(), exact.scores.numpy())[0, 1])
    row["pearson_exact_nodes"] = float(np.corrcoef(scores.node_scores.numpy(), exact.node_scores.numpy())[0, 1])
    row["spearman_exact"] = float(spearmanr(scores.scores.numpy(), exact.scores.numpy())[0])
    # rank agreement where Pearson misleads: on a serial chain exact patching gives every necessary
    # edge the whole effect (their |scores| sum to several times it) while integrated gradients
    # split it along the chain, so the values differ in scale but the ranking can still agree
    for k in (10, max(1, scores.graph.n_edges // 10)):
        row[f"topk_overlap_exact_{k}"] = top_k_overlap(scores.scores, exact.scores, k)
    if scores.convergence is not None and scores.convergence.total_effect:
        row["exact_abs_sum_over_effect"] = float(exact.scores.abs().sum()) / abs(scores.convergence.total_effect)
    act = attribute(model, pairs, "eap-ig-activations")  # the EAP-IG library's activation-space variant
    row["pearson_exact_ig_activations"] = float(np.corrcoef(act.scores.numpy(), exact.scores.numpy())[0, 1])
    return row


def top_k_overlap(a, b, k: int) -> float:
    """Share of the k highest-|a| edges that are also among the k highest-|b| edges."""
    top_a = set(a.abs().argsort(descending=True)[:k].tolist())
    top_b = set(b.abs().argsort(descending=True)[:k].tolist())
    return len(top_a & top_b) / k


def fmt(value, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def print_table(rows: list[dict]) -> None:
    cols = [
        ("organism", "organism", "s"), ("node AUROC", "node_auroc", ".3f"), ("edge AUROC", "edge_auroc", ".3f"),
        ("F@10% top-n", "faith10_top-n", ".3f"), ("F@10% greedy", "faith10_greedy", ".3f"),
        ("F>=0.9 at", "min_budget_f90_frac", ".1%"),
        ("Jacc(top-k,oracle)", "jaccard_topk", ".2f"), ("Jacc(circ,oracle)", "jaccard_circuit", ".2f"),
        ("Jacc(sel,oracle)", "jaccard_selected", ".2f"),
        ("r(IG,exact)", "pearson_exact", ".3f"), ("rho(IG,exact)", "spearman_exact", ".3f"),
        ("top10 overlap", "topk_overlap_exact_10", ".2f"), ("sum|exact|/effect", "exact_abs_sum_over_effect", ".2f"),
        ("r(IG-act,exact)", "pearson_exact_ig_activations", ".3f"),
        ("CPR", "cpr", ".3f"), ("CMD", "cmd", ".3f"), ("ACDC edges", "acdc_edges", "d"), ("ACDC F", "acdc_faith", ".3f"),
        ("EAP-IG s", "eap_ig_s", ".2f"), ("curve/fwd", "curve_forwards", ".1f"),
    ]
    header = " | ".join(c[0] for c in cols)
    print(header)
    print("-" * len(header))
    for row in rows:
        print(" | ".join(fmt(row.get(key), spec) if spec != "s" else row[key] for _, key, spec in cols))
    print("targets: node AUROC 1.0, edge AUROC >= 0.95, F@10% >= 0.9, Jaccard >= 0.9, r >= 0.9, EAP-IG <= 10 s, curve <= 20 forwards")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=64, help="prompt pairs per organism")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--organisms", default=",".join(ORGANISMS), help="comma-separated organism names")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core machine)")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    parser.add_argument("--machine", help="describe the machine in the JSON (default: architecture and threads)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load = [round(x, 2) for x in os.getloadavg()]
    have = set(available_organisms())
    rows = []
    for name in args.organisms.split(","):
        if name not in have:
            print(f"note: organism {name!r} is not under {organisms_dir()}; skipped")
            continue
        print(f"benchmarking {name} ...", flush=True)
        rows.append(bench_one(name, args.n, args.seed))
    if rows:
        print_table(rows)
    else:
        print("no organisms to benchmark")
    if args.out:
        machine = args.machine or f"{platform.machine()} CPU"
        meta = {"machine": f"{machine}, {torch.get_num_threads()} torch threads", "torch": torch.__version__,
                "load_average_at_start": load}
        args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
