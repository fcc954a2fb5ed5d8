"""Peak memory of an activation patching sweep on SmolLM2-135M at two memory budgets.

Each budget runs in a fresh process (peak resident memory is per process):

    python bench/patching_memory.py            # both budgets, one process each
    python bench/patching_memory.py --one 1GiB # one run, prints a JSON line

Sweep: resid-pre (every layer x position), 64 IOI pairs, logit difference, denoising.
Peak = ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` at the end, the model's weights included.
"""

import argparse
import json
import resource
import subprocess
import sys
import time


def one(budget: str | None, n: int) -> dict:
    import torch

    from mechkit import load_model
    from mechkit.memory import budget_bytes
    from mechkit.patching import get_act_patch_resid_pre
    from mechkit.tasks import task

    torch.set_num_threads(2)
    model = load_model("smollm2-135m", device="cpu")
    pairs = task("ioi").generate(n, seed=0, model=model)
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    result = get_act_patch_resid_pre(model, pairs, max_memory=budget, progress=False)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"budget": budget or "default", "budget_bytes": budget_bytes(budget), "n_pairs": n,
            "positions": pairs.clean.shape[1], "seconds": round(seconds, 1), "peak_rss_bytes": peak,
            "rss_after_load_bytes": loaded, "checksum": float(result.values.double().sum())}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--one", default=None, help="run one budget in this process ('default' for none)")
    parser.add_argument("--n", type=int, default=64)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(one(None if args.one == "default" else args.one, args.n)))
        return
    for budget in ("default", "1GiB"):
        out = subprocess.run([sys.executable, __file__, "--one", budget, "--n", str(args.n)],
                             capture_output=True, text=True, check=True)
        print(out.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
