"""EAP-IG's completeness check: the embedding's edge scores against the metric's change."""

import warnings

import pytest
import torch

from mechkit.discovery import IntegrationWarning, attribute
from mechkit.metrics import logit_diff
from tests.conftest import tiny_hooked
from tests.discovery.conftest import random_pairs


def linear_model():
    """Logits linear in the embedding: no LayerNorm, and attention that writes nothing."""
    model = tiny_hooked(seed=1, attn_only=True, normalization_type=None)
    with torch.no_grad():
        for block in model.blocks:
            block.attn.W_O.zero_()
            block.attn.b_O.zero_()
    return model


def test_parts_are_the_embedding_edges_and_the_metric_change(model, pairs):
    scores = attribute(model, pairs, "eap-ig", ig_steps=3)
    check = scores.convergence
    embed = [i for i, name in enumerate(scores.edge_names) if name.startswith("embed->")]
    assert check.embedding_sum == pytest.approx(float(scores.scores[embed].sum()), rel=1e-5)
    with torch.no_grad():  # resample: the path starts at the corrupted prompts' embedding
        change = logit_diff(model(pairs.corrupted), pairs).mean() - logit_diff(model(pairs.clean), pairs).mean()
    assert check.total_effect == pytest.approx(float(change), rel=1e-4, abs=1e-5)
    assert check.ig_steps == 3


@pytest.mark.parametrize("method", ["eap-ig", "eap-ig-activations"])
def test_exact_when_the_metric_is_linear_in_the_input(method):
    model, pairs = linear_model(), random_pairs(vocab=40)
    with warnings.catch_warnings():
        warnings.simplefilter("error", IntegrationWarning)
        check = attribute(model, pairs, method, ig_steps=1).convergence
    assert abs(check.total_effect) > 0.1
    assert check.relative_error < 1e-4


def test_warns_only_while_the_steps_miss_the_integral():
    """The wired induction organism's metric switches sharply along the path: 5 steps miss it
    by about half, 20 resolve it."""
    from mechkit.models import load_model
    from mechkit.organisms import task

    model = load_model("organism:wired-induction", device="cpu")
    pairs = task("wired-induction").generate(32, seed=0, split="test")
    with pytest.warns(IntegrationWarning, match=r"ig_steps=5 .*% off"):
        coarse = attribute(model, pairs, "eap-ig", ig_steps=5).convergence
    with warnings.catch_warnings():
        warnings.simplefilter("error", IntegrationWarning)
        fine = attribute(model, pairs, "eap-ig", ig_steps=20).convergence
    assert coarse.relative_error > 0.2 > 0.01 > fine.relative_error


def test_methods_without_an_integral_have_no_check(model, pairs):
    assert attribute(model, pairs, "eap").convergence is None
