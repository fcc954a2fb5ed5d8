"""Evaluating circuits: normalised faithfulness, bootstrap intervals, faithfulness curves, CPR/CMD.

>>> evaluate(model, pairs, circuit)                      # doctest: +SKIP
Faithfulness(ablation='resample', value=0.97, ci_low=0.93, ci_high=1.01, n_prompts=64)
>>> curve = faithfulness_curve(model, pairs, scores)     # doctest: +SKIP
>>> curve.cpr, curve.cmd                                 # doctest: +SKIP

A circuit runs with its edges carrying the clean run's activations and every other edge
ablated (resampled from the corrupted prompt by default; ``mean`` or ``zero`` ablation as
options). Normalised faithfulness, on the metric averaged over prompts:

    F = (mean M(circuit) - mean M(empty)) / (mean M(clean) - mean M(empty))

where ``empty`` is the circuit with no edges under the same ablation (for resample ablation
that is exactly the corrupted run). Many circuits are evaluated per forward: their masks stack
along the batch, so a ten-point curve costs a few forwards' worth of compute.
"""

from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor
from transformer_lens import HookedTransformer

from mechkit._types import Circuit, Faithfulness, PromptPairs
from mechkit.discovery.budget import plan_chunks
from mechkit.discovery.forward import (
    ABLATIONS,
    Metric,
    run_masked_chunked,
    run_metric,
    sender_outputs_and_metric,
    mechkit_runs,
    shared_ablation,
)
from mechkit.discovery.graph import Graph
from mechkit.discovery.scores import EdgeScores
from mechkit.discovery.select import greedy_mask, prune_dangling, topn_mask
from mechkit.discovery.silent import inert_edges, without_silent_heads
from mechkit import distributed
from mechkit.errors import MechkitError
from mechkit.metrics import logit_diff

# The edge-budget fractions of MIB's circuit track (0.1% .. 100% of edges).
MIB_FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


class EvaluationError(MechkitError, ValueError):
    """A faithfulness that cannot be computed (e.g. clean and corrupted metrics coincide)."""


