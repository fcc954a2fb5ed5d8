"""Time and memory of loading a 1M-edge circuit artifact (``mechkit.artifacts.load_circuit``).

    python bench/artifact_load.py                      # 1,000,000 edges, both layouts
    python bench/artifact_load.py --edges 200000 --repeats 1
    python bench/artifact_load.py --keep DIR           # keep the generated artifacts in DIR

Writes two artifacts of the same random circuit with ``save_circuit``: inline (every edge with
its score in the JSON, ``sidecar=False``: ~66 bytes per edge) and the default layout above 5,000
edges (names in the JSON, scores in the safetensors sidecar). Each is then loaded in a fresh
Python process, which first imports mechkit and loads a small artifact (so that imports and
one-off allocations are not counted), then loads the big one: the time is that load's wall
time (the median over ``--repeats`` processes), the memory the peak of what Python allocates during it
(``tracemalloc``, in a run of its own), the peak RSS growth (``VmHWM`` after the load minus
before it) and the whole process's peak RSS (imports included).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time, tracemalloc
from mechkit.artifacts import load_circuit

def hwm():  # peak RSS of this process (VmHWM: unlike ru_maxrss, not inherited from the parent)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024

load_circuit(sys.argv[2])                       # warm-up: imports, pydantic models, safetensors
before = hwm()
if sys.argv[3] == "trace":
    tracemalloc.start()
t = time.perf_counter()
circuit = load_circuit(sys.argv[1])
seconds = time.perf_counter() - t
traced = tracemalloc.get_traced_memory()[1] / 2**20 if tracemalloc.is_tracing() else None
after = hwm()
print(json.dumps({"seconds": seconds, "peak_rss_growth_mb": after - before, "traced_peak_mb": traced,
                  "rss_mb": after, "edges": len(circuit.edge_names)}))
"""


def make_circuit(n_edges: int, seed: int = 0):
    """A circuit over the first ``n_edges`` edges of a wide sequential-block graph, 5% in circuit."""
    import torch

    from mechkit._types import Circuit, Faithfulness

    names: list[str] = []
    resid = ["embed"]
    layer = 0
    while len(names) < n_edges:
        heads = [f"L{layer}H{h}" for h in range(64)]
        names += [f"{src}->{h}<{q}>" for src in resid for h in heads for q in "qkv"]
        resid += heads
        names += [f"{src}->M{layer}" for src in resid]
        resid.append(f"M{layer}")
        layer += 1
    names = names[:n_edges]
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(n_edges, generator=g)
    keep = torch.zeros(n_edges, dtype=torch.bool)
    keep[scores.abs().topk(n_edges // 20).indices] = True
    return Circuit(
        model_spec="organism:bench", model_fingerprint="sha256:" + "ab" * 32,
        task={"name": "induction", "seed": 0, "n": 64}, method="eap-ig", hyperparameters={"steps": 5},
        edge_names=tuple(names), edge_scores=scores, in_circuit=keep, selection={"rule": "top-n"},
        faithfulness=(Faithfulness("resample", 0.9, 0.85, 0.95, 64),),
        created="2026-01-01T00:00:00+00:00", mechkit_version="bench",
    )


def measure(path: Path, small: Path, repeats: int) -> dict:
    runs = []
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    def child(mode: str) -> dict:
        out = subprocess.run([sys.executable, "-c", CHILD, str(path), str(small), mode], capture_output=True,
                             text=True, env=env, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    runs = [child("time") for _ in range(repeats)]
    traced = child("trace")["traced_peak_mb"]  # tracemalloc slows the load: a run of its own
    files = [path] + ([path.parent / json.loads(path.read_text())["edges"]["sidecar"]["file"]]
                      if '"sidecar"' in path.read_text()[-400:] else [])
    return {
        "seconds_median": statistics.median(r["seconds"] for r in runs),
        "seconds_all": [round(r["seconds"], 3) for r in runs],
        "peak_rss_growth_mb_max": max(r["peak_rss_growth_mb"] for r in runs),
        "peak_rss_mb_max": max(r["rss_mb"] for r in runs),
        "python_allocations_peak_mb": traced,
        "bytes_on_disk": sum(f.stat().st_size for f in files),
        "edges": runs[0]["edges"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--edges", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--keep", type=Path, default=None, help="write the artifacts here and keep them")
    ap.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = ap.parse_args()
    from mechkit.artifacts import save_circuit

    work = args.keep or Path(tempfile.mkdtemp(prefix="mechkit-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    circuit = make_circuit(args.edges)
    small = save_circuit(make_circuit(200), work / "small.circuit.json")
    results = {}
    for layout, sidecar in (("inline", False), ("sidecar", True)):
        path = save_circuit(circuit, work / f"{layout}.circuit.json", sidecar=sidecar)
        results[layout] = measure(path, small, args.repeats)
        r = results[layout]
        print(f"{layout:8s} {r['edges']:,} edges, {r['bytes_on_disk'] / 1e6:.1f} MB on disk: load "
              f"{r['seconds_median']:.2f} s (median of {args.repeats}), peak allocations "
              f"{r['python_allocations_peak_mb']:.0f} MB (tracemalloc), peak RSS growth "
              f"{r['peak_rss_growth_mb_max']:.0f} MB, process peak RSS {r['peak_rss_mb_max']:.0f} MB", flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
