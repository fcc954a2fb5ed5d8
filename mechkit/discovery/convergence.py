"""How well EAP-IG's few interpolation steps resolve its integral (the convergence delta).

Integrated gradients is complete: along the whole path from the ablated to the clean input,
the input's attributions sum to the metric's change. EAP-IG's embedding edges are that
attribution split by receiver (the embedding reaches every receiver through the residual
stream), so with the sign convention of :mod:`mechkit.discovery.scores`

    sum(embedding edge scores)  ->  mean metric(ablated input) - mean metric(clean)

as ``ig_steps`` grows. The gap at a finite step count is the Riemann sum's error (what Captum
reports as the convergence delta). A large gap means the metric changes within a small part
of the path, so a few sample points over- or undershoot it, and the scores of edges along
that switch are unreliable: raise ``ig_steps``, or check the top edges with ``method="exact"``.

>>> scores = attribute(model, pairs, "eap-ig")     # doctest: +SKIP
>>> scores.convergence.relative_error               # doctest: +SKIP
0.017
"""

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor
from transformer_lens import HookedTransformer

from mechkit._types import PromptPairs
from mechkit.discovery.forward import Metric, run_metric
from mechkit.discovery.graph import Graph

WARN_ABOVE = 0.2  # relative error beyond which attribute() warns


class IntegrationWarning(UserWarning):
    """EAP-IG's interpolation steps resolve its integral poorly on these prompts."""


@dataclass(frozen=True)
class Convergence:
    """The completeness check of one integrated-gradients scoring run."""

    total_effect: float  # mean metric(ablated input) - mean metric(clean input)
    embedding_sum: float  # sum of the embedding's edge scores
    ig_steps: int

    @property
    def relative_error(self) -> float:
        """|embedding_sum - total_effect| / |total_effect| (inf when the effect is zero but the sum is not)."""
        gap = abs(self.embedding_sum - self.total_effect)
        return gap / abs(self.total_effect) if self.total_effect else (0.0 if gap == 0 else float("inf"))

    def message(self) -> str:
        return (f"EAP-IG with ig_steps={self.ig_steps} resolves its integral poorly: the embedding's edge scores "
                f"sum to {self.embedding_sum:.3g} but the metric changes by {self.total_effect:.3g} "
                f"({100 * self.relative_error:.0f}% off); raise ig_steps, or check the top edges with method='exact'")


@torch.no_grad()
def path_effect(model: HookedTransformer, pairs: PromptPairs, metric: Metric, ablated: Tensor) -> float:
    """Sum over prompts of metric(ablated input) - metric(clean input): the integral's total.

    ``ablated`` is what the scoring run used ([batch or 1, pos, n_fwd, d_model]); its embedding
    slice is the path's start, the clean prompts' embedding its end."""
    clean = pairs.clean.to(model.cfg.device)
    start = ablated[:, :, 0]

    def from_start(act: Tensor, hook) -> Tensor:
        return start.to(act.dtype).expand_as(act)

    at_clean = run_metric(model, clean, pairs, metric).double().sum()
    at_start = run_metric(model, clean, pairs, metric, [("blocks.0.hook_resid_pre", from_start)]).double().sum()
    return float(at_start - at_clean)


def convergence(
    model: HookedTransformer, graph: Graph, pairs: PromptPairs, metric: Metric, ablated: Tensor,
    edge_scores: Tensor, ig_steps: int,
) -> Convergence:
    """Compare the embedding's edge scores with the metric change between the path's two ends."""
    return from_effect(graph, path_effect(model, pairs, metric, ablated) / len(pairs), edge_scores, ig_steps)


def from_effect(graph: Graph, total_effect: float, edge_scores: Tensor, ig_steps: int) -> Convergence:
    """The check, given the mean metric change along the path (summed over chunks by the caller)."""
    embedding_sum = graph.to_matrix(edge_scores.float())[0].sum()  # forward index 0 is the embedding
    return Convergence(float(total_effect), float(embedding_sum), ig_steps)


def warn_if_unresolved(check: Convergence) -> None:
    if check.relative_error > WARN_ABOVE:
        warnings.warn(check.message(), IntegrationWarning, stacklevel=3)
