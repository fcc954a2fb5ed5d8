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
from mechkit.discovery.forward import Metric, ablated_outputs, run_masked_chunked
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
) -> OracleResult:
    """Search node subsets by increasing size (see the module docstring)."""
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
    ablated = ablated_outputs(model, graph, pairs, ablation)
    with torch.no_grad():
        clean = float(metric(model(pairs.clean.to(model.cfg.device)), pairs).float().mean())
    empty_edges = torch.zeros(1, graph.n_forward, graph.n_backward)
    empty = float(run_masked_chunked(model, graph, pairs, ablated, empty_edges, metric, max_batch).mean())
    if abs(clean - empty) <= 1e-5 * (abs(clean) + abs(empty)) + 1e-9:
        raise OracleError("clean and fully ablated runs give the same metric: faithfulness is undefined")
    evaluated = 0
    n = len(live)
    chunk = max(1, max_batch // len(pairs))
    bar = tqdm(total=2**n, desc="oracle", disable=not progress, leave=False)
    best, best_set = -float("inf"), ()
    for size in range(n + 1):
        best, best_set = -float("inf"), ()
        combos = itertools.combinations(live, size)
        while batch := list(itertools.islice(combos, chunk)):
            keep = torch.zeros(len(batch), graph.n_forward)
            keep[:, 0] = 1.0
            for row, subset in enumerate(batch):
                keep[row, [1 + i for i in subset]] = 1.0
            values = run_masked_chunked(model, graph, pairs, ablated, keep, metric, max_batch).mean(1)
            faith = (values - empty) / (clean - empty)
            i = int(faith.argmax())
            if float(faith[i]) > best:
                best, best_set = float(faith[i]), batch[i]
            evaluated += len(batch)
            bar.update(len(batch))
        if best >= target:
            break
    bar.close()  # the loop ends at the first size reaching the target, else with the full set
    return OracleResult(tuple(names[i] for i in best_set), best, target, best >= target, evaluated, ablation)
