"""Selecting edges from scores: top-n, threshold, greedy path-connected; pruning dangling nodes.

Every function takes and returns [.., n_edges] boolean masks in the graph's edge order and
works on a stack of masks at once (a leading circuit axis), so a whole faithfulness curve is
selected in one call.

>>> mask = topn_mask(scores, 40)                        # doctest: +SKIP
>>> mask = prune_dangling(graph, mask)                  # doctest: +SKIP
"""

import heapq

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from mechkit.discovery.graph import Graph
from mechkit.errors import MechkitError


class SelectionError(MechkitError, ValueError):
    """An edge budget or selection rule that cannot be applied."""


def parse_budget(edges: int | float | str, n_edges: int) -> int:
    """An edge budget as a count: an int, ``"5%"``, or a float fraction in (0, 1]."""
    if isinstance(edges, str):
        text = edges.strip()
        try:
            value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
        except ValueError:
            raise SelectionError(f"bad edge budget {edges!r}: use a count like 40 or a percentage like 5%") from None
        if not text.endswith("%") and value == int(value):
            return parse_budget(int(value), n_edges)
        return parse_budget(value, n_edges)
    if isinstance(edges, bool) or not isinstance(edges, (int, float)):
        raise SelectionError(f"bad edge budget {edges!r}: use a count like 40 or a percentage like 5%")
    if isinstance(edges, float):
        if not 0 <= edges <= 1:
            raise SelectionError(f"edge fraction {edges} is outside [0, 1]: pass a count as an int, or '5%'")
        return int(edges * n_edges)
    if edges < 0:
        raise SelectionError(f"edge budget {edges} is negative")
    return min(edges, n_edges)


def _key(scores: Tensor, absolute: bool) -> Tensor:
    return scores.abs() if absolute else scores


def nonzero_count(scores: Float[Tensor, " n_edges"]) -> int:
    """How many edges have a score other than zero (and not NaN): the most any budget selects."""
    s = scores.detach().cpu()
    return int(((s != 0) & ~s.isnan()).sum())


def topn_mask(scores: Float[Tensor, " n_edges"], n: int, absolute: bool = True) -> Bool[Tensor, " n_edges"]:
    """The ``n`` highest-scoring edges (by |score| when ``absolute``); ties broken by edge order.

    Edges that score exactly zero (or NaN) are never selected: a budget larger than the number
    of non-zero edges (``nonzero_count``) gives a smaller circuit instead of one padded with
    edges the method found no effect for."""
    mask = torch.zeros(scores.shape[-1], dtype=torch.bool)
    if n > 0:
        s = scores.detach().cpu()
        key = _key(s, absolute).nan_to_num(nan=0.0)
        order = torch.sort(key, descending=True, stable=True).indices
        order = order[(s[order] != 0) & ~s[order].isnan()]
        mask[order[:n]] = True
    return mask


def topn_masks(scores: Float[Tensor, " n_edges"], counts: list[int], absolute: bool = True) -> Bool[Tensor, "c n_edges"]:
    """One top-n mask per count, stacked."""
    return torch.stack([topn_mask(scores, n, absolute) for n in counts])


def threshold_mask(scores: Float[Tensor, " n_edges"], threshold: float, absolute: bool = True) -> Bool[Tensor, " n_edges"]:
    """Edges whose score (|score| when ``absolute``) is at least ``threshold``."""
    return (_key(scores, absolute) >= threshold).cpu()


def greedy_mask(graph: Graph, scores: Float[Tensor, " n_edges"], n: int, absolute: bool = True) -> Bool[Tensor, " n_edges"]:
    """Grow a circuit backwards from the logits: repeatedly add the best-scoring edge whose
    receiver's node is already in the circuit, until ``n`` edges (EAP-IG's ``apply_greedy``).
    Every chosen edge lies on a path to the logits. Zero-score (and NaN) edges are never chosen."""
    s = scores.detach().cpu()
    usable = ((s != 0) & ~s.isnan()).tolist()
    key = _key(s, absolute).nan_to_num(nan=0.0).tolist()
    src = graph.edge_index[:, 0].tolist()
    dst_node = graph.receiver_fwd[graph.edge_index[:, 1]].tolist()  # -1 = logits
    into: dict[int, list[int]] = {}
    for e, node in enumerate(dst_node):
        into.setdefault(node, []).append(e)
    mask = torch.zeros(graph.n_edges, dtype=torch.bool)
    heap = [(-key[e], e) for e in into[-1]]
    heapq.heapify(heap)
    in_circuit_nodes = {-1}
    chosen = 0
    while heap and chosen < n:
        _, e = heapq.heappop(heap)
        if not usable[e]:
            continue
        mask[e] = True
        chosen += 1
        s = src[e]
        if s not in in_circuit_nodes:
            in_circuit_nodes.add(s)
            for e2 in into.get(s, []):
                heapq.heappush(heap, (-key[e2], e2))
    return mask


def prune_dangling(graph: Graph, mask: Bool[Tensor, "*c n_edges"]) -> Bool[Tensor, "*c n_edges"]:
    """Drop edges not on an embed -> logits path: an edge stays only if its sender is reachable
    from ``embed`` and its receiver's node reaches ``logits``, through kept edges."""
    dense = graph.to_matrix(mask.to(torch.bool).cpu())  # [*c, n_fwd, n_bwd]
    lead = dense.shape[:-2]
    recv = graph.receiver_fwd  # [n_bwd]
    # forward reachability, in forward (topological) order
    reached = torch.zeros(*lead, graph.n_forward, dtype=torch.bool)
    reached[..., 0] = True
    for node in range(1, graph.n_forward):
        cols = recv == node
        into = dense[..., :, cols].any(-1)  # [*c, n_fwd]: senders with a kept edge into node
        reached[..., node] = (into & reached).any(-1)
    # backward liveness, in reverse order; logits is alive
    alive = torch.zeros(*lead, graph.n_forward, dtype=torch.bool)
    recv_alive = lambda: torch.where(  # noqa: E731
        recv >= 0, alive[..., recv.clamp(min=0)], torch.ones_like(alive[..., :1])
    )
    for node in range(graph.n_forward - 1, -1, -1):
        alive[..., node] = (dense[..., node, :] & recv_alive()).any(-1)
    keep = dense & reached.unsqueeze(-1) & recv_alive().unsqueeze(-2)
    return graph.from_matrix(keep)
