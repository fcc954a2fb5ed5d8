"""Components that write nothing: heads and MLPs whose output weights are all zero.

A pruned head (``W_O`` zero) or MLP (``W_out`` and ``b_out`` zero) writes the same zero into the
residual stream whatever its input, so every edge it sends carries no difference and every edge
it receives changes nothing downstream. Searches and curves use this to skip work exactly.
"""

import torch
from jaxtyping import Bool
from torch import Tensor
from transformer_lens import HookedTransformer

from mechkit.discovery.graph import Graph


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
