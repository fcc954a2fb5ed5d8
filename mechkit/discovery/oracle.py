"""Exhaustive search for the smallest node set that reaches a faithfulness target.

>>> result = oracle(model, pairs, target=0.9)            # doctest: +SKIP
>>> result.nodes                                         # doctest: +SKIP
('L0H1', 'L1H0')

For small models only (heads + MLPs <= ``max_nodes``, 16 by default: 65,536 subsets). A node
set S is the circuit of every edge between nodes of S, ``embed`` and ``logits``; equivalently,
every head and MLP outside S has its output ablated, so a node circuit is a cheap output patch.
Subsets are tried by size, smallest first, many per batched forward; the search stops at the
first size at which some subset reaches the target and returns that size's most faithful set.
Faithfulness is normalised as in :mod:`.evaluate` (empty = every edge ablated).

Components whose output weights are all zero (pruned heads and MLPs) write nothing whatever
their input, so they are left out of the search: it stays exact and runs over live nodes only.
"""

import itertools
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from mechkit._types import PromptPairs
from mechkit.discovery.budget import plan_chunks
from mechkit.discovery.forward import Metric, chunk_ablation, run_masked_chunked, shared_ablation
from mechkit.discovery.graph import Graph
from mechkit.discovery.silent import silent_nodes
from mechkit.errors import MechkitError
from mechkit.metrics import logit_diff


class OracleError(MechkitError, ValueError):
    """A model too large for exhaustive search, or a target no subset can reach."""


@dataclass(frozen=True)
class OracleResult:
    """The smallest node set reaching ``target`` (the whole model if none does)."""

    nodes: tuple[str, ...]
    faithfulness: float
    target: float
    reached: bool
    n_evaluated: int
    ablation: str


def oracle(
    model: HookedTransformer,
    pairs: PromptPairs,
    target: float = 0.9,
    ablation: str = "resample",
    metric: Metric | None = None,
    max_nodes: int = 16,
    max_batch: int = 2048,
    progress: bool = False,
    max_memory: str | int | float | None = None,
) -> OracleResult:
    """Search node subsets by increasing size (see the module docstring).

    Prompts run in chunks that fit ``max_memory`` (:func:`~mechkit.discovery.budget.plan_chunks`),
    at most ``max_batch`` sequences per forward; with more than one chunk, each size's subsets
    are tried chunk by chunk and their values added up (the same result)."""
    graph = Graph.from_model(model)
    names = graph.node_names
    silent = silent_nodes(model, graph)
    live = [i for i in range(len(names)) if i not in silent]
    if len(live) > max_nodes:
        raise OracleError(
            f"the model has {len(live)} heads and MLPs; exhaustive search is limited to max_nodes={max_nodes} "
            f"(2^{len(live)} subsets): use attribution (eap-ig) instead"
        )
    metric = metric or logit_diff
    n_prompts = len(pairs)
    plan = plan_chunks(model, graph, n_prompts, pairs.clean.shape[1], grad=False, max_memory=max_memory,
                       max_batch=max_batch)
    parts = [pairs[start : start + plan.prompts] for start in range(0, n_prompts, plan.prompts)]
    shared = shared_ablation(model, graph, pairs, ablation, plan.prompts)
    kept = chunk_ablation(model, graph, parts[0], shared) if len(parts) == 1 else None  # one chunk: computed once

    def mean_values(keep: torch.Tensor) -> torch.Tensor:
        """Mean metric over all prompts of each circuit in ``keep`` (node or edge masks)."""
        total = torch.zeros(keep.shape[0], dtype=torch.float64)
        for part in parts:  # run_masked_chunked runs at most plan.rows sequences per forward
            ablated = kept if kept is not None else chunk_ablation(model, graph, part, shared)
            total += run_masked_chunked(model, graph, part, ablated, keep, metric, plan.rows).double().sum(1).cpu()
        return total / n_prompts

    with torch.no_grad():
        clean = sum(float(metric(model(part.clean.to(model.cfg.device)), part).double().sum()) for part in parts)
        clean /= n_prompts
    empty = float(mean_values(torch.zeros(1, graph.n_forward, graph.n_backward))[0])
    if abs(clean - empty) <= 1e-5 * (abs(clean) + abs(empty)) + 1e-9:
        raise OracleError("clean and fully ablated runs give the same metric: faithfulness is undefined")
    evaluated = 0
    n = len(live)
    bar = tqdm(total=2**n, desc="oracle", disable=not progress, leave=False)
    best, best_set = -float("inf"), ()
    for size in range(n + 1):
        combos = list(itertools.combinations(live, size))
        keep = torch.zeros(len(combos), graph.n_forward)
        keep[:, 0] = 1.0
        for row, subset in enumerate(combos):
            keep[row, [1 + i for i in subset]] = 1.0
        faith = (mean_values(keep) - empty) / (clean - empty)
        i = int(faith.argmax())
        best, best_set = float(faith[i]), combos[i]
        evaluated += len(combos)
        bar.update(len(combos))
        if best >= target:
            break
    bar.close()  # the loop ends at the first size reaching the target, else with the full set
    return OracleResult(tuple(names[i] for i in best_set), best, target, best >= target, evaluated, ablation)
