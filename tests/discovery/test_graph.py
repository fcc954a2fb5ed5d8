"""The edge graph: sizes, names, and patched forwards that reproduce clean and corrupted runs."""

import pytest
import torch

from mechkit._types import Edge
from mechkit.discovery.forward import ablated_outputs, run_masked
from mechkit.discovery.graph import Graph, GraphError
from tests.conftest import tiny_hooked
from tests.discovery.conftest import random_pairs


def all_logits(logits, pairs):
    return logits  # [batch, pos, d_vocab]: every logit, so "reproduces" means all of them


def expected_edges(n_layers, n_heads, mlp, parallel=False):
    total = 0
    for layer in range(n_layers):
        prefix = 1 + layer * (n_heads + mlp)
        total += 3 * n_heads * prefix
        if mlp:
            total += prefix + (0 if parallel else n_heads)
    return total + 1 + n_layers * (n_heads + mlp)


@pytest.mark.parametrize("attn_only", [False, True])
def test_sizes_and_names(attn_only):
    graph = Graph.from_model(tiny_hooked(attn_only=attn_only))
    mlp = int(not attn_only)
    assert graph.n_forward == 1 + 2 * (2 + mlp)
    assert graph.n_backward == 2 * (6 + mlp) + 1
    assert graph.n_edges == expected_edges(2, 2, mlp) == len(set(graph.edge_names))
    for name in graph.edge_names:
        assert Edge.parse(name).name == name
    assert "embed->L0H1<k>" in graph.edge_names and "L0H0->L1H1<v>" in graph.edge_names
    assert "L1H0->L0H0<q>" not in graph.edge_names and "L1H0->L1H1<q>" not in graph.edge_names
    if mlp:
        assert {"L0H1->M0", "embed->M1", "M1->logits", "M0->L1H0<q>"} <= set(graph.edge_names)
        assert "M0->M0" not in graph.edge_names and "M1->L1H0<q>" not in graph.edge_names


def test_parallel_blocks_feed_mlp_from_previous_layers_only():
    graph = Graph.from_model(tiny_hooked(parallel_attn_mlp=True))
    assert "L0H0->M0" not in graph.edge_names and "L0H0->M1" in graph.edge_names
    assert graph.n_edges == expected_edges(2, 2, 1, parallel=True)


def test_dense_round_trip_and_node_masks():
    graph = Graph.from_model(tiny_hooked())
    vec = torch.randn(graph.n_edges)
    dense = graph.to_matrix(vec)
    assert torch.equal(graph.from_matrix(dense), vec)
    assert dense[~graph.real].abs().sum() == 0
    keep = torch.tensor([n == "L0H1" for n in graph.node_names])
    edges = {n for n, k in zip(graph.edge_names, graph.node_mask_to_edges(keep).tolist()) if k}
    assert edges == {"embed->L0H1<q>", "embed->L0H1<k>", "embed->L0H1<v>", "embed->logits", "L0H1->logits"}


def test_unknown_edge_name_raises_with_hint():
    graph = Graph.from_model(tiny_hooked())
    with pytest.raises(KeyError, match="did you mean"):
        graph.edge_position("embed->L0H0<x>".replace("<x>", "<q>").replace("L0H0", "L0H9"))


@pytest.mark.parametrize(
    "overrides",
    [{}, {"attn_only": True}, {"n_heads": 4, "d_head": 4, "n_key_value_heads": 2, "normalization_type": "RMS", "positional_embedding_type": "rotary", "act_fn": "silu", "gated_mlp": True}, {"parallel_attn_mlp": True}],
    ids=["gpt2-like", "attn-only", "llama-like-gqa", "parallel"],
)
def test_full_graph_is_clean_and_empty_graph_is_corrupted(overrides):
    model = tiny_hooked(**overrides)
    pairs = random_pairs()
    graph = Graph.from_model(model)
    ablated = ablated_outputs(model, graph, pairs, "resample")
    keep = torch.stack([graph.real.float(), torch.zeros(graph.n_forward, graph.n_backward)])
    with torch.no_grad():
        out = run_masked(model, graph, pairs, ablated, keep, all_logits)
        clean, corrupted = model(pairs.clean), model(pairs.corrupted)
    torch.testing.assert_close(out[0], clean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1], corrupted, atol=1e-5, rtol=1e-5)
    assert not model.cfg.use_attn_result and not model.cfg.use_split_qkv_input  # flags restored
    assert not model.cfg.ungroup_grouped_query_attention


def test_empty_graph_under_zero_ablation_is_a_zero_embedding_run():
    model = tiny_hooked()
    pairs = random_pairs()
    graph = Graph.from_model(model)
    ablated = ablated_outputs(model, graph, pairs, "zero")
    with torch.no_grad():
        out = run_masked(model, graph, pairs, ablated, torch.zeros(1, graph.n_forward, graph.n_backward), all_logits)
        expected = model.run_with_hooks(pairs.clean, fwd_hooks=[("blocks.0.hook_resid_pre", lambda a, hook: a * 0)])
    torch.testing.assert_close(out[0], expected, atol=1e-5, rtol=1e-5)


def test_sandwich_norm_models_are_refused():
    model = tiny_hooked()
    model.cfg.use_normalization_before_and_after = True
    with pytest.raises(GraphError, match="pre-LayerNorm"):
        Graph.from_model(model)
