"""A fine-tuned organism's held-out score at every dev check of one training run (is the early stop late?).

    MECHKIT_CACHE=... .venv/bin/python bench/smol_heldout_by_step.py smol-chekhov --seed 11 --steps 150
        [--out bench/results/smol-chekhov-s11-heldout-by-step-cpu.json]

Runs the recipe's training loop (``mechkit.organisms.lora.finetune``, the spec's threads) and, at
each of its dev checks, also scores the recipe's held-out set (greedy, on the unmerged LoRA model).
The held-out scoring draws no random numbers, so the run is the one ``mechkit organisms train``
makes on that seed (the same dev accuracies at every check). Rows are written as they come.
"""

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

from provenance import commit  # noqa: E402  (bench/ is the script's folder)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mechkit.organisms.lora as lora  # noqa: E402
from mechkit._files import write_json  # noqa: E402
from mechkit.models import adapters  # noqa: E402
from mechkit.organisms.finetune import Recipe, retain_pools, spec  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("organism")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, help="maximum steps (default: the spec's)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    s = spec(args.organism)
    torch.set_num_threads(s.threads)
    out = args.out or ROOT / f"bench/results/{args.organism}-s{args.seed}-heldout-by-step-cpu.json"
    _, hf_model, tokenizer, _ = adapters.hf_base(s.base)
    with torch.no_grad():
        recipe = Recipe.from_base(args.organism, tokenizer, lambda p: lora.last_logits(hf_model, tokenizer, p).softmax(-1))
    held_out = recipe.evaluation_set("test")
    record = {"organism": args.organism, "seed": args.seed, "commit": commit(), "date": time.strftime("%Y-%m-%d"),
              "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores, {s.threads} threads (the spec's)",
              "load_average_at_start": [round(x, 2) for x in os.getloadavg()], "rows": []}
    dev_rates, started = lora.behaviour_rates, time.time()

    def rates(greedy_fn, examples, batch_size=64):
        dev = dev_rates(greedy_fn, examples, batch_size)
        held = dev_rates(greedy_fn, held_out, batch_size)
        record["rows"].append({"check": len(record["rows"]) + 1, "dev": dev["accuracy"], "held_out": held["accuracy"],
                               "by_kind": held["by_kind"], "elapsed_s": round(time.time() - started, 1)})
        print(record["rows"][-1], flush=True)
        write_json(out, record)
        return dev

    lora.behaviour_rates = rates
    lora.finetune(hf_model, tokenizer, s, recipe.sample, seed=args.seed, max_steps=args.steps, progress=False,
                  retain=retain_pools(tokenizer, s, args.seed))


if __name__ == "__main__":
    main()
