"""Probe fitting, AUROC intervals, steering and ablation on synthetic data and a tiny model."""

import pytest
import torch

from mechkit.errors import DataError, ShapeError
from mechkit.probes import Labelled, ablate, auroc_ci, collect, evaluate_probe, fit_probe, steer
from mechkit.probes.fit import LinearProbe
from tests.conftest import tiny_hooked


def _blobs(n=200, d=8, shift=1.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2 == 0
    mu = torch.randn(d, generator=g)
    x = torch.randn(n, d, generator=g) + torch.where(y[:, None], shift * mu, -shift * mu)
    return x, y


@pytest.mark.parametrize("method", ["logreg", "diff-means"])
def test_probe_separates_held_out_blobs_and_not_shuffled_labels(method):
    x, y = _blobs()
    probe = fit_probe(x[:100], y[:100], "h", method=method)
    assert evaluate_probe(probe, x[100:], y[100:], n_boot=100).auroc > 0.95
    shuffled = y[100:][torch.randperm(100, generator=torch.Generator().manual_seed(1))]
    assert 0.3 < evaluate_probe(probe, x[100:], shuffled, n_boot=100).auroc < 0.7


def test_diff_means_bias_puts_zero_at_the_midpoint():
    x, y = _blobs()
    probe = fit_probe(x, y, "h", method="diff-means")
    mid = (x[y].mean(0) + x[~y].mean(0)) / 2
    assert abs(float(probe.score(mid[None]))) < 1e-4
    assert torch.allclose(probe.direction, x[y].mean(0) - x[~y].mean(0), atol=1e-5)


def test_auroc_interval_contains_the_point_and_narrows_with_more_data():
    wide = auroc_ci(*_noisy(40), n_boot=300)
    narrow = auroc_ci(*_noisy(1000), n_boot=300)
    for r in (wide, narrow):
        assert r.ci_low <= r.auroc <= r.ci_high
    assert narrow.ci_high - narrow.ci_low < wide.ci_high - wide.ci_low
    assert auroc_ci([3.0, 2.0, 1.0, 0.0], [1, 1, 0, 0]).auroc == 1.0
    assert auroc_ci([3.0, 2.0, 1.0, 0.0], [0, 0, 1, 1]).auroc == 0.0


def _noisy(n):
    g = torch.Generator().manual_seed(n)
    y = torch.arange(n) % 2 == 0
    return torch.randn(n, generator=g) + y.float(), y


def test_one_class_labels_and_bad_shapes_are_refused():
    x, y = _blobs()
    with pytest.raises(DataError, match="both classes"):
        fit_probe(x, torch.ones(len(x), dtype=torch.bool), "h")
    with pytest.raises(DataError, match="both classes"):
        auroc_ci([0.1, 0.2], [1, 1])
    with pytest.raises(ShapeError):
        fit_probe(x, y[:10], "h")
    with pytest.raises(DataError, match="unknown probe method"):
        fit_probe(x, y, "h", method="svm")


def test_steering_adds_alpha_along_the_unit_direction_and_ablation_projects_it_out():
    model = tiny_hooked()
    hook = "blocks.0.hook_resid_post"
    tokens = torch.randint(4, 60, (6, 5), generator=torch.Generator().manual_seed(0))
    data = Labelled(tokens, torch.arange(6) % 2 == 0, torch.full((6,), 4))
    probe = LinearProbe(torch.randn(16, generator=torch.Generator().manual_seed(1)) * 3, 0.0, hook)
    base = collect(model, data, [hook])[hook]
    with steer(model, probe, alpha=2.5):
        steered = collect(model, data, [hook])[hook]
    assert torch.allclose(steered - base, 2.5 * probe.unit.expand_as(base), atol=1e-5)
    with ablate(model, probe):
        ablated = collect(model, data, [hook])[hook]
    assert torch.allclose(ablated @ probe.unit, torch.zeros(6), atol=1e-5)
    assert torch.allclose(ablated, base - (base @ probe.unit)[:, None] * probe.unit, atol=1e-5)
    assert not model.hook_dict[hook].fwd_hooks  # the hooks are gone after the blocks
    with steer(model, probe, alpha=1.0, positions=2):
        other_pos = collect(model, data, [hook])[hook]
    assert torch.allclose(other_pos, base, atol=1e-6)  # position 4 is probed, position 2 was steered


def test_positions_answer_last_and_explicit():
    from mechkit._types import PromptPairs

    clean = torch.arange(12).reshape(3, 4)
    pairs = PromptPairs(clean, clean + 1, torch.zeros(3, dtype=torch.long), torch.ones(3, dtype=torch.long),
                        torch.tensor([1, 2, 3]))
    assert Labelled.from_pairs(pairs).positions.tolist() == [1, 2, 3, 1, 2, 3]
    assert Labelled.from_pairs(pairs, "last").positions.tolist() == [3] * 6
    assert Labelled.from_pairs(pairs, -2).positions.tolist() == [2] * 6
    assert Labelled.from_pairs(pairs, 0).labels.tolist() == [True] * 3 + [False] * 3
    with pytest.raises(DataError, match="outside"):
        Labelled.from_pairs(pairs, 7)
