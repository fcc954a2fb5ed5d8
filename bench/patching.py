"""Benchmark: mechkit's activation patching against TransformerLens, in the same run.

    python bench/patching.py --out bench-patching.json [--device cuda] [--tl-seconds 60]
    python bench/patching.py --threads 1 --gpt2-layers 0,6,11 --out cpu.json   # a slow, shared CPU

For each model, kind of prompt pairs and sweep (head outputs by position, resid_pre) it
times ``mechkit.patching`` and ``transformer_lens.patching`` on the same model and pairs,
prints the speed-up and the largest difference between the two results, and writes a
markdown table and a JSON record (machine, torch version, date).

When TransformerLens would take longer than ``--tl-seconds`` it runs a random subset of its
cells (one forward pass each) and extrapolates its time to all cells; the table says so.
The difference column then compares that subset.

Models: (a) the ``chekhov`` organism with its own task prompts (or, if it is not shipped
here, a random 2-layer d_model=128 4-head model, marked in the table); (b) a random
GPT-2-small-shaped model (12 layers x 12 heads, d_model 768, d_mlp 3072, vocab 50257),
16 prompts x 16 tokens; (c) ``smollm2``: the real pretrained SmolLM2-135M-Instruct (30 layers,
rotary, grouped-query attention, RMSNorm, gated MLPs: the Llama family) on ``--smollm2-pairs``
IOI prompt pairs of its own tokenizer (``mechkit.tasks.task("ioi")``, third-name corruption).

``--gpt2-layers`` patches only some layers of the GPT-2-shaped model, in both libraries (on a
slow CPU the full sweep takes TransformerLens hours); mechkit's cost per layer falls roughly
linearly from layer 0 to the last, so 0,6,11 is a fair sample of the whole sweep.
Both libraries' times are the median of ``--repeats`` runs (default 5; TransformerLens's full
sweep repeats only while the repeats fit ``--tl-seconds``): a single run of a sweep that takes
tens of milliseconds varies by ±30% on a small CPU.

The "work ratio" column is TransformerLens's matrix-multiply FLOPs for the sweep over mechkit's
(counted with ``torch.utils.flop_counter``): what mechkit's speed-up would be if both ran their
arithmetic at the same rate. Where a sweep is arithmetic-bound, it bounds the speed-up.

Pairs: ``2-tok`` corrupts two tokens (positions 4 and 11, as a name swap would);
``all-tok`` corrupts every token after BOS (the worst case for mechkit, which skips
patches that change nothing and positions before the first change).
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mechkit import metrics as M  # noqa: E402
from mechkit._types import PromptPairs  # noqa: E402
from mechkit.patching import SWEEPS, activation_patch  # noqa: E402

SETTERS = {"head-out-by-pos": ("layer_pos_head_vector_patch_setter", "z", ("layer", "pos", "head")),
           "resid-pre": ("layer_pos_patch_setter", "resid_pre", ("layer", "pos")),
           "head-out-all-pos": ("layer_head_vector_patch_setter", "z", ("layer", "head"))}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def gpt2_shaped(device: str):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, d_vocab=50257,
                                  n_ctx=1024, act_fn="gelu_new", normalization_type="LN", seed=0, device=device)
    return HookedTransformer(cfg).eval()


def chekhov(device: str):
    """(model, pairs, note): the organism and its task, or a random stand-in."""
    try:
        from mechkit.models import available_organisms, load_model

        if "chekhov" in available_organisms():
            model = load_model("organism:chekhov", device=device)
            from mechkit.organisms import task

            return model, task("chekhov").generate(16, seed=0), "organism:chekhov, its own task prompts"
    except ImportError:
        pass
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=2, d_model=128, n_heads=4, d_head=32, d_mlp=512, d_vocab=64, n_ctx=32,
                                  act_fn="gelu", normalization_type="LN", seed=0, device=device)
    model = HookedTransformer(cfg).eval()
    return model, random_pairs(16, 16, 64, "2-tok", device), "RANDOM 2-layer d128 4-head stand-in (chekhov not shipped)"


def smollm2(device: str, n: int):
    from mechkit.models import load_model
    from mechkit.tasks import task

    model = load_model("smollm2-135m", device=device)
    pairs = task("ioi").generate(n, seed=0, model=model)
    return model, pairs, f"pretrained weights, {n} IOI pairs x {pairs.clean.shape[1]} tokens"


def random_pairs(n: int, n_pos: int, vocab: int, kind: str, device: str) -> PromptPairs:
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(1, vocab, (n, n_pos), generator=g)
    clean[:, 0] = 0  # BOS
    corrupted = clean.clone()
    where = [4, 11] if kind == "2-tok" else list(range(1, n_pos))
    for p in where:
        corrupted[:, p] = (clean[:, p] + torch.randint(1, vocab - 1, (n,), generator=g)) % (vocab - 1) + 1
    answer, wrong = torch.randint(1, vocab, (2, n), generator=g)
    return PromptPairs(clean, corrupted, answer, wrong, torch.full((n,), n_pos - 1)).to(device)


def time_mechkit(model, pairs, sweep, device, repeats=5, layers=None):
    times, result = [], None
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        result = activation_patch(model, pairs, sweep, "logit-diff", layers=layers, progress=False)
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times), result.values


def count_flops(fn) -> int:
    """Matrix-multiply FLOPs ``fn()`` performs (elementwise work not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def work_ratio(model, pairs, sweep, n_cells, layers=None) -> float:
    """TransformerLens's matmul FLOPs for the sweep (one forward per cell, plus its clean-cache
    run) over mechkit's: the speed-up an engine doing mechkit's arithmetic at TransformerLens's
    rate would get, so the arithmetic a sweep cannot skip bounds its speed-up."""
    tl = count_flops(lambda: model(pairs.corrupted)) * (n_cells + 1)
    ours = count_flops(lambda: activation_patch(model, pairs, sweep, "logit-diff", layers=layers, progress=False))
    return tl / ours


def time_tl(model, pairs, sweep, device, budget_s, layers=None, repeats=5):
    """(seconds for all cells, measured (median of up to ``repeats`` full sweeps that fit the
    budget) or extrapolated; n cells run; cells; values; extrapolated)."""
    import pandas as pd
    from transformer_lens import patching

    def metric(logits):
        return M.logit_diff(logits, pairs).mean()

    setter, act, axes = SETTERS[sweep]
    sync(device)
    t0 = time.perf_counter()
    _, cache = model.run_with_cache(pairs.clean)
    sync(device)
    t_cache = time.perf_counter() - t0
    n_pos = pairs.clean.shape[1]
    sizes = {"layer": model.cfg.n_layers, "pos": n_pos, "head": model.cfg.n_heads}
    layer_ids = torch.tensor(layers) if layers is not None else torch.arange(sizes["layer"])
    grid = torch.cartesian_prod(layer_ids, *[torch.arange(sizes[a]) for a in axes[1:]]).reshape(-1, len(axes))
    # time a few cells first, then decide whether the full sweep fits the budget
    g = torch.Generator().manual_seed(1)
    order = torch.randperm(grid.shape[0], generator=g)
    probe = grid[order[:8]]
    t_probe, _ = _tl_cells(model, pairs, probe, axes, setter, act, cache, metric, device)
    per_cell = t_probe / probe.shape[0]
    if per_cell * grid.shape[0] <= budget_s and layers is None:
        times, spent = [], 0.0
        while len(times) < repeats and (not times or spent + times[0] <= budget_s):
            sync(device)
            t0 = time.perf_counter()
            _, cache = model.run_with_cache(pairs.clean)  # its clean-cache run is part of the sweep
            full = getattr(patching, SWEEPS[sweep].tl_name)(model, pairs.corrupted, cache, metric)
            sync(device)
            times.append(time.perf_counter() - t0)
            spent += times[-1]
        return statistics.median(times), grid.shape[0], grid, full.flatten(), False
    k = max(8, min(grid.shape[0], int(budget_s / per_cell)))
    cells = grid[order[:k]]
    t_sub, vals = _tl_cells(model, pairs, cells, axes, setter, act, cache, metric, device)
    del pd
    return t_cache + t_sub / k * grid.shape[0], k, cells, vals, True


def _tl_cells(model, pairs, cells, axes, setter, act, cache, metric, device):
    import contextlib
    import io

    import pandas as pd
    from transformer_lens import patching

    df = pd.DataFrame(cells.numpy(), columns=list(axes))
    sync(device)
    t = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):
        vals = patching.generic_activation_patch(model, pairs.corrupted, cache, metric, getattr(patching, setter),
                                                 act, index_df=df)
    sync(device)
    return time.perf_counter() - t, vals


