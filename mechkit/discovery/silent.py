"""Components that write nothing: heads and MLPs whose output weights are all zero.

A pruned head (``W_O`` zero) or MLP (``W_out`` and ``b_out`` zero) writes the same zero into the
residual stream whatever its input, so every edge it sends carries no difference and every edge
it receives changes nothing downstream. Searches and curves use this to skip work exactly.
"""

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from mechkit._types import Edge, Node
from mechkit.discovery.graph import Graph
from mechkit.models._tl import keep_heads


def silent_nodes(model: HookedTransformer, graph: Graph) -> set[int]:
    """Indices (into ``graph.node_names``) of heads and MLPs whose output weights are all zero."""
    silent = set()
    for layer, block in enumerate(model.blocks):
        for head in range(graph.n_heads):
            if not block.attn.W_O[head].any():
                silent.add(graph.head_fwd(layer, head) - 1)
        if graph.has_mlp:
            w_out, b_out = getattr(block.mlp, "W_out", None), getattr(block.mlp, "b_out", None)
            if w_out is not None and not w_out.any() and (b_out is None or not b_out.any()):
                silent.add(graph.mlp_fwd(layer) - 1)
    return silent


def inert_edges(model: HookedTransformer, graph: Graph) -> Bool[Tensor, " n_edges"]:
    """Edges from or into a silent component: keeping or ablating them gives the same run."""
    live = torch.ones(len(graph.node_names), dtype=torch.bool)
    live[list(silent_nodes(model, graph))] = False
    return ~graph.node_mask_to_edges(live)


@dataclass(frozen=True)
class Compact:
    """A copy of a model with fewer heads per layer: ``graph`` is its edge graph and
    ``edge_index[i]`` the full graph's index of its edge ``i``."""

    model: HookedTransformer
    graph: Graph
    edge_index: Int[Tensor, " n_edges_small"]


def without_silent_heads(model: HookedTransformer, graph: Graph) -> Compact | None:
    """The model with its silent heads removed, for exact evaluation at a fraction of the cost
    (a circuit run gives every head its own query, key and value input, so it costs about one
    forward per head); None when no layer could drop a head or the model groups its key/value
    heads. Every layer keeps its live heads, padded with silent ones to the widest layer's count;
    edges from or into a dropped head are inert, so runs on the compact graph equal the full one's."""
    if getattr(model.cfg, "n_key_value_heads", None) not in (None, model.cfg.n_heads):
        return None
    silent = silent_nodes(model, graph)
    live = [[h for h in range(graph.n_heads) if graph.head_fwd(layer, h) - 1 not in silent]
            for layer in range(graph.n_layers)]
    width = max(1, max(len(heads) for heads in live))
    if width == graph.n_heads:
        return None
    heads = [kept + [h for h in range(graph.n_heads) if h not in kept][: width - len(kept)] for kept in live]
    small = keep_heads(model, heads)
    small_graph = Graph.from_model(small)

    def full_name(node: str) -> str:
        n = Node.parse(node)
        return f"L{n.layer}H{heads[n.layer][n.head]}" if n.kind == "head" else node

    index = [graph.edge_position(Edge(full_name(e.src), full_name(e.dst), e.qkv).name)
             for e in map(Edge.parse, small_graph.edge_names)]
    return Compact(small, small_graph, torch.tensor(index))
