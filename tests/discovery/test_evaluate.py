"""Faithfulness, bootstrap intervals, batched curves and MIB's CPR/CMD."""

import dataclasses

import pytest
import torch

from mechkit.discovery import attribute, cpr_cmd, evaluate, faithfulness_curve, robustness
from mechkit.discovery.evaluate import MIB_FRACTIONS, EvaluationError, curve_masks, run_edge_masks
from mechkit.discovery.graph import Graph, GraphError
from tests.conftest import tiny_hooked


def test_cpr_cmd_on_known_curves():
    x = list(MIB_FRACTIONS)
    assert cpr_cmd(x, [1.0] * len(x)) == pytest.approx((0.999, 0.0))
    assert cpr_cmd(x, [0.0] * len(x)) == pytest.approx((0.0, 0.999))
    # f = x: trapezoids are exact for a linear curve, area = (1 - 0.001^2) / 2
    assert cpr_cmd(x, x) == pytest.approx(((1 - 0.001**2) / 2, 0.999 - (1 - 0.001**2) / 2))
    # overshooting counts against CMD: |1 - f|
    assert cpr_cmd([0, 1], [1.5, 1.5]) == pytest.approx((1.5, 0.5))
    assert cpr_cmd([0, 0.5, 1], [0, 1, 1]) == pytest.approx((0.75, 0.25))
    with pytest.raises(EvaluationError):
        cpr_cmd([0, 0], [1, 1])


def test_full_and_empty_circuits(model, pairs):
    scores = attribute(model, pairs, "eap")
    full = scores.circuit(torch.ones(scores.graph.n_edges, dtype=torch.bool), {"rule": "all"})
    empty = scores.circuit(torch.zeros(scores.graph.n_edges, dtype=torch.bool), {"rule": "none"})
    for ablation in ("resample", "mean", "zero"):
        assert evaluate(model, pairs, full, ablation).value == pytest.approx(1.0, abs=1e-4)
        assert evaluate(model, pairs, empty, ablation).value == pytest.approx(0.0, abs=1e-4)


def test_evaluate_depends_only_on_edge_names_and_mask(model, pairs):
    scores = attribute(model, pairs, "eap-ig")
    circuit = scores.top_edges(15)
    got = evaluate(model, pairs, circuit)
    order = torch.randperm(len(circuit.edge_names), generator=torch.Generator().manual_seed(0))
    shuffled = dataclasses.replace(
        circuit,
        edge_names=tuple(circuit.edge_names[i] for i in order.tolist()),
        edge_scores=torch.zeros(len(order)),
        in_circuit=circuit.in_circuit[order],
        hyperparameters={},
        node_scores={},
    )
    again = evaluate(model, pairs, shuffled)
    assert again.value == pytest.approx(got.value, abs=1e-6)
    assert got.ci_low <= got.value <= got.ci_high and got.n_prompts == len(pairs)
    assert got.ablation == "resample"
    with pytest.raises(GraphError, match="different model"):
        evaluate(tiny_hooked(attn_only=True), pairs, circuit)


def test_single_edge_ablation_agrees_with_exact_scores(model, pairs):
    """Two routes to one number: exact edge scores vs evaluate() of the graph minus that edge."""
    scores = attribute(model, pairs, "exact")
    graph = scores.graph
    i = int(scores.scores.abs().argmax())
    mask = torch.ones(graph.n_edges, dtype=torch.bool)
    mask[i] = False
    run = run_edge_masks(model, graph, pairs, mask[None])
    assert float(run.circuits[0].mean() - run.clean.mean()) == pytest.approx(float(scores.scores[i]), abs=1e-5)


def test_curve_batched_equals_one_by_one(model, pairs):
    scores = attribute(model, pairs, "eap-ig")
    fractions = (0.05, 0.2, 0.5, 1.0)
    curve = faithfulness_curve(model, pairs, scores, fractions, max_batch=1000)
    masks = curve_masks(scores, fractions)
    for f, m, value, n, lo, hi in zip(fractions, masks, curve.faithfulness, curve.n_edges, curve.ci_low, curve.ci_high):
        one = evaluate(model, pairs, scores.circuit(m, {"rule": "top-n"}))
        assert value == pytest.approx(one.value, abs=1e-5)
        # the curve's interval at each budget is that circuit's own bootstrap interval
        assert (lo, hi) == pytest.approx((one.ci_low, one.ci_high), abs=1e-5)
        assert n == int(m.sum()) <= int(f * scores.graph.n_edges)
    assert curve.faithfulness[-1] == pytest.approx(1.0, abs=1e-4)
    assert (curve.cpr, curve.cmd) == pytest.approx(cpr_cmd(fractions, curve.faithfulness))
    greedy = faithfulness_curve(model, pairs, scores, fractions, rule="greedy")
    assert greedy.rule == "greedy" and greedy.faithfulness[-1] == pytest.approx(1.0, abs=1e-4)


def test_robustness_reports_each_ablation(model, pairs):
    circuit = attribute(model, pairs, "eap").top_edges(20)
    out = robustness(model, pairs, circuit, n_boot=200)
    assert [f.ablation for f in out] == ["resample", "mean", "zero"]
    assert len({round(f.value, 6) for f in out}) == 3
    for f in out:
        assert f.ci_low <= f.ci_high


