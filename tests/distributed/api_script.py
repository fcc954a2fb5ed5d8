"""Run by the tests, alone or under torchrun: the Python API inside a process group.

    python api_script.py OUT [--perturb-rank R] [--n N]

Scores organism:chekhov's pairs with EAP-IG, measures a faithfulness curve, and (rank 0) writes
the numbers to OUT as safetensors. A mechkit error prints as one line on rank 0, exit 2.
"""

import argparse
import sys

import torch
from safetensors.torch import save_file

from mechkit import distributed
from mechkit.errors import MechkitError


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--perturb-rank", type=int, default=-1)
    parser.add_argument("--n", type=int, default=24)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from mechkit.discovery import attribute
    from mechkit.discovery.evaluate import faithfulness_curve
    from mechkit.models import load_model
    from mechkit.tasks import task

    with distributed.process_group("gloo"):
        model = load_model("organism:chekhov", device="cpu")
        if distributed.rank() == args.perturb_rank:
            with torch.no_grad():
                model.blocks[0].attn.W_O[0, 0, 0] += 1e-3
        pairs = task("chekhov").generate(args.n, seed=3)
        scores = attribute(model, pairs, "eap-ig", ig_steps=3)
        curve = faithfulness_curve(model, pairs, scores, fractions=(0.01, 0.05, 0.2), n_boot=200)
        if distributed.is_main():
            save_file({
                "edge_scores": scores.scores, "node_scores": scores.node_scores,
                "curve": torch.tensor(curve.faithfulness, dtype=torch.float64),
                "ci_low": torch.tensor(curve.ci_low, dtype=torch.float64),
                "world": torch.tensor([distributed.world_size()]),
            }, args.out)


if __name__ == "__main__":
    try:
        main()
    except MechkitError as err:
        if distributed.env_world()[0] == 0:
            print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
