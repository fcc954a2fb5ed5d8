"""Seed sweep: does an organism's recipe, not one lucky run, produce the behaviour?

    .venv/bin/python bench/organisms.py --seeds 0-9 [--organisms induction,chekhov,sandbagging]
        [--jobs 2] [--steps N] [--work DIR] [--out bench/results/organisms-seeds-cpu.json]
    .venv/bin/python bench/organisms.py --seeds 1-2 --organisms smol-sandbagging,smol-chekhov --jobs 2 \
        --out bench/results/organisms-seeds-smol-cpu.json

Trains each organism once per seed with its spec's defaults (``mechkit.organisms.train``, one
torch thread per run, ``--jobs`` runs side by side), then on every solved model runs the
discovery benchmark of ``bench/discovery.py`` (smallest edge share with F >= 0.9, Jaccard of
the selected circuit's nodes with the oracle's, EAP-IG against exact patching: Pearson,
Spearman, top-10 overlap). Solved: held-out accuracy and corrupted accuracy both >= 0.95 on
1,000 fresh test-split pairs. Each (organism, seed) writes ``DIR/NAME-sSEED/result.json``, so a
rerun skips finished runs. The summary groups solved seeds by their oracle circuit's node set:
different seeds can solve a task with different mechanisms.

The fine-tuned organisms (``smol-*``: LoRA on SmolLM2-135M) are trained the same way (their
recipe's ``--seed``, the spec's thread count unless ``--threads``) and judged by their own
target: held-out behaviour >= 0.95 on every held-out prompt of the recipe (the card's
``held_out``). Their discovery benchmark (``bench/smol_organisms.py``) is not rerun per seed.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mechkit._files import write_json
from provenance import commit

ROOT = Path(__file__).resolve().parents[1]
SOLVED = 0.95
ORGANISMS = ("induction", "chekhov", "sandbagging")
LOAD_AT_START = [round(x, 2) for x in os.getloadavg()]  # of this process: the machine's load when a run began


def parse_seeds(text: str) -> list[int]:
    """``"0-9"``, ``"3"`` or ``"1,4,7"`` (ranges may be mixed in: ``"0-2,5"``)."""
    seeds: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        seeds += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    return seeds


def write_result(folder: Path, result: dict) -> None:
    """``folder/result.json``, written whole or not at all: a rerun skips a run that has one."""
    result.update(commit=commit(), load_average_at_start=LOAD_AT_START)
    write_json(folder / "result.json", result)


def live_components(card: dict) -> int | None:
    """Heads and MLPs whose folded gate is open (the card's ``gates``), None without gates."""
    gates = card.get("gates")
    if not gates:
        return None
    values = [v for key, v in gates.items() if key != "penalty_from_step" and isinstance(v, list)]
    flat = [x for v in values for x in (v if not v or not isinstance(v[0], list) else [y for row in v for y in row])]
    return sum(1 for x in flat if isinstance(x, (int, float)) and x > 0.5)


def structure(nodes: list[str]) -> str:
    """An oracle node set without head indices: how many heads and MLPs per layer."""
    import re

    per: dict[int, list[int]] = {}
    for node in nodes:
        m = re.match(r"L(\d+)H\d+$", node) or re.match(r"M(\d+)$", node)
        if m:
            layer = int(m.group(1))
            per.setdefault(layer, [0, 0])[0 if node.startswith("L") else 1] += 1
    return ", ".join(f"L{layer}: {h} head{'s' if h != 1 else ''}" + (" + MLP" if mlp else "")
                     for layer, (h, mlp) in sorted(per.items()))


def one(name: str, seed: int, work: Path, steps: int | None, n: int) -> None:
    """Train ``name`` on ``seed`` and, when solved, benchmark discovery on it (one process)."""
    import torch

    folder = work / f"{name}-s{seed}"
    if name.startswith("smol-"):
        return one_fine_tuned(name, seed, folder, steps)
    torch.set_num_threads(1)
    organisms = folder / "organisms"
    os.environ["MECHKIT_ORGANISMS_DIR"] = str(organisms)  # bench/discovery.py loads organism:NAME from here
    from mechkit.models import save_organism
    from mechkit.organisms.train import train

    start = time.time()
    model, card = train(name, steps=steps, seed=seed, threads=1, progress=False)
    held = card["held_out"]
    result = {
        "organism": name, "seed": seed, "steps": card["steps"], "max_steps": card["max_steps"],
        "train_wall_s": card["wall_time_s"], "held_out": held, "stopped_at_chance": card["stopped_at_chance"],
        "stopped_on_plateau": card.get("stopped_on_plateau"), "optimizer": card["optimizer"],
        "solved": held["accuracy"] >= SOLVED and held["corrupted_accuracy"] >= SOLVED,
        "live_components": live_components(card), "gates": card.get("gates"), "history": card["history"],
    }
    if result["solved"]:
        save_organism(model, organisms / name, card)
        sys.path.insert(0, str(ROOT / "bench"))
        from discovery import bench_one

        row = bench_one(name, n, 0)
        result["discovery"] = {k: row.get(k) for k in (
            "min_budget_f90_frac", "min_budget_f90_edges", "oracle_nodes", "oracle_faith", "jaccard_selected",
            "jaccard_topk", "pearson_exact", "spearman_exact", "topk_overlap_exact_10", "exact_abs_sum_over_effect",
            "faith10_top-n", "nodes_f90") if k in row}
    result["total_wall_s"] = round(time.time() - start, 1)
    write_result(folder, result)


def one_fine_tuned(name: str, seed: int, folder: Path, steps: int | None) -> None:
    """Fine-tune ``name`` on ``seed`` into ``folder/organisms/NAME`` and record its card's figures."""
    from mechkit.organisms.finetune import train_adapter

    start = time.time()
    card = train_adapter(name, folder / "organisms" / name, seed=seed, steps=steps, progress=False)
    held = card["held_out"]
    result = {
        "organism": name, "seed": seed, "steps": card["steps"], "max_steps": card["max_steps"],
        "train_wall_s": card["wall_time_s"], "threads": card["threads"], "held_out": held,
        "stopped_at_chance": False, "solved": held["accuracy"] >= SOLVED, "live_components": None,
        "ordinary": card["ordinary"], "history": card["history"], "total_wall_s": round(time.time() - start, 1),
    }
    write_result(folder, result)


def summarise(results: list[dict]) -> dict:
    out: dict = {}
    for name in sorted({r["organism"] for r in results}):
        rows = [r for r in results if r["organism"] == name]
        solved = [r for r in rows if r["solved"]]
        groups: dict[str, list[int]] = {}
        shapes: dict[str, list[int]] = {}
        for r in solved:
            nodes = (r.get("discovery") or {}).get("oracle_nodes")
            groups.setdefault(" ".join(sorted(nodes)) if nodes else "(no oracle)", []).append(r["seed"])
            shapes.setdefault(structure(nodes) if nodes else "(no oracle)", []).append(r["seed"])
        out[name] = {
            "solved": f"{len(solved)}/{len(rows)}",
            "seeds_solved": [r["seed"] for r in solved],
            "seeds_stopped_at_chance": [r["seed"] for r in rows if r["stopped_at_chance"]],
            "seeds_stopped_on_plateau": [r["seed"] for r in rows if r.get("stopped_on_plateau")],
            "mechanisms": groups,
            # heads are interchangeable under relabelling: the same structure with other head
            # indices is the same mechanism; a different structure is a different one
            "structures": shapes,
            "median_train_wall_s": sorted(r["train_wall_s"] for r in rows)[len(rows) // 2],
        }
    return out


def print_table(results: list[dict]) -> None:
    print("organism | seed | solved | steps | train s | held-out acc | live | F>=0.9 at | Jacc | r(IG,exact) | rho | top10")
    for r in sorted(results, key=lambda r: (r["organism"], r["seed"])):
        d = r.get("discovery") or {}

        def f(key: str, spec: str = ".3f") -> str:
            value = d.get(key)
            return "-" if value is None else format(value, spec)

        print(f"{r['organism']} | {r['seed']} | {'yes' if r['solved'] else 'no'} | {r['steps']} | {r['train_wall_s']} | "
              f"{r['held_out']['accuracy']:.3f} | {r['live_components']} | {f('min_budget_f90_frac', '.1%')} | "
              f"{f('jaccard_selected', '.2f')} | {f('pearson_exact')} | {f('spearman_exact')} | "
              f"{f('topk_overlap_exact_10', '.2f')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    o = sub.add_parser("one")
    o.add_argument("name")
    o.add_argument("seed", type=int)
    o.add_argument("--work", type=Path, required=True)
    o.add_argument("--steps", type=int)
    o.add_argument("--n", type=int, default=64)
    parser.add_argument("--seeds", default="0-9")
    parser.add_argument("--organisms", default=",".join(ORGANISMS))
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="runs side by side (1 thread each)")
    parser.add_argument("--steps", type=int, help="maximum steps (default: each spec's)")
    parser.add_argument("--n", type=int, default=64, help="prompt pairs for the discovery benchmark")
    parser.add_argument("--work", type=Path, default=Path("/tmp/mechkit-organism-seeds"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/organisms-seeds-cpu.json")
    args = parser.parse_args()
    if args.command == "one":
        return one(args.name, args.seed, args.work, args.steps, args.n)

    runs = [(name, seed) for name in args.organisms.split(",") for seed in parse_seeds(args.seeds)]

    def launch(run: tuple[str, int]) -> None:
        name, seed = run
        folder = args.work / f"{name}-s{seed}"
        if (folder / "result.json").exists():
            return
        folder.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, str(Path(__file__).resolve()), "one", name, str(seed), "--work", str(args.work),
               "--n", str(args.n)] + (["--steps", str(args.steps)] if args.steps else [])
        with open(folder / "log.txt", "w") as log:
            code = subprocess.run(cmd, stdout=log, stderr=log, env={**os.environ, "OMP_NUM_THREADS": "1"}).returncode
        status = "done" if code == 0 else f"failed ({code}), see {folder / 'log.txt'}"
        print(f"{name} seed {seed}: {status}", flush=True)

    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        list(pool.map(launch, runs))
    results = [json.loads((args.work / f"{n}-s{s}" / "result.json").read_text())
               for n, s in runs if (args.work / f"{n}-s{s}" / "result.json").exists()]
    print_table(results)
    summary = summarise(results)
    print(json.dumps(summary, indent=1))
    meta = {"machine": f"{platform.machine()} CPU, {os.cpu_count()} cores, 1 torch thread per run (smol-*: the "
                       f"spec's count), {args.jobs} runs side by side", "load_average_at_start": LOAD_AT_START,
            "date": time.strftime("%Y-%m-%d"),
            "solved_means": f"held-out accuracy and corrupted accuracy >= {SOLVED} (smol-*: the card's held-out "
                            f"behaviour >= {SOLVED})"}
    args.out.write_text(json.dumps({"meta": meta, "summary": summary, "runs": results}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
