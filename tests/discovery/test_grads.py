"""Receiver gradients from a plain run equal TransformerLens's split-input gradients."""

import pytest
import torch

from mechkit.discovery.forward import receiver_grads, receiver_grads_replaced
from mechkit.discovery.grads import receiver_grads_plain
from mechkit.discovery.graph import Graph
from mechkit.metrics import logit_diff
from tests.conftest import tiny_hooked
from tests.discovery.conftest import random_pairs

ARCHITECTURES = {
    "gpt2-like": {},
    "ln-pre": {"normalization_type": "LNPre"},
    "attn-only": {"attn_only": True},
    "llama-like": {"normalization_type": "RMS", "positional_embedding_type": "rotary", "rotary_dim": 4,
                   "gated_mlp": True, "act_fn": "silu", "n_heads": 4, "d_head": 4, "n_key_value_heads": 2},
    "rms-pre": {"normalization_type": "RMSPre"},
    "parallel": {"parallel_attn_mlp": True},
}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_plain_grads_equal_split_input_grads(arch):
    model = tiny_hooked(seed=1, **ARCHITECTURES[arch])
    graph = Graph.from_model(model)
    pairs = random_pairs(batch=3)
    embed = torch.randn(3, pairs.clean.shape[1], model.cfg.d_model) * 0.3
    expected = receiver_grads(model, graph, pairs, logit_diff, embed=embed)
    got = receiver_grads_plain(model, graph, pairs, logit_diff, embed=embed)
    assert expected.abs().sum() > 0
    assert not got.requires_grad  # no autograd graph: callers' running sums would keep every chunk alive
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    # a replaced activation (EAP-IG-activations): no gradient flows through it
    hook = "blocks.0.hook_attn_out"
    values = torch.randn(2, 3, pairs.clean.shape[1], model.cfg.d_model) * 0.2
    expected = receiver_grads_replaced(model, graph, pairs, hook, values, logit_diff)
    got = receiver_grads_plain(model, graph, pairs, logit_diff, replace=(hook, values)).reshape(2, 3, *expected.shape[1:]).sum(0)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_flags_are_restored():
    model = tiny_hooked(seed=1, **ARCHITECTURES["llama-like"])
    before = model.cfg.to_dict()
    receiver_grads_plain(model, Graph.from_model(model), random_pairs(batch=2), logit_diff)
    assert model.cfg.to_dict() == before


@pytest.mark.parametrize("arch", ["gpt2-like", "llama-like"])
def test_answer_position_shortcut_equals_full_logits(arch):
    # logit_diff and answer_prob unembed only the answer position; a user metric (any callable)
    # gets full logits: both give the same gradients
    from mechkit.metrics import answer_prob

    model = tiny_hooked(seed=2, **ARCHITECTURES[arch])
    graph = Graph.from_model(model)
    pairs = random_pairs(batch=3)
    for builtin in (logit_diff, answer_prob):
        def user_metric(logits, p, fn=builtin):
            return fn(logits, p)

        torch.testing.assert_close(receiver_grads_plain(model, graph, pairs, builtin),
                                   receiver_grads_plain(model, graph, pairs, user_metric), rtol=1e-4, atol=1e-7)
