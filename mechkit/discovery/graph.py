"""The edge-level computational graph that circuit discovery scores, selects and evaluates.

>>> graph = Graph.from_model(model)                         # doctest: +SKIP
>>> graph.edge_names[:2]                                    # doctest: +SKIP
('embed->L0H0<q>', 'embed->L0H1<q>')

Senders (the graph's *forward* nodes) write into the residual stream; receivers (its
*backward* nodes) read from it:

==========  ============================================  =====================================
node        sends (output hook)                           receives (input hook)
==========  ============================================  =====================================
embed       ``blocks.0.hook_resid_pre``                   —
L3H7        ``blocks.3.attn.hook_z`` [.., 7, ..] @ W_O[7]  ``blocks.3.hook_{q,k,v}_input`` [.., 7, ..]
M3          ``blocks.3.hook_mlp_out``                     ``blocks.3.hook_mlp_in``
logits      —                                             ``blocks.{n-1}.hook_resid_post``
==========  ============================================  =====================================

An edge joins a sender to a receiver it precedes: any earlier layer, embed to everything, and
the heads of layer ``l`` to ``M<l>`` (not in parallel-attention blocks such as GPT-J/Pythia).
Because senders are listed in forward order, every receiver's senders are a *prefix* of the
sender list (``Graph.prefix``), which keeps the patched forward a single einsum per receiver.

Dense tensors inside: ``real`` is [n_fwd, n_bwd] (True where an edge exists); an edge vector is
[n_edges] in the order of ``edge_names`` (row-major over ``real``). Grouped-query models are
scored with their k/v weights ungrouped, so k/v receivers are per query head, like q.
"""

from dataclasses import dataclass
from functools import cached_property

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from mechkit._types import Edge
from mechkit.errors import HookNameError, MechkitError, did_you_mean

QKV = ("q", "k", "v")


class GraphError(MechkitError, ValueError):
    """A model whose residual stream cannot be split into edges, or a circuit from another graph."""


