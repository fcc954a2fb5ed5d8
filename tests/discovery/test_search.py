"""ACDC and the exhaustive node-set oracle."""

import itertools

import pytest
import torch

from mechkit.discovery import oracle
from mechkit.discovery.acdc import ACDCError, acdc
from mechkit.discovery.evaluate import run_edge_masks
from mechkit.discovery.forward import ablated_outputs
from mechkit.discovery.graph import Graph
from mechkit.discovery.oracle import OracleError
from tests.conftest import tiny_hooked
from tests.discovery.conftest import random_pairs


def test_oracle_finds_the_smallest_set_and_matches_evaluate(model, pairs):
    result = oracle(model, pairs, target=0.8)
    graph = Graph.from_model(model)

    def node_faith(nodes):
        keep = torch.tensor([n in nodes for n in graph.node_names])
        run = run_edge_masks(model, graph, pairs, graph.node_mask_to_edges(keep)[None])
        return float(run.faithfulness()[0])

    assert result.reached and result.faithfulness >= 0.8
    assert node_faith(result.nodes) == pytest.approx(result.faithfulness, abs=1e-4)
    for size in range(len(result.nodes)):  # brute force through evaluate(): nothing smaller works
        for subset in itertools.combinations(graph.node_names, size):
            assert node_faith(subset) < 0.8
    assert result.n_evaluated == sum(
        len(list(itertools.combinations(range(6), k))) for k in range(len(result.nodes) + 1)
    )


def test_oracle_refuses_large_models(pairs):
    with pytest.raises(OracleError, match="max_nodes"):
        oracle(tiny_hooked(n_heads=8, d_head=2), pairs, max_nodes=16)


def test_acdc_removes_a_dead_head_and_respects_tau():
    model = tiny_hooked(seed=2)
    with torch.no_grad():
        model.blocks[0].attn.W_O[1] = 0.0
    pairs = random_pairs(seed=2)
    graph = Graph.from_model(model)
    ablated = ablated_outputs(model, graph, pairs)
    scores, mask = acdc(model, graph, pairs, ablated, tau=1e-7)
    kept = {n for n, k in zip(graph.edge_names, mask.tolist()) if k}
    assert not any(n.startswith("L0H1->") for n in kept)
    assert len(kept) > 0
    # with an infinite threshold everything goes; with tau=0 nothing that matters goes
    _, none = acdc(model, graph, pairs, ablated, tau=1e9)
    assert none.sum() == 0
    _, strict = acdc(model, graph, pairs, ablated, tau=0.0)
    run = run_edge_masks(model, graph, pairs, strict[None])
    assert float(run.faithfulness()[0]) == pytest.approx(1.0, abs=0.05)
    with pytest.raises(ACDCError):
        acdc(model, graph, pairs, ablated, objective="loss")


def test_acdc_metric_objective_keeps_faithfulness(model, pairs):
    graph = Graph.from_model(model)
    ablated = ablated_outputs(model, graph, pairs)
    scores, mask = acdc(model, graph, pairs, ablated, tau=0.05, objective="metric")
    run = run_edge_masks(model, graph, pairs, mask[None])
    clean, circ = float(run.clean.mean()), float(run.circuits[0].mean())
    # each accepted removal raised |metric - clean| by < tau, and it starts at 0
    assert abs(circ - clean) < 0.05 * max(1, int((~mask).sum()))
    assert mask.sum() < graph.n_edges
    assert scores.abs().sum() > 0
