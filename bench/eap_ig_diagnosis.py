"""Where EAP-IG and exact edge patching disagree on one organism, and what changes it.

    .venv/bin/python bench/eap_ig_diagnosis.py [--organism chekhov] [--n 64] [--worst 8]

Prints, on the benchmark's prompts (``bench/discovery.py``: ``n`` test-split pairs, seed 0):

- Pearson r of each score against exact edge patching: EAP, EAP-IG (inputs; ``ig_steps`` 5, 20,
  100, the library's left Riemann sum k/steps, k = 0..steps-1), the same integral by the midpoint
  rule ((k + 1/2)/steps, a numerical check only, not a method mechkit ships) and
  EAP-IG-activations (``ig_steps`` 5, 20);
- completeness: the EAP-IG scores of the embedding's edges should sum to the metric change
  corrupted - clean when the integral is exact;
- the edges with the largest |EAP-IG - exact|, and r without them;
- the shape of the integrand: the metric along the interpolated-input path, per prompt, and how
  wide (in alpha) its switch from the corrupted to the clean value is. A switch much narrower
  than 1/ig_steps is sampled by luck, so no small step count estimates the integral;
- the sum of |exact| over all edges against |total effect|: when it is several times larger,
  several edges are each necessary on their own (patching any one of them undoes most of the
  behaviour), which no additive attribution can reproduce edge by edge.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from discovery import task_for  # noqa: E402  (the benchmark's prompts)

from mechkit.discovery import attribute  # noqa: E402
from mechkit.discovery.forward import ablated_outputs, receiver_grads, sender_outputs  # noqa: E402
from mechkit.discovery.methods import _gradient_scores  # noqa: E402
from mechkit.metrics import logit_diff  # noqa: E402
from mechkit.models import load_model  # noqa: E402


def integrated(model, graph, pairs, alphas) -> np.ndarray:
    """EAP-IG-inputs edge scores with the gradient averaged at the given interpolation points."""
    ablated = ablated_outputs(model, graph, pairs, "resample")
    clean = sender_outputs(model, graph, pairs.clean)
    start = ablated[:, :, 0]
    step = clean[:, :, 0] - start
    grads = sum(receiver_grads(model, graph, pairs, logit_diff, embed=start + a * step) for a in alphas)
    return _gradient_scores(graph, ablated - clean, grads / len(alphas), len(pairs))[0].numpy()


def path_switch(model, pairs, points: int = 101) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean metric at alpha = 0..1 along corrupted -> clean embeddings, and per prompt the alpha
    width of the 10%->90% switch and the alpha of its midpoint."""
    hook = "blocks.0.hook_resid_pre"
    with torch.no_grad():
        _, c = model.run_with_cache(pairs.clean, names_filter=hook)
        _, k = model.run_with_cache(pairs.corrupted, names_filter=hook)
        c, k = c[hook], k[hook]
        alphas = np.linspace(0, 1, points)
        vals = np.stack([
            logit_diff(model.run_with_hooks(pairs.clean, fwd_hooks=[(hook, lambda act, hook, a=a: k + a * (c - k))]), pairs).numpy()
            for a in alphas
        ])
    frac = (vals - vals[0]) / (vals[-1] - vals[0])
    width = np.array([alphas[np.argmax(f >= 0.9)] - alphas[np.argmax(f >= 0.1)] for f in frac.T])
    centre = np.array([alphas[np.argmax(f >= 0.5)] for f in frac.T])
    return vals.mean(1), width, centre


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--organism", default="chekhov")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--worst", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(f"organism:{args.organism}", device="cpu")
    pairs = task_for(args.organism).generate(args.n, seed=0, split="test")
    exact = attribute(model, pairs, "exact")
    graph, names, e = exact.graph, exact.edge_names, exact.scores.numpy()

    def r(s: np.ndarray) -> float:
        return float(np.corrcoef(s, e)[0, 1])

    print(f"{args.organism}: {graph.n_edges} edges, {len(pairs)} prompt pairs; Pearson r against exact edge patching")
    print(f"  eap                                  r = {r(attribute(model, pairs, 'eap').scores.numpy()):.3f}")
    ig = {}
    for steps in (5, 20, 100):
        ig[steps] = attribute(model, pairs, "eap-ig", ig_steps=steps).scores.numpy()
        print(f"  eap-ig, ig_steps {steps:<3} (left sum)      r = {r(ig[steps]):.3f}")
    for steps in (5, 20, 100):
        mid = integrated(model, graph, pairs, [(k + 0.5) / steps for k in range(steps)])
        print(f"  eap-ig, {steps:<3} steps, midpoint rule    r = {r(mid):.3f}   (numerical check)")
    for steps in (5, 20):
        act = attribute(model, pairs, "eap-ig-activations", ig_steps=steps).scores.numpy()
        print(f"  eap-ig-activations, ig_steps {steps:<3}   r = {r(act):.3f}")

    with torch.no_grad():
        total = float(logit_diff(model(pairs.corrupted), pairs).mean() - logit_diff(model(pairs.clean), pairs).mean())
    embed = [i for i, name in enumerate(names) if name.startswith("embed->")]
    print(f"\ncompleteness: corrupted - clean metric = {total:.2f}; EAP-IG embedding edges sum to "
          + ", ".join(f"{ig[s][embed].sum():.2f} (ig_steps {s})" for s in ig))
    print(f"sum over edges of |exact| = {np.abs(e).sum():.1f}, {np.abs(e).sum() / abs(total):.1f}x |total effect|")

    mean, width, centre = path_switch(model, pairs)
    print("metric along the input path (alpha: mean logit difference): "
          + " ".join(f"{a:.1f}: {v:.1f}" for a, v in zip(np.linspace(0, 1, 11), mean[::10])))
    print(f"per prompt, the 10%->90% switch spans alpha {np.median(width):.2f} (median; max {width.max():.2f}), "
          f"centred at alpha {np.percentile(centre, 25):.2f}-{np.percentile(centre, 75):.2f} (quartiles)")

    order = np.argsort(-np.abs(ig[5] - e))
    print(f"\n{'edge':<22} {'exact':>8} {'ig 5':>8} {'ig 100':>8}")
    for i in order[: args.worst]:
        print(f"{names[i]:<22} {e[i]:8.2f} {ig[5][i]:8.2f} {ig[100][i]:8.2f}")
    for k in (1, 3):
        keep = np.ones(len(e), bool)
        keep[order[:k]] = False
        print(f"r (ig_steps 5) without the {k} worst edge(s): {float(np.corrcoef(ig[5][keep], e[keep])[0, 1]):.3f}")


if __name__ == "__main__":
    main()
