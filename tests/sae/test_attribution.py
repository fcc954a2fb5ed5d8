"""Feature attribution: with a lossless SAE, scores sum to plain attribution patching on the
residual stream; interventions equal direct edits of the activation; circuits use F: nodes."""

import pytest
import torch

from mechkit._types import Node, PromptPairs
from mechkit.errors import DataError
from mechkit.metrics import logit_diff
from mechkit.sae import attribute_features, feature_circuit, feature_intervention, intervention_report
from tests.conftest import tiny_hooked
from tests.sae.test_evaluate import HOOK, _identity_sae


def _pairs(n=6, pos=8):
    g = torch.Generator().manual_seed(3)
    clean = torch.randint(4, 64, (n, pos), generator=g)
    corrupted = clean.clone()
    corrupted[:, 2] = torch.randint(4, 64, (n,), generator=g)
    return PromptPairs(clean, corrupted, torch.randint(4, 64, (n,), generator=g), torch.randint(4, 64, (n,), generator=g),
                       torch.tensor([7, 7, 5, 6, 7, 4])[:n])


def test_scores_sum_to_residual_attribution_patching():
    model, sae, pairs = tiny_hooked(), _identity_sae(), _pairs()
    attr = attribute_features(model, sae, pairs, batch_size=4)
    # the same first-order estimate computed on the residual stream directly
    _, corr = model.run_with_cache(pairs.corrupted, names_filter=[HOOK])
    store = {}

    def grab(act, hook):
        act.retain_grad()
        store["x"] = act
        return act

    with model.hooks(fwd_hooks=[(HOOK, grab)]):
        logit_diff(model(pairs.clean), pairs).sum().backward()
    x = store["x"]
    keep = torch.arange(8)[None, :, None] <= pairs.answer_pos[:, None, None]
    direct = (x.grad * (corr[HOOK] - x.detach()) * keep).sum() / len(pairs)
    assert abs(attr.scores.sum().item() - direct.item()) < 1e-4 * max(1.0, abs(direct.item()))
    assert attr.by_position[7].abs().sum() > 0 and attr.by_position[:2].abs().sum() < 1e-6  # before the edit: no effect
    torch.testing.assert_close(attr.scores, attr.by_position.sum(0))


def test_interventions_equal_direct_edits():
    model, sae, pairs = tiny_hooked(), _identity_sae(), _pairs(1)
    all_features = list(range(32))
    with feature_intervention(model, sae, all_features):
        ablated = model(pairs.clean)
    with model.hooks(fwd_hooks=[(HOOK, lambda act, hook: torch.zeros_like(act))]):
        zeroed = model(pairs.clean)
    torch.testing.assert_close(ablated, zeroed, atol=1e-5, rtol=1e-5)
    attr = attribute_features(model, sae, pairs)
    with feature_intervention(model, sae, all_features, values=attr.clean_mean):  # one pair: its own values
        steered = model(pairs.corrupted)
    torch.testing.assert_close(steered, model(pairs.clean), atol=1e-4, rtol=1e-4)
    p = _pairs()
    rows = torch.arange(6)
    with torch.no_grad():  # answers = the model's own predictions, so the baselines are 1.0
        p = PromptPairs(p.clean, p.corrupted, model(p.clean)[rows, p.answer_pos].argmax(-1),
                        model(p.corrupted)[rows, p.answer_pos].argmax(-1), p.answer_pos)
        with model.hooks(fwd_hooks=[(HOOK, lambda act, hook: torch.zeros_like(act))]):
            zero_top = model(p.clean)[rows, p.answer_pos].argmax(-1)
    report = intervention_report(model, sae, p, all_features, batch_size=4)
    assert report.clean_gives_answer == 1.0 and report.corrupted_gives_wrong == 1.0
    assert report.patched_corrupted_gives_answer == 1.0  # lossless SAE, all features: a full patch
    assert report.ablated_clean_gives_answer == float((zero_top == p.answer).float().mean())
    assert report.ablated_clean_gives_wrong == float((zero_top == p.wrong).float().mean())
    # steering: all features set to twice their clean values = the clean activation doubled
    _, clean_cache = model.run_with_cache(p.clean, names_filter=[HOOK])
    with torch.no_grad(), model.hooks(fwd_hooks=[(HOOK, lambda act, hook: 2 * clean_cache[HOOK])]):
        doubled = model(p.corrupted)[rows, p.answer_pos].argmax(-1)
    steered = intervention_report(model, sae, p, all_features, batch_size=4, steer_scale=2.0)
    assert steered.steer_scale == 2.0 and steered.ablated_clean_gives_answer == report.ablated_clean_gives_answer
    assert steered.patched_corrupted_gives_answer == float((doubled == p.answer).float().mean())


def test_feature_circuit_nodes():
    model, sae, pairs = tiny_hooked(), _identity_sae(), _pairs()
    attr = attribute_features(model, sae, pairs)
    top = attr.top(3, by="abs")
    assert attr.scores.abs()[top[0]] == attr.scores.abs().max()
    circuit = feature_circuit(model, "tiny", attr, top, task={"name": "random"})
    assert [Node.parse(n).kind for n in circuit.nodes] == ["feature"] * 3
    assert circuit.node_scores[f"F:{HOOK}:{top[0]}"] == float(attr.scores[top[0]])


def test_interventions_at_chosen_positions():
    model, sae, p = tiny_hooked(), _identity_sae(), _pairs()
    at = p.clean != p.corrupted  # the pairs differ at position 2 only
    assert at.sum(1).eq(1).all() and at[:, 2].all()
    with torch.no_grad(), feature_intervention(model, sae, list(range(32)), positions=at):
        ablated = model(p.clean)

    def zero_at_2(act, hook):
        act = act.clone()
        act[:, 2] = 0
        return act

    with torch.no_grad(), model.hooks(fwd_hooks=[(HOOK, zero_at_2)]):
        direct = model(p.clean)
    torch.testing.assert_close(ablated, direct, atol=1e-5, rtol=1e-5)
    rows = torch.arange(6)
    _, clean_cache = model.run_with_cache(p.clean, names_filter=[HOOK])

    def clean_at_2(act, hook):
        act = act.clone()
        act[:, 2] = clean_cache[HOOK][:, 2]
        return act

    with torch.no_grad(), model.hooks(fwd_hooks=[(HOOK, clean_at_2)]):
        patched_top = model(p.corrupted)[rows, p.answer_pos].argmax(-1)
        ablated_top = direct[rows, p.answer_pos].argmax(-1)
    rep = intervention_report(model, sae, p, list(range(32)), where="diff")
    assert rep.where == "diff"
    assert rep.patched_corrupted_gives_answer == float((patched_top == p.answer).float().mean())
    assert rep.ablated_clean_gives_answer == float((ablated_top == p.answer).float().mean())
    with pytest.raises(DataError):
        intervention_report(model, sae, p, [0], where="somewhere")
