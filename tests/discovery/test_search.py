"""ACDC and the exhaustive node-set oracle."""

import copy
import itertools

import pytest
import torch

from mechkit.discovery import oracle
from mechkit.discovery.acdc import ACDCError, acdc
from mechkit.discovery.evaluate import run_edge_masks
from mechkit.discovery.forward import ablated_outputs
from mechkit.discovery.graph import Graph
from mechkit.discovery.oracle import OracleError
from mechkit.discovery.silent import silent_nodes
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


def test_oracle_skips_silent_components_and_stays_exact(model, pairs):
    graph = Graph.from_model(model)
    with torch.no_grad():  # a pruned head: zero output weights
        model.blocks[1].attn.W_O[0] = 0.0
    assert [graph.node_names[i] for i in silent_nodes(model, graph)] == ["L1H0"]
    result = oracle(model, pairs, target=0.8)
    assert "L1H0" not in result.nodes
    # brute force over every node, the silent one included: same smallest size, same best value
    keep = torch.tensor([[n in subset for n in graph.node_names]
                         for k in range(len(graph.node_names) + 1) for subset in itertools.combinations(graph.node_names, k)])
    faith = run_edge_masks(model, graph, pairs, torch.stack([graph.node_mask_to_edges(row) for row in keep])).faithfulness()
    sizes = keep.sum(1)
    smallest = int(sizes[faith >= 0.8].min())
    assert len(result.nodes) == smallest
    assert result.faithfulness == pytest.approx(float(faith[sizes == smallest].max()), abs=1e-4)
    assert result.n_evaluated == sum(len(list(itertools.combinations(range(5), k))) for k in range(smallest + 1))
    # 18 heads and 2 MLPs, four heads silent: 16 live nodes, so exhaustive search is allowed
    big = tiny_hooked(n_heads=9, d_head=2)
    with pytest.raises(OracleError, match="20 heads and MLPs"):
        oracle(big, pairs, target=0.0, max_nodes=16)
    with torch.no_grad():
        for block in big.blocks:
            block.attn.W_O[:2] = 0.0
    assert oracle(big, pairs, target=0.0, max_nodes=16).reached


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
