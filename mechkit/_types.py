"""mechkit's vocabulary: prompt pairs, graph node/edge names, circuits.

Canonical string forms (parsed once, here; callers never regex-split names):

- nodes: ``embed`` (token + position embeddings: what enters the residual stream),
  ``L3H7`` (attention head), ``M3`` (MLP), ``logits``; SAE features ``F:<hook>:<index>``.
- edges: ``SENDER->RECEIVER<INPUT>``, INPUT one of ``q k v`` for heads, omitted for MLPs and
  logits: ``L0H0->L3H7<q>``, ``embed->M0``, ``M1->logits``.

Shapes: ``batch`` prompts, ``pos`` token positions.
"""

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from mechkit.errors import HookNameError, ShapeError

_NODE = re.compile(r"embed|logits|L(\d+)H(\d+)|M(\d+)|F:([\w.]+):(\d+)")
_EDGE = re.compile(r"(?P<src>[^<>-]+(?::\d+)?)->(?P<dst>[^<>]+?)(?:<(?P<qkv>[qkv])>)?")


@dataclass(frozen=True, order=True)
class Node:
    """A graph node. ``kind`` is one of embed, head, mlp, logits, feature."""

    name: str
    kind: str
    layer: int | None = None
    head: int | None = None

    @staticmethod
    def parse(name: str) -> "Node":
        m = _NODE.fullmatch(name)
        if not m:
            raise HookNameError(
                f"bad node name {name!r}: use embed, logits, L<layer>H<head>, M<layer> or F:<hook>:<index>"
            )
        if name == "embed":
            return Node(name, "embed", layer=-1)
        if name == "logits":
            return Node(name, "logits", layer=None)
        if m.group(1) is not None:
            return Node(name, "head", int(m.group(1)), int(m.group(2)))
        if m.group(3) is not None:
            return Node(name, "mlp", int(m.group(3)))
        return Node(name, "feature", head=int(m.group(5)))


@dataclass(frozen=True, order=True)
class Edge:
    """A sender's output reaching a receiver's input (``qkv`` for head receivers)."""

    src: str
    dst: str
    qkv: str | None = None

    @property
    def name(self) -> str:
        return f"{self.src}->{self.dst}" + (f"<{self.qkv}>" if self.qkv else "")

    @staticmethod
    def parse(name: str) -> "Edge":
        m = _EDGE.fullmatch(name)
        if not m:
            raise HookNameError(f"bad edge name {name!r}: use SENDER->RECEIVER or SENDER->L<l>H<h><q|k|v>")
        src, dst = Node.parse(m["src"]), Node.parse(m["dst"])
        if (dst.kind == "head") != (m["qkv"] is not None):
            raise HookNameError(f"bad edge name {name!r}: head receivers need <q>, <k> or <v>; others take none")
        if src.kind == "logits" or dst.kind == "embed":
            raise HookNameError(f"bad edge name {name!r}: logits send nothing and embed receives nothing")
        return Edge(src.name, dst.name, m["qkv"])


@dataclass(frozen=True)
class PromptPairs:
    """A batch of clean/corrupted prompt pairs with their answers.

    ===============  ==============  ===============================================
    field            shape           meaning
    ===============  ==============  ===============================================
    clean            [batch, pos]    token ids of the clean prompts
    corrupted        [batch, pos]    same length as clean, row by row
    answer           [batch]         correct answer token on the clean prompt
    wrong            [batch]         the answer on the corrupted prompt
    answer_pos       [batch]         position whose next-token logits are scored
    ===============  ==============  ===============================================

    Rows may be right-padded (shorter prompts); ``answer_pos`` then points at each row's
    last real token, and causal attention keeps padding from affecting it.
    """

    clean: Int[Tensor, "batch pos"]
    corrupted: Int[Tensor, "batch pos"]
    answer: Int[Tensor, " batch"]
    wrong: Int[Tensor, " batch"]
    answer_pos: Int[Tensor, " batch"]
    task: dict[str, Any] = field(default_factory=dict)  # name, generator params, seed, n

    def __post_init__(self) -> None:
        if self.clean.shape != self.corrupted.shape:
            raise ShapeError(
                f"clean {tuple(self.clean.shape)} and corrupted {tuple(self.corrupted.shape)} prompts differ in "
                "shape: pairs must have the same batch size and token length"
            )
        n = self.clean.shape[0]
        for name in ("answer", "wrong", "answer_pos"):
            t = getattr(self, name)
            if t.shape != (n,):
                raise ShapeError(f"{name} has shape {tuple(t.shape)}, expected ({n},): one entry per prompt pair")
        if n and (self.answer_pos.min() < 0 or self.answer_pos.max() >= self.clean.shape[1]):
            raise ShapeError(f"answer_pos out of range 0..{self.clean.shape[1] - 1}")

    def __len__(self) -> int:
        return self.clean.shape[0]

    def to(self, device: str | torch.device) -> "PromptPairs":
        return PromptPairs(
            *(getattr(self, f).to(device) for f in ("clean", "corrupted", "answer", "wrong", "answer_pos")),
            task=self.task,
        )

    def __getitem__(self, index: slice | Tensor) -> "PromptPairs":
        return PromptPairs(
            *(getattr(self, f)[index] for f in ("clean", "corrupted", "answer", "wrong", "answer_pos")),
            task=self.task,
        )