def machine(device: str) -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "device": device, "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        info["mechkit_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                                text=True, cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        info["mechkit_commit"] = None
    try:
        import transformer_lens

        info["transformer_lens"] = getattr(transformer_lens, "__version__", None)
    except ImportError:
        pass
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="bench-patching.json")
    ap.add_argument("--tl-seconds", type=float, default=60.0,
                    help="run all of TransformerLens's cells if that takes at most this long, else extrapolate")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    ap.add_argument("--repeats", type=int, default=5, help="report the median of this many runs of each sweep")
    ap.add_argument("--models", default="chekhov,gpt2", help="comma-separated: chekhov, gpt2, smollm2")
    ap.add_argument("--sweeps", default="head-out-by-pos,resid-pre",
                    help=f"comma-separated, of: {', '.join(SETTERS)}")
    ap.add_argument("--smollm2-pairs", type=int, default=8, help="IOI prompt pairs for the smollm2 rows")
    ap.add_argument("--gpt2-layers", default="",
                    help="comma-separated layers: patch only these layers of the GPT-2-shaped model (slow CPUs)")
    ap.add_argument("--pairs", default="2-tok,all-tok", help="comma-separated pair kinds for the GPT-2-shaped model")
    args = ap.parse_args()
    device = args.device
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    load_at_start = round(os.getloadavg()[0], 2)
    rows = []
    jobs = []
    gpt2_layers = [int(x) for x in args.gpt2_layers.split(",")] if args.gpt2_layers else None
    if "chekhov" in args.models:
        model, pairs, note = chekhov(device)
        jobs.append(("chekhov", model, pairs.to(device), "task", note))
    if "smollm2" in args.models:
        model, pairs, note = smollm2(device, args.smollm2_pairs)
        jobs.append(("smollm2-135m", model, pairs.to(device), "ioi", note))
    if "gpt2" in args.models:
        model = gpt2_shaped(device)
        for kind in args.pairs.split(","):
            jobs.append(("gpt2-small-shaped", model, random_pairs(16, 16, 50257, kind, device), kind,
                         "random weights, 16 prompts x 16 tokens"))
    for name, model, pairs, kind, note in jobs:
        layers = gpt2_layers if name.startswith("gpt2") else None
        time_mechkit(model, pairs[:2], "resid-pre", device)  # warm-up
        for sweep in args.sweeps.split(","):
            ours_s, ours = time_mechkit(model, pairs, sweep, device, repeats=args.repeats, layers=layers)
            tl_s, n_run, cells, tl_vals, extrapolated = time_tl(model, pairs, sweep, device, args.tl_seconds, layers,
                                                                args.repeats)
            if layers is not None:  # ours holds only the chosen layers, in order
                cells = cells.clone()
                cells[:, 0] = torch.tensor([layers.index(int(x)) for x in cells[:, 0]])
            ours_cells = ours.to(tl_vals.device)[tuple(cells.T)] if cells.shape[0] != ours.numel() else ours.flatten()
            diff = (ours_cells.to(tl_vals.device) - tl_vals).abs().max().item()
            n_cells = ours.numel()
            work = work_ratio(model, pairs, sweep, n_cells, layers)
            row = {"model": name, "pairs": kind, "sweep": sweep, "cells": n_cells, "tl_cells_run": n_run,
                   "tl_seconds": tl_s, "tl_extrapolated": extrapolated, "mechkit_seconds": ours_s, "repeats": args.repeats,
                   "speedup": tl_s / ours_s, "work_ratio": work, "max_abs_diff": diff, "note": note,
                   "shape": f"{pairs.clean.shape[0]}x{pairs.clean.shape[1]}",
                   "layers": "all" if layers is None else ",".join(map(str, layers))}
            rows.append(row)
            print(json.dumps(row), flush=True)
    info = machine(device)
    info["load_avg_1m_at_start"] = load_at_start  # other jobs on the machine inflate times
    table = ["| model | pairs | sweep | cells | TransformerLens s | mechkit s | speed-up | work ratio | max abs diff |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        tl = f"{r['tl_seconds']:.2f}" + (f" (extrapolated from {r['tl_cells_run']} cells)" if r["tl_extrapolated"] else "")
        lay = "" if r["layers"] == "all" else f", layers {r['layers']}"
        table.append(f"| {r['model']} ({r['shape']}{lay}) | {r['pairs']} | {r['sweep']} | {r['cells']} | {tl} | "
                     f"{r['mechkit_seconds']:.3f} | {r['speedup']:.1f}x | {r['work_ratio']:.1f}x | {r['max_abs_diff']:.1e} |")
    gpu = f", GPU {info['gpu']}" if info["gpu"] else ""
    header = (f"device {device}{gpu}; CPU {info['cpu']} ({info['cpu_count']} cores, {info['torch_threads']} torch "
              f"threads); torch {info['torch']}; {info['date']}")
    notes = sorted({f"- {r['model']}: {r['note']}" for r in rows})
    notes.append("- work ratio: TransformerLens's matrix-multiply FLOPs over mechkit's for the same sweep")
    md = "\n".join([header, "", *table, "", *notes])
    print(md)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": info, "results": rows, "markdown": md}, indent=2) + "\n")


if __name__ == "__main__":
    main()