@dataclass(frozen=True)
class MaskedRun:
    """Per-prompt metric values of several circuits and of the two reference runs.

    circuits [c, batch]; clean [batch] (unmodified model); empty [batch] (every edge ablated).
    """

    circuits: Float[Tensor, "c batch"]
    clean: Float[Tensor, " batch"]
    empty: Float[Tensor, " batch"]
    ablation: str

    def faithfulness(self) -> Float[Tensor, " c"]:
        denom = self.clean.mean() - self.empty.mean()
        scale = abs(float(self.clean.mean())) + abs(float(self.empty.mean()))
        if abs(float(denom)) <= 1e-5 * scale + 1e-9:  # equal up to float error
            raise EvaluationError(
                f"mean metric is {float(self.clean.mean()):.4g} on clean and on fully ablated runs: "
                "normalised faithfulness is undefined; use prompts where the corruption changes the metric"
            )
        return (self.circuits.mean(1) - self.empty.mean()) / denom

    def bootstrap(self, index: int, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
        """Percentile bootstrap interval of circuit ``index``'s faithfulness, resampling prompts."""
        rng = np.random.default_rng(seed)
        c, clean, empty = (t.double().cpu().numpy() for t in (self.circuits[index], self.clean, self.empty))
        idx = rng.integers(0, len(c), size=(n_boot, len(c)))
        e = empty[idx].mean(1)
        with np.errstate(divide="ignore", invalid="ignore"):
            values = (c[idx].mean(1) - e) / (clean[idx].mean(1) - e)
        values = values[np.isfinite(values)]
        if len(values) == 0:
            return float("nan"), float("nan")
        tail = (1 - level) / 2 * 100
        low, high = np.percentile(values, [tail, 100 - tail])
        return float(low), float(high)

    def report(self, index: int = 0, n_boot: int = 1000, seed: int = 0) -> Faithfulness:
        low, high = self.bootstrap(index, n_boot, seed) if n_boot else (None, None)
        value = float(self.faithfulness()[index])
        return Faithfulness(self.ablation, value, low, high, int(self.clean.shape[0]))


def run_edge_masks(
    model: HookedTransformer,
    graph: Graph,
    pairs: PromptPairs,
    masks: Bool[Tensor, "c n_edges"],
    ablation: str = "resample",
    metric: Metric | None = None,
    max_batch: int = 512,
    max_memory: str | int | float | None = None,
) -> MaskedRun:
    """Run every circuit in ``masks`` (plus the empty circuit) in batched forwards.

    Identical masks run once (edges of silent components, :mod:`.silent`, do not count); the full
    graph is the clean run and, under resample ablation, the empty graph is the corrupted run
    (the graph reproduces both), so neither needs a patched forward. Heads that are silent run
    only where a layer needs them for equal width (:func:`.silent.without_silent_heads`).
    """
    compact = without_silent_heads(model, graph)
    if compact is not None:
        model, graph, masks = compact.model, compact.graph, masks[:, compact.edge_index.to(masks.device)]
    metric = metric or logit_diff
    device = model.cfg.device
    no_edges = torch.zeros(1, graph.n_edges, dtype=torch.bool)
    # edges from or into a silent component change nothing: set them all, so masks that differ
    # only there run once, and one keeping every live edge is the clean run
    inert = inert_edges(model, graph)
    canonical = torch.cat([no_edges, masks.to(torch.bool).cpu()]) | inert
    unique, inverse = torch.unique(canonical.to(torch.uint8), dim=0, return_inverse=True)
    unique = unique.to(torch.bool)
    is_full, is_empty = unique.all(1), ~(unique & ~inert).any(1)
    keep_all = graph.to_matrix(unique.float())
    # per-prompt values: run prompt chunk by prompt chunk within the memory budget
    # under torchrun each rank runs its share of the prompts; the per-prompt values are gathered
    distributed.agree_on_inputs(model, pairs)
    mine = pairs[distributed.shard(len(pairs))]
    plan = plan_chunks(model, graph, len(mine), pairs.clean.shape[1], grad=False, max_memory=max_memory, max_batch=max_batch)
    with mechkit_runs(model):
        shared = shared_ablation(model, graph, pairs, ablation, plan.prompts)
        values_parts, clean_parts = [], []
        for start in range(0, len(mine), plan.prompts):
            part = mine[start : start + plan.prompts]
            with torch.no_grad():
                clean = run_metric(model, part.clean.to(device), part, metric).float().cpu()
                if ablation == "resample":
                    ablated, empty = sender_outputs_and_metric(model, graph, part.corrupted.to(device), part, metric)
                    empty = empty.float().cpu()
                else:
                    ablated, empty = shared, None
            values = torch.empty(len(unique), len(part))
            values[is_full] = clean
            if empty is not None:
                values[is_empty] = empty
            todo = ~is_full & (~is_empty if empty is not None else torch.ones_like(is_full))
            if todo.any():
                values[todo] = run_masked_chunked(model, graph, part, ablated, keep_all[todo], metric, plan.rows).cpu()
            values_parts.append(values)
            clean_parts.append(clean)
            del ablated
    values = distributed.gather(torch.cat(values_parts, dim=1), dim=1)[inverse]
    return MaskedRun(values[1:], distributed.gather(torch.cat(clean_parts)), values[0], ablation)


def evaluate(
    model: HookedTransformer,
    pairs: PromptPairs,
    circuit: Circuit,
    ablation: str = "resample",
    metric: Metric | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    max_batch: int = 512,
    max_memory: str | int | float | None = None,
) -> Faithfulness:
    """Normalised faithfulness of a circuit, with a 95% per-prompt bootstrap interval.

    Uses only ``circuit.edge_names`` and ``circuit.in_circuit``: the edges are matched by name to
    this model's graph (a circuit from another architecture raises), nothing is re-scored.
    """
    graph = Graph.from_model(model)
    mask = graph.mask_from_names(tuple(circuit.edge_names), circuit.in_circuit)
    run = run_edge_masks(model, graph, pairs, mask[None], ablation, metric, max_batch, max_memory)
    return run.report(0, n_boot, seed)


def robustness(
    model: HookedTransformer,
    pairs: PromptPairs,
    circuit: Circuit,
    ablations: tuple[str, ...] = ABLATIONS,
    metric: Metric | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    max_batch: int = 512,
    max_memory: str | int | float | None = None,
) -> tuple[Faithfulness, ...]:
    """The circuit's faithfulness under each ablation (resample, mean, zero), with intervals."""
    return tuple(evaluate(model, pairs, circuit, a, metric, n_boot, seed, max_batch, max_memory) for a in ablations)


def cpr_cmd(fractions: tuple[float, ...] | list[float], faithfulness: tuple[float, ...] | list[float]) -> tuple[float, float]:
    """MIB's circuit-track summary of a faithfulness curve (Mueller et al. 2025).

    With edge fractions x_1 < ... < x_k (MIB: 0.001 .. 1) and faithfulness f_i, by the trapezoid
    rule on the linear fraction axis:

    - CPR (circuit performance ratio, higher is better) = sum_i (x_{i+1} - x_i) (f_i + f_{i+1}) / 2
    - CMD (circuit-model distance, lower is better) = sum_i (x_{i+1} - x_i) (|1 - f_i| + |1 - f_{i+1}|) / 2

    >>> cpr_cmd([0.0, 0.5, 1.0], [0.0, 1.0, 1.0])
    (0.75, 0.25)
    """
    x = np.asarray(fractions, dtype=float)
    f = np.asarray(faithfulness, dtype=float)
    if x.shape != f.shape or len(x) < 2:
        raise EvaluationError(f"need matching fractions and faithfulness values, at least two: got {len(x)} and {len(f)}")
    if np.any(np.diff(x) <= 0):
        raise EvaluationError("edge fractions must increase strictly")
    width = np.diff(x)
    cpr = float(np.sum(width * (f[:-1] + f[1:]) / 2))
    gap = np.abs(1 - f)
    cmd = float(np.sum(width * (gap[:-1] + gap[1:]) / 2))
    return cpr, cmd


@dataclass(frozen=True)
class Curve:
    """Faithfulness at each edge budget. ``n_edges`` counts edges kept after pruning; ``ci_low``
    and ``ci_high`` are 95% per-prompt bootstrap intervals at each budget (empty when not computed)."""

    fractions: tuple[float, ...]
    n_edges: tuple[int, ...]
    faithfulness: tuple[float, ...]
    ablation: str
    rule: str
    ci_low: tuple[float, ...] = ()
    ci_high: tuple[float, ...] = ()

    @property
    def cpr(self) -> float:
        return cpr_cmd(self.fractions, self.faithfulness)[0]

    @property
    def cmd(self) -> float:
        return cpr_cmd(self.fractions, self.faithfulness)[1]


def curve_masks(
    scores: EdgeScores, fractions: tuple[float, ...], rule: str = "top-n", absolute: bool = True
) -> Bool[Tensor, "c n_edges"]:
    """One pruned mask per budget ``int(fraction * n_edges)`` (MIB's counting)."""
    graph = scores.graph
    counts = [int(f * graph.n_edges) for f in fractions]
    if rule == "greedy":
        masks = torch.stack([greedy_mask(graph, scores.scores, n, absolute) for n in counts])
    else:
        masks = torch.stack([topn_mask(scores.scores, n, absolute) for n in counts])
    return prune_dangling(graph, masks)


def faithfulness_curve(
    model: HookedTransformer,
    pairs: PromptPairs,
    scores: EdgeScores,
    fractions: tuple[float, ...] = MIB_FRACTIONS,
    ablation: str = "resample",
    rule: str = "top-n",
    absolute: bool = True,
    metric: Metric | None = None,
    max_batch: int = 512,
    max_memory: str | int | float | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> Curve:
    """Faithfulness of the top-scoring edges at each budget, all circuits batched together, with a
    95% per-prompt bootstrap interval at each budget (``n_boot=0``: none)."""
    masks = curve_masks(scores, tuple(fractions), rule, absolute)
    run = run_edge_masks(model, scores.graph, pairs, masks, ablation, metric, max_batch, max_memory)
    values = tuple(float(v) for v in run.faithfulness())
    intervals = [run.bootstrap(i, n_boot, seed) for i in range(len(masks))] if n_boot else []
    return Curve(tuple(fractions), tuple(int(m.sum()) for m in masks), values, ablation, rule,
                 tuple(lo for lo, _ in intervals), tuple(hi for _, hi in intervals))
