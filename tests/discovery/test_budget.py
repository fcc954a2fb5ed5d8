"""Scoring and evaluation in prompt chunks that fit a memory budget: the same numbers as one
chunk, and a clear error when one prompt cannot fit."""

import pytest
import torch

from mechkit.discovery import attribute
from mechkit.discovery.budget import _prompt_bytes, _row_bytes, plan_chunks
from mechkit.discovery.evaluate import faithfulness_curve, run_edge_masks
from mechkit.discovery.graph import Graph
from mechkit.memory import MemoryBudgetError, parse_size
from tests.discovery.conftest import random_pairs


def _budget_for(model, pairs, grad: bool, per_chunk: int) -> int:
    """A byte budget under which chunks hold ``per_chunk`` prompts (and rows)."""
    graph = Graph.from_model(model)
    pos = pairs.clean.shape[1]
    return 2 * per_chunk * max(_row_bytes(model, graph, pos, grad), _prompt_bytes(model, graph, pos))


@pytest.mark.parametrize("method", ["eap", "eap-ig", "eap-ig-activations", "exact"])
@pytest.mark.parametrize("ablation", ["resample", "mean"])
def test_chunked_scores_equal_one_chunk(model, method, ablation):
    pairs = random_pairs(batch=7)
    whole = attribute(model, pairs, method, ablation=ablation, max_memory="64GB")
    small = _budget_for(model, pairs, grad=method != "exact", per_chunk=3)
    assert plan_chunks(model, Graph.from_model(model), 7, pairs.clean.shape[1], grad=method != "exact", max_memory=small).prompts == 3
    chunked = attribute(model, pairs, method, ablation=ablation, max_memory=small)
    torch.testing.assert_close(chunked.scores, whole.scores, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(chunked.node_scores, whole.node_scores, rtol=1e-4, atol=1e-5)
    if whole.convergence is not None:
        assert chunked.convergence.total_effect == pytest.approx(whole.convergence.total_effect, rel=1e-5)


@pytest.mark.parametrize("ablation", ["resample", "mean", "zero"])
def test_chunked_curve_equals_one_chunk(model, ablation):
    pairs = random_pairs(batch=7)
    scores = attribute(model, pairs, "eap")
    fractions = (0.01, 0.1, 0.5, 1.0)
    whole = faithfulness_curve(model, pairs, scores, fractions, ablation=ablation, max_memory="64GB")
    chunked = faithfulness_curve(model, pairs, scores, fractions, ablation=ablation,
                                 max_memory=_budget_for(model, pairs, grad=False, per_chunk=2))
    assert chunked.faithfulness == pytest.approx(whole.faithfulness, rel=1e-5, abs=1e-6)


def test_budget_too_small_for_one_prompt_says_what_it_needs(model, pairs):
    with pytest.raises(MemoryBudgetError, match=r"needs about .* but the memory budget is .*raise max_memory"):
        attribute(model, pairs, "eap-ig", max_memory=1000)


def test_use_attn_result_is_off_inside_and_restored(model, pairs):
    seen = []
    model.cfg.use_attn_result = True
    try:
        model.blocks[0].attn.hook_z.add_hook(lambda act, hook: seen.append(model.cfg.use_attn_result))
        with_flag = attribute(model, pairs, "eap-ig")
        model.reset_hooks()
        assert seen and not any(seen)  # never on during mechkit's runs
        assert model.cfg.use_attn_result is True  # the user's setting is back
        model.cfg.use_attn_result = False
        torch.testing.assert_close(attribute(model, pairs, "eap-ig").scores, with_flag.scores)
        run = run_edge_masks(model, Graph.from_model(model), pairs, torch.ones(1, Graph.from_model(model).n_edges, dtype=torch.bool))
        torch.testing.assert_close(run.circuits[0], run.clean)
    finally:
        model.cfg.use_attn_result = False
        model.reset_hooks()


@pytest.mark.parametrize("text, expected", [("6GB", 6 * 10**9), ("512MiB", 512 * 1024**2), ("1048576", 1048576)])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["lots", "-3GB", "0"])
def test_parse_size_refuses_nonsense(text):
    with pytest.raises(MemoryBudgetError):
        parse_size(text)


@pytest.fixture(scope="module")
def chekhov():
    from mechkit import load_model
    from mechkit.organisms import task

    return load_model("organism:chekhov", device="cpu"), task("chekhov").generate(5, seed=0)


@pytest.mark.parametrize("objective, ablation", [("kl", "resample"), ("metric", "mean")])
def test_chunked_acdc_equals_one_chunk(model, objective, ablation):
    from mechkit.discovery import acdc

    pairs = random_pairs(batch=3)
    graph = Graph.from_model(model)
    small = _budget_for(model, pairs, grad=False, per_chunk=2)  # chunks of 2 and 1
    assert plan_chunks(model, graph, 3, pairs.clean.shape[1], grad=False, max_memory=small).prompts == 2
    whole_scores, whole = acdc(model, graph, pairs, ablation, tau=0.02, objective=objective, max_memory="64GB")
    scores, chunked = acdc(model, graph, pairs, ablation, tau=0.02, objective=objective, max_memory=small)
    assert 0 < int(whole.sum()) < int(graph.real.sum())  # some edges pruned, some kept
    assert torch.equal(chunked, whole)
    torch.testing.assert_close(scores, whole_scores, rtol=1e-4, atol=1e-6)


def test_chunked_oracle_equals_one_chunk(chekhov):
    from mechkit.discovery import oracle

    model, pairs = chekhov
    small = _budget_for(model, pairs, grad=False, per_chunk=2)
    whole = oracle(model, pairs, target=0.8, max_memory="64GB")
    chunked = oracle(model, pairs, target=0.8, max_memory=small)
    assert whole.reached and 0 < len(whole.nodes)
    assert chunked.nodes == whole.nodes and chunked.n_evaluated == whole.n_evaluated
    assert chunked.faithfulness == pytest.approx(whole.faithfulness, rel=1e-5)


def test_acdc_and_oracle_refuse_a_budget_too_small(chekhov):
    from mechkit.discovery import acdc, oracle

    model, pairs = chekhov
    with pytest.raises(MemoryBudgetError, match=r"needs about .* but the memory budget is .*raise max_memory"):
        acdc(model, Graph.from_model(model), pairs, "resample", max_memory=1000)
    with pytest.raises(MemoryBudgetError, match=r"needs about .* but the memory budget is .*raise max_memory"):
        oracle(model, pairs, max_memory=1000)
