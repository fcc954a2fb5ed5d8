"""Circuits for artifact tests: full EAP-IG-style graphs with seeded random scores."""

import json
from pathlib import Path

import torch

from mechkit._types import Circuit, Faithfulness

FP = "sha256:" + "ab" * 32


def graph_edges(n_layers: int, n_heads: int) -> list[str]:
    """Every edge of a sequential-block transformer graph, in EAP-IG's order."""
    resid, edges = ["embed"], []
    for layer in range(n_layers):
        heads = [f"L{layer}H{h}" for h in range(n_heads)]
        for src in resid:
            edges += [f"{src}->{h}<{q}>" for h in heads for q in "qkv"]
        resid += heads
        edges += [f"{src}->M{layer}" for src in resid]
        resid.append(f"M{layer}")
    edges += [f"{src}->logits" for src in resid]
    return edges


def make_circuit(n_layers=2, n_heads=2, n_keep=5, seed=0, **overrides) -> Circuit:
    names = graph_edges(n_layers, n_heads)
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(len(names), generator=g)
    keep = torch.zeros(len(names), dtype=torch.bool)
    keep[scores.abs().topk(n_keep).indices] = True
    kw = dict(
        model_spec="organism:tiny",
        model_fingerprint=FP,
        task={"name": "induction", "params": {"length": 6}, "seed": 0, "n": 16, "split": "test"},
        method="eap-ig",
        hyperparameters={"steps": 5, "ablation": "resample"},
        edge_names=tuple(names),
        edge_scores=scores,
        in_circuit=keep,
        selection={"rule": "top-n", "n": n_keep},
        node_scores={"L0H0": 0.25},
        faithfulness=(Faithfulness("resample", 0.875, 0.8, 0.95, 16),),
        created="2026-01-02T03:04:05+00:00",
        mechkit_version="0.1.0",
    )
    kw.update(overrides)
    return Circuit(**kw)


def assert_same(a: Circuit, b: Circuit) -> None:
    for f in ("model_spec", "model_fingerprint", "task", "method", "hyperparameters", "edge_names",
              "selection", "node_scores", "faithfulness", "created", "mechkit_version"):
        assert getattr(a, f) == getattr(b, f), f
    assert a.edge_scores.dtype == b.edge_scores.dtype == torch.float32
    assert torch.equal(a.edge_scores, b.edge_scores)
    assert torch.equal(a.in_circuit.bool(), b.in_circuit.bool())


def sidecar_of(path: Path) -> Path:
    """The sidecar file an artifact names (``edges.sidecar.file``)."""
    return path.parent / json.loads(path.read_text())["edges"]["sidecar"]["file"]
