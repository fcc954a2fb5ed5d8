"""Feature attribution: with a lossless SAE, scores sum to plain attribution patching on the
residual stream; interventions equal direct edits of the activation; circuits use F: nodes."""

import pytest
import torch

from mechkit._types import Node, PromptPairs
from mechkit.errors import DataError
from mechkit.metrics import logit_diff
from mechkit.sae import (
    attribute_features,
    feature_circuit,
    feature_intervention,
    feature_strength,
    intervention_report,
)
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


def test_feature_strength_is_mean_activation_times_decoder_norm_where_intervened():
    model, sae, pairs = tiny_hooked(), _identity_sae(), _pairs()
    with torch.no_grad():
        sae.W_dec[0] *= 3  # the decoder norm scales the feature's strength
    _, clean = model.run_with_cache(pairs.clean, names_filter=[HOOK])
    _, corr = model.run_with_cache(pairs.corrupted, names_filter=[HOOK])
    both = torch.stack([clean[HOOK], corr[HOOK]])  # [2, batch, pos, d]
    feats = torch.cat([both.relu(), (-both).relu()], -1)  # the identity SAE's activations
    norms = torch.ones(32)
    norms[0] = 3
    for where, mask in (("diff", pairs.clean != pairs.corrupted),
                        ("all", torch.arange(8)[None] <= pairs.answer_pos[:, None])):
        want = feats[:, mask].reshape(-1, 32).mean(0) * norms
        torch.testing.assert_close(feature_strength(model, sae, pairs, where=where, batch_size=4), want)
    with pytest.raises(DataError):
        feature_strength(model, sae, pairs, where="nowhere")


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


def test_interventions_at_the_answer_position():
    """where="answer" edits each prompt's own answer position only (answer_pos varies by row)."""
    model, sae, p = tiny_hooked(), _identity_sae(), _pairs()
    rows = torch.arange(6)
    with torch.no_grad():  # answers = the model's own predictions
        p = PromptPairs(p.clean, p.corrupted, model(p.clean)[rows, p.answer_pos].argmax(-1),
                        model(p.corrupted)[rows, p.answer_pos].argmax(-1), p.answer_pos)
    _, clean_cache = model.run_with_cache(p.clean, names_filter=[HOOK])

    def edit(source):
        def hook_fn(act, hook):
            act = act.clone()
            act[rows, p.answer_pos] = 0 if source is None else source[rows, p.answer_pos]
            return act
        return hook_fn

    with torch.no_grad():
        with model.hooks(fwd_hooks=[(HOOK, edit(None))]):
            zero_top = model(p.clean)[rows, p.answer_pos].argmax(-1)
        with model.hooks(fwd_hooks=[(HOOK, edit(clean_cache[HOOK]))]):
            patched_top = model(p.corrupted)[rows, p.answer_pos].argmax(-1)
    rep = intervention_report(model, sae, p, list(range(32)), where="answer")
    assert rep.where == "answer"
    assert rep.ablated_clean_gives_answer == float((zero_top == p.answer).float().mean())
    assert rep.patched_corrupted_gives_answer == float((patched_top == p.answer).float().mean())
    # the pairs differ at position 2, before every answer position: patching the answer position
    # alone is not the full patch ("all"), which gives the clean answer everywhere
    assert intervention_report(model, sae, p, list(range(32)), where="all").patched_corrupted_gives_answer == 1.0


def test_top_features_at_chosen_positions():
    model, sae, pairs = tiny_hooked(), _identity_sae(), _pairs()
    attr = attribute_features(model, sae, pairs)
    at7 = attr.top(3, positions=[7])
    assert at7 == (-attr.by_position[7]).argsort(descending=True)[:3].tolist()
    assert attr.top(3, positions=range(8)) == attr.top(3)
    more = attr.clean_mean[7] - attr.corrupted_mean[7]
    assert all(more[f] > 0 for f in attr.top(32, present="clean", positions=[7]))
    with pytest.raises(DataError, match="by must be"):
        attr.top(3, by="largest")


def test_verify_feature_circuit_remeasures_the_held_out_interventions(tmp_path):
    from dataclasses import asdict

    from mechkit.artifacts import save_circuit
    from mechkit.errors import ArtifactError
    from mechkit.models import fingerprint
    from mechkit.sae import verify_feature_circuit

    model, sae, p = tiny_hooked(), _identity_sae(), _pairs()
    rows = torch.arange(6)
    with torch.no_grad():
        p = PromptPairs(p.clean, p.corrupted, model(p.clean)[rows, p.answer_pos].argmax(-1),
                        model(p.corrupted)[rows, p.answer_pos].argmax(-1), p.answer_pos)
    sae.save_model(str(tmp_path / "saes" / "id"))
    feats = [0, 3, 17]
    rep = intervention_report(model, sae, p, feats, steer_scale=2.0, where="answer")
    attr = attribute_features(model, sae, p)
    hp = {"sae": "saes/id", "where": "answer", "steer_scale": 2.0, "held_out": asdict(rep),
          "held_out_task": {"name": "given"}}
    path = tmp_path / "c.circuit.json"
    save_circuit(feature_circuit(model, "tiny", attr, feats, task={"name": "given"}, hyperparameters=hp), path)
    kw = dict(load_model=lambda spec, device=None: model, regenerate=lambda task: p)
    ok = verify_feature_circuit(path, **kw)
    assert ok.passed and ok.measured == ok.recorded and len(ok.recorded) == 6
    # mechkit verify (verify_circuit) dispatches feature circuits here and reports each fraction
    from mechkit.artifacts.verify import verify_circuit

    via_verify = verify_circuit(path, **kw, fingerprint=lambda m: fingerprint(m))
    assert via_verify.passed and via_verify.fingerprint_ok and len(via_verify.checks) == 6
    assert any(line.startswith("  held-out (ablated_clean_gives_wrong): recorded") for line in via_verify.lines())
    # other prompts: the re-measured fractions move and the check fails, saying which one
    flipped = PromptPairs(p.clean, p.corrupted, p.wrong, p.answer, p.answer_pos)
    bad = verify_feature_circuit(path, load_model=kw["load_model"], regenerate=lambda task: flipped)
    assert not bad.passed and bad.reason.startswith("clean_gives_answer moved by -") and bad.measured != bad.recorded
    bad = verify_circuit(path, load_model=kw["load_model"], regenerate=lambda task: flipped)
    assert not bad.passed and "clean_gives_answer moved by -" in bad.reason
    assert verify_feature_circuit(path, load_model=lambda spec, device=None: tiny_hooked(seed=1),
                                  regenerate=kw["regenerate"]).reason.startswith("model weights differ")
    save_circuit(feature_circuit(model, "tiny", attr, feats, task={"name": "given"}), tmp_path / "plain.circuit.json")
    with pytest.raises(ArtifactError, match="not a feature circuit"):
        verify_feature_circuit(tmp_path / "plain.circuit.json", **kw)
