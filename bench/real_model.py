"""Circuit discovery on the real pretrained model: SmolLM2-135M-Instruct, IOI prompt pairs.

    .venv/bin/python bench/real_model.py [--n 64] [--n-memory 256] [--out bench/results/real-model-cpu.json]

Each measurement runs in a fresh process, so its peak resident memory (``ru_maxrss``) is its own:

- ``eap-ig``: EAP-IG (5 steps, resample ablation) on ``--n`` IOI pairs: wall and CPU time, peak
  memory. Target: <= 3 minutes on the 2-core CPU.
- ``curve``: the 10-budget MIB faithfulness curve of those scores (CPR, CMD). Target <= 3 minutes.
- ``memory``: EAP-IG 5 steps + the 10-budget curve on ``--n-memory`` pairs, peak memory.
  Target: <= 6 GB (before chunking, 64 pairs were killed by the kernel at 19 GB).

The model is loaded (from mechkit's GGUF cache) before the clock starts; its own memory is part
of every peak.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
import torch
torch.set_num_threads(int(sys.argv[4]))
import mechkit
from mechkit.discovery import attribute
from mechkit.discovery.evaluate import faithfulness_curve
from mechkit.tasks import task

kind, n, max_memory = sys.argv[1], int(sys.argv[2]), (sys.argv[3] or None)
model = mechkit.load_model("smollm2-135m", device="cpu")
pairs = task("ioi").generate(n, seed=0, model=model)
loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
out = {"kind": kind, "n_pairs": n, "positions": int(pairs.clean.shape[1]), "rss_after_load": loaded}
wall, cpu = time.perf_counter(), time.process_time()
scores = attribute(model, pairs, "eap-ig", ig_steps=5, max_memory=max_memory)
out["eap_ig_wall_s"], out["eap_ig_cpu_s"] = time.perf_counter() - wall, time.process_time() - cpu
out["convergence_relative_error"] = scores.convergence.relative_error
if kind in ("curve", "memory"):
    wall, cpu = time.perf_counter(), time.process_time()
    curve = faithfulness_curve(model, pairs, scores, max_memory=max_memory)
    out["curve_wall_s"], out["curve_cpu_s"] = time.perf_counter() - wall, time.process_time() - cpu
    out.update(faithfulness=list(curve.faithfulness), n_edges=list(curve.n_edges), cpr=curve.cpr, cmd=curve.cmd)
out["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print("RESULT " + json.dumps(out))
"""


def run_child(kind: str, n: int, max_memory: str | None, threads: int) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, kind, str(n), max_memory or "", str(threads)],
        capture_output=True, text=True,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise SystemExit(f"{kind} run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


def gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=64, help="IOI pairs for the timed runs")
    parser.add_argument("--n-memory", type=int, default=256, help="IOI pairs for the memory run")
    parser.add_argument("--max-memory", help="working-memory budget (default: mechkit's)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", help="comma-separated subset of: curve,memory")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--machine", default=f"{platform.machine()} CPU, {os.cpu_count()} cores")
    args = parser.parse_args()
    kinds = args.only.split(",") if args.only else ["curve", "memory"]
    rows = []
    for kind in kinds:
        n = args.n_memory if kind == "memory" else args.n
        row = run_child(kind, n, args.max_memory, args.threads)
        rows.append(row)
        print(f"{kind:7s} n={n:4d} pos={row['positions']}: EAP-IG {row['eap_ig_wall_s']:.0f} s wall "
              f"({row['eap_ig_cpu_s']:.0f} s CPU), curve {row.get('curve_wall_s', float('nan')):.0f} s wall, "
              f"peak {gb(row['peak_rss'])} (model loaded: {gb(row['rss_after_load'])})"
              + (f", CPR {row['cpr']:.3f} CMD {row['cmd']:.3f}" if "cpr" in row else ""), flush=True)
    if args.out:
        load = os.getloadavg()
        args.out.write_text(json.dumps({
            "machine": args.machine, "threads": args.threads, "load_average_at_end": load,
            "date": time.strftime("%Y-%m-%d"), "max_memory": args.max_memory, "rows": rows,
        }, indent=2) + "\n")


if __name__ == "__main__":
    main()