def test_undefined_faithfulness_raises(model, pairs):
    same = dataclasses.replace(pairs, corrupted=pairs.clean)
    circuit = attribute(model, pairs, "eap").top_edges(5)
    with pytest.raises(EvaluationError, match="undefined"):
        evaluate(model, same, circuit)


def test_bootstrap_interval_narrows_with_more_prompts():
    from tests.discovery.conftest import random_pairs

    model = tiny_hooked()
    small, big = random_pairs(8, seed=3), random_pairs(64, seed=3)
    graph = Graph.from_model(model)
    mask = torch.zeros(graph.n_edges, dtype=torch.bool)
    mask[: graph.n_edges // 2] = True
    width = []
    for p in (small, big):
        run = run_edge_masks(model, graph, p, mask[None])
        low, high = run.bootstrap(0, 500)
        width.append(high - low)
    assert width[1] < width[0]


def test_edges_of_silent_components_do_not_count(model, pairs, monkeypatch):
    import importlib

    from mechkit.discovery.silent import inert_edges

    evaluate_module = importlib.import_module("mechkit.discovery.evaluate")

    with torch.no_grad():  # prune one head and one MLP
        model.blocks[0].attn.W_O[1] = 0.0
        model.blocks[1].mlp.W_out.zero_()
        model.blocks[1].mlp.b_out.zero_()
    graph = Graph.from_model(model)
    inert = inert_edges(model, graph)
    names = [n for n, i in zip(graph.edge_names, inert.tolist()) if i]
    assert "L0H1->L1H0<q>" in names and "embed->L0H1<v>" in names and "L0H0->M1" in names and "M1->logits" in names
    assert "L0H0->L1H0<q>" not in names and "embed->logits" not in names
    g = torch.Generator().manual_seed(0)
    live = torch.rand(3, graph.n_edges, generator=g) < 0.5
    flipped = live ^ (inert & (torch.rand(3, graph.n_edges, generator=g) < 0.5))  # differ only on inert edges
    every_live = (~inert)[None]
    calls = []
    real = evaluate_module.run_masked_chunked
    monkeypatch.setattr(evaluate_module, "run_masked_chunked", lambda *a, **k: calls.append(a[4].shape[0]) or real(*a, **k))
    for ablation in ("resample", "zero"):
        calls.clear()
        run = run_edge_masks(model, graph, pairs, torch.cat([live, flipped, every_live]), ablation)
        assert torch.allclose(run.circuits[:3], run.circuits[3:6], atol=1e-6)
        assert torch.equal(run.circuits[6], run.clean)  # every live edge: the clean run, not a forward
        assert sum(calls) == 3 + (ablation != "resample")  # three distinct circuits (+ the empty one)
        # and the canonical shortcut agrees with running the masks as given
        monkeypatch.setattr(evaluate_module, "inert_edges", lambda m, gr: torch.zeros(gr.n_edges, dtype=torch.bool))
        plain = run_edge_masks(model, graph, pairs, torch.cat([live, flipped, every_live]), ablation)
        monkeypatch.setattr(evaluate_module, "inert_edges", inert_edges)
        assert torch.allclose(run.circuits, plain.circuits, atol=1e-5)


def test_circuit_runs_drop_silent_heads_exactly(pairs, monkeypatch):
    """Circuit runs use a copy without the silent heads (fewer per-head inputs): same values as
    the full model under every ablation, for arbitrary masks, and nothing dropped without silence."""
    import importlib

    from mechkit.discovery.silent import without_silent_heads

    evaluate_module = importlib.import_module("mechkit.discovery.evaluate")
    model = tiny_hooked(seed=1, n_heads=4)
    graph = Graph.from_model(model)
    assert without_silent_heads(model, graph) is None  # every head live: nothing to drop
    with torch.no_grad():  # layer 0 keeps heads 1 and 3, layer 1 keeps head 2
        for layer, head in ((0, 0), (0, 2), (1, 0), (1, 1), (1, 3)):
            model.blocks[layer].attn.W_O[head] = 0.0
    compact = without_silent_heads(model, graph)
    assert compact.model.cfg.n_heads == 2 and model.cfg.n_heads == 4
    names = dict(zip(compact.graph.edge_names, (graph.edge_names[i] for i in compact.edge_index)))
    assert names["embed->L0H0<q>"] == "embed->L0H1<q>" and names["L0H1->L1H0<k>"] == "L0H3->L1H2<k>"
    assert names["L0H0->M0"] == "L0H1->M0" and names["M1->logits"] == "M1->logits"
    with torch.no_grad():
        assert torch.allclose(compact.model(pairs.clean), model(pairs.clean), atol=1e-5)
    masks = torch.rand(5, graph.n_edges, generator=torch.Generator().manual_seed(0)) < 0.5
    for ablation in ("resample", "mean", "zero"):
        fast = run_edge_masks(model, graph, pairs, masks, ablation)
        monkeypatch.setattr(evaluate_module, "without_silent_heads", lambda m, g: None)
        full = run_edge_masks(model, graph, pairs, masks, ablation)
        monkeypatch.setattr(evaluate_module, "without_silent_heads", without_silent_heads)
        assert torch.allclose(fast.circuits, full.circuits, atol=1e-5), ablation
        assert torch.allclose(fast.clean, full.clean, atol=1e-5)
