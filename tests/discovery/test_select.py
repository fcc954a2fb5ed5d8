"""Edge budgets, top-n / threshold / greedy selection, and dangling-node pruning."""

import pytest
import torch

from mechkit.discovery.graph import Graph
from mechkit.discovery.scores import EdgeScores
from mechkit.discovery.select import (
    SelectionError,
    greedy_mask,
    parse_budget,
    prune_dangling,
    threshold_mask,
    topn_mask,
)
from tests.conftest import tiny_hooked


@pytest.fixture
def graph():
    return Graph.from_model(tiny_hooked())


def mask_of(graph, names):
    mask = torch.zeros(graph.n_edges, dtype=torch.bool)
    for n in names:
        mask[graph.edge_position(n)] = True
    return mask


def names_of(graph, mask):
    return {n for n, k in zip(graph.edge_names, mask.tolist()) if k}


def test_parse_budget():
    assert parse_budget("5%", 200) == 10
    assert parse_budget(40, 200) == 40
    assert parse_budget("40", 200) == 40
    assert parse_budget(0.1, 200) == 20
    assert parse_budget(500, 200) == 200
    for bad in ("five", -1, 1.5, True):
        with pytest.raises(SelectionError):
            parse_budget(bad, 200)


def test_topn_and_threshold():
    scores = torch.tensor([0.1, -3.0, 2.0, 0.0, -0.5])
    assert topn_mask(scores, 2).tolist() == [False, True, True, False, False]
    assert topn_mask(scores, 2, absolute=False).tolist() == [True, False, True, False, False]
    assert threshold_mask(scores, 0.5).tolist() == [False, True, True, False, True]
    assert topn_mask(scores, 0).sum() == 0


def test_prune_dangling(graph):
    kept = {"embed->L0H0<v>", "L0H0->logits"}
    no_output = {"embed->L1H0<q>"}  # L1H0 reaches nothing
    no_input = {"L0H1->M1", "M1->logits"}  # L0H1 reads nothing
    chain = {"embed->M0", "M0->L1H1<k>", "L1H1->logits"}
    mask = mask_of(graph, kept | no_output | no_input | chain)
    assert names_of(graph, prune_dangling(graph, mask)) == kept | chain
    stacked = prune_dangling(graph, torch.stack([mask, mask_of(graph, no_output)]))
    assert names_of(graph, stacked[0]) == kept | chain and stacked[1].sum() == 0


def test_prune_keeps_every_edge_of_the_full_graph(graph):
    full = torch.ones(graph.n_edges, dtype=torch.bool)
    assert prune_dangling(graph, full).all()


def test_greedy_selection_is_connected_to_logits(graph):
    torch.manual_seed(0)
    scores = torch.randn(graph.n_edges)
    scores[graph.edge_position("embed->L1H0<q>")] = 100.0  # best edge, but not connected yet
    mask = greedy_mask(graph, scores, 6)
    assert mask.sum() == 6
    chosen = names_of(graph, mask)
    # every chosen edge's receiver node is logits or a node with a chosen outgoing edge
    senders = {n.split("->")[0] for n in chosen}
    for name in chosen:
        dst = name.split("->")[1].split("<")[0]
        assert dst in {"logits"} | senders
    big = greedy_mask(graph, scores, 40)
    assert big[graph.edge_position("embed->L1H0<q>")] or not any(
        n.startswith("L1H0->") for n in names_of(graph, big)
    )


def test_edge_scores_select_rules(graph):
    scores = torch.linspace(-1, 1, graph.n_edges)
    es = EdgeScores(graph, scores, torch.zeros(len(graph.node_names)), "test")
    top = es.top_edges(10, prune=False)
    assert top.in_circuit.sum() == 10 and top.selection == {"rule": "top-n", "absolute": True, "prune_dangling": False, "budget": "10", "n": 10}
    assert es.select("50%", prune=False).in_circuit.sum() == graph.n_edges // 2
    thr = es.select(rule="threshold", threshold=0.9, prune=False)
    assert thr.in_circuit.sum() == int((scores.abs() >= 0.9).sum())
    pruned = es.top_edges(10)
    assert pruned.in_circuit.sum() <= 10 and (pruned.in_circuit <= top.in_circuit).all()
    with pytest.raises(SelectionError, match="threshold"):
        es.select(rule="threshold")
    with pytest.raises(SelectionError, match="unknown selection rule"):
        es.select(10, rule="best")
    assert top.edge_names == graph.edge_names and top.method == "test" and top.created.endswith("+00:00")


def test_top_nodes_circuit(graph):
    node_scores = torch.tensor([0.1, -2.0, 0.0, 1.5, 0.2, 0.3])  # L0H0 L0H1 M0 L1H0 L1H1 M1
    es = EdgeScores(graph, torch.zeros(graph.n_edges), node_scores, "test")
    circuit = es.top_nodes(2)
    assert circuit.selection["nodes"] == ["L0H1", "L1H0"]
    touched = {n for e in circuit.edges for n in (e.src, e.dst)}
    assert touched == {"embed", "L0H1", "L1H0", "logits"}
    assert "L0H1->L1H0<v>" in {e.name for e in circuit.edges}