@dataclass(frozen=True)
class Graph:
    """Index arithmetic and names for one model's edge graph (see the module docstring)."""

    n_layers: int
    n_heads: int
    has_mlp: bool
    parallel: bool  # parallel attention + MLP blocks: M<l> does not read layer l's heads

    @staticmethod
    def from_model(model: HookedTransformer) -> "Graph":
        cfg = model.cfg
        if getattr(cfg, "use_normalization_before_and_after", False) or getattr(
            cfg, "original_architecture", None
        ) in ("Olmo2ForCausalLM", "Olmo3ForCausalLM"):
            raise GraphError(
                "edge graphs need pre-LayerNorm blocks whose head and MLP outputs add straight into "
                "the residual stream; this model normalises block outputs"
            )
        return Graph(cfg.n_layers, cfg.n_heads, not cfg.attn_only, bool(cfg.parallel_attn_mlp))

    # --- sizes and indices -------------------------------------------------------------

    @property
    def _fwd_per_layer(self) -> int:
        return self.n_heads + int(self.has_mlp)

    @property
    def _bwd_per_layer(self) -> int:
        return 3 * self.n_heads + int(self.has_mlp)

    @property
    def n_forward(self) -> int:
        return 1 + self.n_layers * self._fwd_per_layer

    @property
    def n_backward(self) -> int:
        return self.n_layers * self._bwd_per_layer + 1

    def head_fwd(self, layer: int, head: int = 0) -> int:
        return 1 + layer * self._fwd_per_layer + head

    def mlp_fwd(self, layer: int) -> int:
        return 1 + layer * self._fwd_per_layer + self.n_heads

    def qkv_bwd(self, layer: int, qkv: str, head: int = 0) -> int:
        return layer * self._bwd_per_layer + QKV.index(qkv) * self.n_heads + head

    def mlp_bwd(self, layer: int) -> int:
        return layer * self._bwd_per_layer + 3 * self.n_heads

    @property
    def logits_bwd(self) -> int:
        return self.n_backward - 1

    def prefix(self, layer: int | None, kind: str) -> int:
        """How many senders (a prefix of ``forward_names``) reach a receiver of ``kind``
        ("head", "mlp" or "logits") in ``layer``."""
        if kind == "logits":
            return self.n_forward
        start = 1 + layer * self._fwd_per_layer
        return start + (self.n_heads if kind == "mlp" and not self.parallel else 0)

    # --- names -------------------------------------------------------------------------

    @cached_property
    def forward_names(self) -> tuple[str, ...]:
        names = ["embed"]
        for layer in range(self.n_layers):
            names += [f"L{layer}H{h}" for h in range(self.n_heads)]
            if self.has_mlp:
                names.append(f"M{layer}")
        return tuple(names)

    @cached_property
    def backward_names(self) -> tuple[str, ...]:
        names = []
        for layer in range(self.n_layers):
            names += [f"L{layer}H{h}<{x}>" for x in QKV for h in range(self.n_heads)]
            if self.has_mlp:
                names.append(f"M{layer}")
        return tuple(names + ["logits"])

    @cached_property
    def receiver_node(self) -> tuple[str, ...]:
        """The node each receiver belongs to (``L1H0<q>`` -> ``L1H0``), [n_bwd]."""
        return tuple(n.split("<")[0] for n in self.backward_names)

    @cached_property
    def receiver_fwd(self) -> Int[Tensor, " n_bwd"]:
        """Forward index of each receiver's node; -1 for logits."""
        index = {n: i for i, n in enumerate(self.forward_names)}
        return torch.tensor([index.get(n, -1) for n in self.receiver_node])

    @cached_property
    def real(self) -> Bool[Tensor, "n_fwd n_bwd"]:
        real = torch.zeros(self.n_forward, self.n_backward, dtype=torch.bool)
        for layer in range(self.n_layers):
            for x in QKV:
                cols = slice(self.qkv_bwd(layer, x), self.qkv_bwd(layer, x) + self.n_heads)
                real[: self.prefix(layer, "head"), cols] = True
            if self.has_mlp:
                real[: self.prefix(layer, "mlp"), self.mlp_bwd(layer)] = True
        real[:, self.logits_bwd] = True
        return real

    @cached_property
    def edge_index(self) -> Int[Tensor, "n_edges 2"]:
        """(forward, backward) index of each edge, in ``edge_names`` order."""
        return self.real.nonzero()

    @property
    def n_edges(self) -> int:
        return self.edge_index.shape[0]

    @cached_property
    def edge_names(self) -> tuple[str, ...]:
        f, b = self.forward_names, self.backward_names
        return tuple(f"{f[i]}->{b[j]}" for i, j in self.edge_index.tolist())

    @cached_property
    def _edge_position(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.edge_names)}

    @cached_property
    def node_names(self) -> tuple[str, ...]:
        """Heads and MLPs: the nodes node-level methods score and oracles search over."""
        return self.forward_names[1:]

    def edge_position(self, name: str) -> int:
        """Position of an edge name in ``edge_names``; an unknown edge raises."""
        if name in self._edge_position:
            return self._edge_position[name]
        Edge.parse(name)  # a malformed name raises its own message
        raise HookNameError(f"no edge {name!r} in this model's graph; {did_you_mean(name, self.edge_names)}")

    def mask_from_names(self, edge_names: tuple[str, ...], in_circuit: Tensor) -> Bool[Tensor, " n_edges"]:
        """An [n_edges] mask in this graph's order from a circuit's edge names and mask."""
        if len(edge_names) != self.n_edges or set(edge_names) != set(self.edge_names):
            missing = len(set(self.edge_names) - set(edge_names))
            raise GraphError(
                f"the circuit lists {len(edge_names)} edges but this model's graph has {self.n_edges} "
                f"({missing} of them missing from the circuit): it was made for a different model"
            )
        mask = torch.zeros(self.n_edges, dtype=torch.bool)
        order = torch.tensor([self._edge_position[n] for n in edge_names], dtype=torch.long)
        mask[order] = in_circuit.to(torch.bool).cpu()
        return mask

    # --- dense <-> edge vectors --------------------------------------------------------

    def to_matrix(self, edges: Float[Tensor, "*c n_edges"]) -> Float[Tensor, "*c n_fwd n_bwd"]:
        """Scatter edge vectors into dense [.., n_fwd, n_bwd] matrices (zeros off-graph)."""
        out = edges.new_zeros(*edges.shape[:-1], self.n_forward, self.n_backward)
        out[..., self.edge_index[:, 0], self.edge_index[:, 1]] = edges
        return out

    def from_matrix(self, matrix: Float[Tensor, "*c n_fwd n_bwd"]) -> Float[Tensor, "*c n_edges"]:
        return matrix[..., self.edge_index[:, 0], self.edge_index[:, 1]]

    def node_mask_to_edges(self, nodes: Bool[Tensor, "*c n_nodes"]) -> Bool[Tensor, "*c n_edges"]:
        """Edges between kept nodes (embed and logits always kept), for node-level circuits."""
        keep = torch.cat([nodes.new_ones(*nodes.shape[:-1], 1), nodes.to(torch.bool)], dim=-1)  # [*c, n_fwd]
        recv = self.receiver_fwd
        recv_keep = torch.where(recv >= 0, keep[..., recv.clamp(min=0)], torch.ones_like(keep[..., :1]))
        src = keep[..., self.edge_index[:, 0]]
        dst = recv_keep[..., self.edge_index[:, 1]]
        return src & dst