@dataclass(frozen=True)
class Faithfulness:
    """A measured normalised faithfulness, (circuit - corrupted) / (clean - corrupted)."""

    ablation: str  # "resample" | "mean" | "zero"
    value: float
    ci_low: float | None = None
    ci_high: float | None = None
    n_prompts: int | None = None


@dataclass(frozen=True)
class Circuit:
    """A discovered circuit: the graph's edges with scores, which of them are in the circuit,
    and everything needed to re-check it (model spec + fingerprint, task spec, method).

    ==============  ============  ==================================================
    field           shape         meaning
    ==============  ============  ==================================================
    edge_names      [n_edges]     every edge of the graph (canonical names)
    edge_scores     [n_edges]     attribution score per edge (float32)
    in_circuit      [n_edges]     bool mask of the selected edges
    node_scores     {name: x}     optional node-level scores
    ==============  ============  ==================================================

    Feature circuits (SAE features as nodes) use ``F:<hook>:<index>`` node names.
    """

    model_spec: str
    model_fingerprint: str
    task: dict[str, Any]  # name, params (generator parameters), seed, n (number of prompts), split
    method: str  # e.g. "eap-ig", "eap", "exact", "acdc", "oracle"
    hyperparameters: dict[str, Any]
    edge_names: tuple[str, ...]
    edge_scores: Tensor
    in_circuit: Tensor
    selection: dict[str, Any] = field(default_factory=dict)  # e.g. {"rule": "top-n", "n": 40}
    node_scores: dict[str, float] = field(default_factory=dict)
    faithfulness: tuple[Faithfulness, ...] = ()
    created: str = ""  # ISO 8601, UTC
    mechkit_version: str = ""

    def __post_init__(self) -> None:
        n = len(self.edge_names)
        if self.edge_scores.shape != (n,) or self.in_circuit.shape != (n,):
            raise ShapeError(
                f"edge_scores {tuple(self.edge_scores.shape)} and in_circuit {tuple(self.in_circuit.shape)} "
                f"must both have shape ({n},), one entry per edge name"
            )

    @property
    def edges(self) -> list[Edge]:
        """The in-circuit edges."""
        return [Edge.parse(e) for e, keep in zip(self.edge_names, self.in_circuit.tolist()) if keep]

    @property
    def nodes(self) -> list[str]:
        """Nodes touched by an in-circuit edge (plus scored nodes when there are no edges)."""
        names = {n for e in self.edges for n in (e.src, e.dst)}
        if not self.edge_names:
            names = set(self.node_scores)
        return sorted(names, key=_node_order)

    def save(self, path: "str | os.PathLike", *, sidecar: bool | None = None) -> "Path":
        """Write this circuit as a ``mechkit.circuit/1`` artifact (see :mod:`mechkit.artifacts`)."""
        from mechkit.artifacts import save_circuit

        return save_circuit(self, path, sidecar=sidecar)

    def _repr_html_(self) -> str:
        from mechkit.viewer import circuit_html

        return circuit_html(self, full_page=False)


def _node_order(name: str) -> tuple:
    node = Node.parse(name)
    layer = {"embed": -1, "logits": 10**6}.get(node.kind, node.layer if node.layer is not None else 0)
    return (layer, node.kind != "head", node.head or 0, name)
