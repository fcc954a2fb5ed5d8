"""Data-parallel throughput: 1 process against 2 torchrun ranks, on this machine's CPU.

    MECHKIT_CACHE=... .venv/bin/python bench/distributed.py [--pairs 16] [--sae-steps 30]

Two workloads, each run three ways one after another (never side by side):

- ``eap``: EAP-IG (5 steps) of SmolLM2-135M-Instruct on ``--pairs`` IOI pairs (training split);
  the timed part is :func:`mechkit.attribute` between two barriers (model loading excluded).
- ``sae``: a SAELens TopK SAE (d_sae = 8 x 576, k = 32, batch 4,096) trained for ``--sae-steps``
  steps on SmolLM2's ``blocks.2.hook_resid_post`` activations of IOI prompts; the timed part is
  :func:`mechkit.sae.train_sae`.

Ways: one process with 1 torch thread (the peer of one rank), one process with 2 threads (the
best a single process does on 2 cores), and ``torchrun --nproc-per-node 2`` with 1 thread per
rank (gloo, loopback). The 2-rank results are compared with the 1-process results (max
difference relative to the largest value), so a fast but wrong run cannot pass. Results go to
``--out`` with the machine's description and load average.
"""

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOOK = "blocks.2.hook_resid_post"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(args: argparse.Namespace) -> None:
    """One rank (or the single process): time the workload, rank 0 writes ``args.result``."""
    import torch
    from safetensors.torch import save_file

    from mechkit import distributed

    torch.set_num_threads(args.threads)
    with distributed.process_group("gloo"):
        if args.workload == "eap":
            import mechkit
            from mechkit.discovery import attribute
            from mechkit.tasks import task

            model = mechkit.load_model("smollm2-135m", device="cpu")
            pairs = task("ioi").generate(args.pairs, seed=1, split="train", model=model)
            distributed.barrier()
            start = time.perf_counter()
            scores = attribute(model, pairs, "eap-ig", ig_steps=5)
            distributed.barrier()
            seconds = time.perf_counter() - start
            values, units = scores.scores, args.pairs
        else:
            from mechkit.sae import TrainConfig, train_sae

            cfg = TrainConfig(architecture="topk", expansion=8, k=32, steps=args.sae_steps, batch_size=4096,
                              lr=3e-4, seed=0)
            distributed.barrier()
            start = time.perf_counter()
            sae = train_sae(args.cache, HOOK, args.sae_out, cfg, resume=False)
            distributed.barrier()
            seconds = time.perf_counter() - start
            values, units = sae.W_dec.detach(), args.sae_steps * 4096
        if distributed.is_main():
            save_file({"values": values.float().contiguous()}, args.result + ".safetensors")
            Path(args.result).write_text(json.dumps({"seconds": seconds, "units": units,
                                                     "world": distributed.world_size(), "threads": args.threads}))


def _run(workload: str, ranks: int, threads: int, extra: list[str], work: Path) -> dict:
    result = work / f"{workload}-{ranks}x{threads}.json"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "GLOO_SOCKET_IFNAME": "lo"}
    me = [str(Path(__file__).resolve()), "worker", workload, str(result), "--threads", str(threads), *extra]
    if ranks == 1:
        cmd = [sys.executable, *me]
    else:
        torchrun = Path(sys.executable).with_name("torchrun")
        cmd = [str(torchrun), "--nproc-per-node", str(ranks), "--master-addr", "127.0.0.1",
               "--master-port", str(_free_port()), *me]
    load = os.getloadavg()[0]
    subprocess.run(cmd, check=True, env=env, cwd=ROOT)
    out = json.loads(result.read_text())
    out["load_before"] = round(load, 2)
    print(f"{workload} {ranks} rank(s) x {threads} thread(s): {out['seconds']:.1f} s", flush=True)
    return out


def _compare(work: Path, a: str, b: str) -> float:
    from safetensors.torch import load_file

    x, y = (load_file(work / f"{n}.json.safetensors")["values"] for n in (a, b))
    return float((x - y).abs().max() / x.abs().max())


def _make_cache(work: Path, n_pairs: int) -> Path:
    """SmolLM2's activations at HOOK on IOI prompts (clean and corrupted, every position)."""
    cache = work / "cache"
    if (cache / "manifest-rank000.json").exists():
        return cache
    import torch

    import mechkit
    from mechkit.sae import write_cache
    from mechkit.tasks import task

    torch.set_num_threads(2)
    model = mechkit.load_model("smollm2-135m", device="cpu")
    pairs = task("ioi").generate(n_pairs, seed=7, split="train", model=model)
    write_cache(model, pairs, cache, [HOOK], batch_size=64)
    return cache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    w = sub.add_parser("worker")
    w.add_argument("workload", choices=["eap", "sae"])
    w.add_argument("result")
    w.add_argument("--threads", type=int, default=1)
    w.add_argument("--pairs", type=int, default=16)
    w.add_argument("--cache")
    w.add_argument("--sae-out")
    w.add_argument("--sae-steps", type=int, default=30)
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--sae-steps", type=int, default=30)
    parser.add_argument("--cache-pairs", type=int, default=1024)
    parser.add_argument("--workloads", default="eap,sae")
    parser.add_argument("--work", default="/tmp/mechkit-bench-distributed")
    parser.add_argument("--out", default=str(ROOT / "bench/results/distributed-cpu.json"))
    args = parser.parse_args()
    if args.command == "worker":
        return worker(args)

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "date": time.strftime("%Y-%m-%d"),
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                 cwd=ROOT).stdout.strip(),
    }
    for workload in args.workloads.split(","):
        if workload == "eap":
            extra = ["--pairs", str(args.pairs)]
        else:
            extra = ["--cache", str(_make_cache(work, args.cache_pairs)), "--sae-steps", str(args.sae_steps)]
        runs = {}
        for ranks, threads in ((1, 1), (1, 2), (2, 1)):
            more = [] if workload == "eap" else ["--sae-out", str(work / f"sae-{ranks}x{threads}")]
            runs[f"{ranks}x{threads}"] = _run(workload, ranks, threads, extra + more, work)
        per_s = {k: r["units"] / r["seconds"] for k, r in runs.items()}
        results[workload] = {
            "setup": (f"EAP-IG, 5 steps, SmolLM2-135M-Instruct, {args.pairs} IOI pairs (train split, seed 1)"
                      if workload == "eap" else
                      f"SAELens TopK, d_in 576, d_sae 4608, k 32, batch 4096, {args.sae_steps} steps, "
                      f"{HOOK} of {args.cache_pairs} IOI pairs"),
            "runs": runs,
            "throughput_per_s": per_s,
            "unit": "prompt pairs" if workload == "eap" else "tokens",
            "speedup_2_ranks_vs_1_rank_1_thread": per_s["2x1"] / per_s["1x1"],
            "speedup_2_ranks_vs_1_process_2_threads": per_s["2x1"] / per_s["1x2"],
            "max_rel_diff_2_ranks_vs_1_process": _compare(work, f"{workload}-1x1", f"{workload}-2x1"),
            # the yardstick: one process with 1 and with 2 threads (other summation orders again)
            "max_rel_diff_1_thread_vs_2_threads": _compare(work, f"{workload}-1x1", f"{workload}-1x2"),
        }
        print(json.dumps({k: v for k, v in results[workload].items() if k != "runs"}, indent=1), flush=True)
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
