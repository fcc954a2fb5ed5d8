"""``EdgeScores``: what a scoring method returns, and the step from scores to a ``Circuit``.

>>> scores = attribute(model, pairs, "eap-ig")          # doctest: +SKIP
>>> circuit = scores.top_edges(40)                      # doctest: +SKIP
>>> circuit = scores.select("5%", rule="greedy")        # doctest: +SKIP

Sign convention (all methods): an edge's score estimates ``metric(edge ablated) -
metric(clean)``, so edges the behaviour needs score negative; selection ranks by |score|.
"""

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from mechkit._types import Circuit, Faithfulness
from mechkit.discovery.convergence import Convergence
from mechkit.discovery.graph import Graph
from mechkit.discovery.select import (
    SelectionError,
    greedy_mask,
    parse_budget,
    prune_dangling,
    threshold_mask,
    topn_mask,
)

RULES = ("top-n", "greedy", "threshold")


@dataclass(frozen=True)
class EdgeScores:
    """Edge and node scores of one method on one model and task.

    ===============  ============  =============================================
    field            shape         meaning
    ===============  ============  =============================================
    scores           [n_edges]     per edge, in ``graph.edge_names`` order
    node_scores      [n_nodes]     per head/MLP, in ``graph.node_names`` order
    ===============  ============  =============================================
    """

    graph: Graph
    scores: Float[Tensor, " n_edges"]
    node_scores: Float[Tensor, " n_nodes"]
    method: str
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    model_spec: str = ""
    model_fingerprint: str = ""
    task: dict[str, Any] = field(default_factory=dict)
    convergence: Convergence | None = None  # integrated-gradients methods: their integral's check

    @property
    def edge_names(self) -> tuple[str, ...]:
        return self.graph.edge_names

    @property
    def matrix(self) -> Float[Tensor, "n_fwd n_bwd"]:
        """Scores as a dense [n_fwd, n_bwd] matrix (zero where there is no edge)."""
        return self.graph.to_matrix(self.scores)

    def node_dict(self) -> dict[str, float]:
        return dict(zip(self.graph.node_names, self.node_scores.tolist()))

    def top_edges(self, n: int | str, absolute: bool = True, prune: bool = True) -> Circuit:
        """The ``n`` (or ``"5%"``) highest-|score| edges, dangling ones pruned."""
        return self.select(n, rule="top-n", absolute=absolute, prune=prune)

    def top_nodes(self, k: int, absolute: bool = True) -> Circuit:
        """A node-level circuit: every edge between the ``k`` highest-|node score| heads/MLPs,
        ``embed`` and ``logits``, dangling edges pruned."""
        keys = self.node_scores.abs() if absolute else self.node_scores
        keep = topn_mask(keys, k, absolute=False)
        mask = prune_dangling(self.graph, self.graph.node_mask_to_edges(keep))
        nodes = [n for n, kept in zip(self.graph.node_names, keep.tolist()) if kept]
        return self.circuit(mask, {"rule": "top-nodes", "k": k, "nodes": nodes, "absolute": absolute, "prune_dangling": True})

    def select(
        self,
        edges: int | float | str | None = None,
        rule: str = "top-n",
        threshold: float | None = None,
        absolute: bool = True,
        prune: bool = True,
    ) -> Circuit:
        """A circuit chosen by ``rule``: "top-n" or "greedy" (path-connected) with an ``edges``
        budget, or "threshold" with ``threshold``; then dangling edges pruned."""
        if rule not in RULES:
            raise SelectionError(f"unknown selection rule {rule!r}: use one of {', '.join(RULES)}")
        selection: dict[str, Any] = {"rule": rule, "absolute": absolute, "prune_dangling": prune}
        if rule == "threshold":
            if threshold is None:
                raise SelectionError("the threshold rule needs threshold=<value>")
            mask = threshold_mask(self.scores, threshold, absolute)
            selection["threshold"] = threshold
        else:
            if edges is None:
                raise SelectionError(f"the {rule} rule needs an edge budget, e.g. edges=40 or edges='5%'")
            n = parse_budget(edges, self.graph.n_edges)
            fn = topn_mask if rule == "top-n" else lambda s, k, a: greedy_mask(self.graph, s, k, a)
            mask = fn(self.scores, n, absolute)
            selection.update(budget=str(edges), n=n)
        if prune:
            mask = prune_dangling(self.graph, mask)
        return self.circuit(mask, selection)

    def circuit(
        self,
        in_circuit: Bool[Tensor, " n_edges"],
        selection: dict[str, Any],
        faithfulness: tuple[Faithfulness, ...] = (),
    ) -> Circuit:
        """A ``Circuit`` carrying these scores and the given edge mask."""
        from mechkit import __version__

        return Circuit(
            model_spec=self.model_spec,
            model_fingerprint=self.model_fingerprint,
            task=dict(self.task),
            method=self.method,
            hyperparameters=dict(self.hyperparameters),
            edge_names=self.graph.edge_names,
            edge_scores=self.scores.detach().float().cpu(),
            in_circuit=in_circuit.to(torch.bool).cpu(),
            selection=dict(selection),
            node_scores=self.node_dict(),
            faithfulness=faithfulness,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            mechkit_version=__version__,
        )
