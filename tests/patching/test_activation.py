"""Every sweep equals TransformerLens's own function on the same model and inputs."""

import pytest
import torch

from mechkit import metrics as M
from mechkit.patching import SWEEPS, activation_patch
from tests.patching.helpers import MODELS, make_pairs, tl_sweep

TOL = 1e-5
EVERY_TL = {
    "block-every": "get_act_patch_block_every",
    "head-all-pos-every": "get_act_patch_attn_head_all_pos_every",
    "head-by-pos-every": "get_act_patch_attn_head_by_pos_every",
}


# ragged: answers at different positions; shared: one answer position, where the engine runs
# the last block only at the answer and at the patched position's keys and values
CASES = [("gpt2ish", "denoising", "ragged"), ("gpt2ish", "noising", "ragged"), ("attn_only", "denoising", "ragged"),
         ("rotary", "denoising", "ragged"), ("rotary", "noising", "ragged"), ("gpt2ish", "denoising", "shared"),
         ("attn_only", "noising", "shared"), ("rotary", "denoising", "shared"), ("shortformer", "denoising", "shared")]


def _sweeps(model):
    tl_only = {"resid-post"}  # TransformerLens has no resid_post sweep; checked separately below
    mlp = {"resid-mid", "mlp-out"}
    return [s for s in SWEEPS if s not in tl_only and not (model.cfg.attn_only and s in mlp)]


@pytest.mark.parametrize("name,direction,answers", CASES)
def test_every_sweep_matches_transformer_lens(name, direction, answers):
    model = MODELS[name]()
    pairs = make_pairs(ragged=True) if answers == "ragged" else make_pairs(batch=3, n_pos=6, seed=1)
    for sweep in _sweeps(model):
        ours = activation_patch(model, pairs, sweep, "logit-diff", direction=direction, progress=False)
        ref = tl_sweep(SWEEPS[sweep].tl_name, model, pairs, M.logit_diff, direction)
        assert ours.values.shape == ref.shape, sweep
        assert (ours.values - ref).abs().max() <= TOL, sweep
        assert ours.dims[0] == "layer" and len(ours.dims) == ref.ndim


@pytest.mark.parametrize("name", list(EVERY_TL))
def test_every_variants_match(name):
    model = MODELS["gpt2ish"]()
    pairs = make_pairs()
    ours = activation_patch(model, pairs, name, progress=False)
    ref = tl_sweep(EVERY_TL[name], model, pairs, M.logit_diff)
    assert ours.values.shape == ref.shape
    assert (ours.values - ref).abs().max() <= TOL
    assert ours.dims[0] == "act" and len(ours.labels["act"]) == ref.shape[0]


def test_metrics_and_user_function_match():
    model = MODELS["rotary"]()
    pairs = make_pairs(batch=3, ragged=True)
    clean_ref = M.answer_logits(model(pairs.clean), pairs)

    def user(logits, p):  # reads every position, so the engine must give it full logits
        return logits.log_softmax(-1)[:, :, 7].sum(1) + M.logit_diff(logits, p)

    cases = [
        ("kl", lambda lg, p: M.kl_div(lg, p, clean_ref)),
        ("answer-prob", M.answer_prob),
        (user, user),
    ]
    for metric, fn in cases:
        for sweep in ("resid-pre", "head-pattern-by-pos"):
            ours = activation_patch(model, pairs, sweep, metric, progress=False)
            ref = tl_sweep(SWEEPS[sweep].tl_name, model, pairs, fn)
            assert (ours.values - ref).abs().max() <= TOL, (metric, sweep)


def test_normalized_logit_diff_is_the_normalised_logit_diff():
    model = MODELS["gpt2ish"]()
    pairs = make_pairs()
    ld = activation_patch(model, pairs, "head-out-by-pos", "logit-diff", progress=False)
    norm = activation_patch(model, pairs, "head-out-by-pos", "normalized-logit-diff", progress=False)
    expect = (ld.values - ld.corrupted_value) / (ld.clean_value - ld.corrupted_value)
    assert torch.allclose(norm.values, expect, atol=1e-4)
    assert abs(norm.clean_value - 1) < 1e-5 and abs(norm.corrupted_value) < 1e-5


def test_tiny_memory_budget_gives_same_result():
    from mechkit.patching._budget import sweep_costs, sweep_plan
    from mechkit.patching._sweeps import get_sweep

    model = MODELS["gpt2ish"]()
    pairs = make_pairs()
    big = activation_patch(model, pairs, "head-out-by-pos", progress=False)
    # the smallest budget that runs: one prompt per chunk, one patched item per forward
    axes, n_pos = get_sweep("head-out-by-pos").act_axes, pairs.clean.shape[1]
    tiny = sum(sweep_costs(model, n_pos, axes, 2, "columns"))
    plan = sweep_plan(model, len(pairs), n_pos, axes, 2, "columns", tiny)
    assert (plan.prompts, plan.rest) == (1, tiny - sweep_costs(model, n_pos, axes, 2, "columns")[0])
    small = activation_patch(model, pairs, "head-out-by-pos", max_memory=tiny, progress=False)
    assert (big.values - small.values).abs().max() <= TOL


def test_resid_post_equals_next_resid_pre_and_restrictions():
    model = MODELS["gpt2ish"]()
    pairs = make_pairs()
    post = activation_patch(model, pairs, "resid-post", progress=False)
    pre = activation_patch(model, pairs, "resid-pre", progress=False)
    assert (post.values[0] - pre.values[1]).abs().max() <= TOL
    sub = activation_patch(model, pairs, "head-out-by-pos", layers=[1], positions=[1, 3], progress=False)
    full = activation_patch(model, pairs, "head-out-by-pos", progress=False)
    assert sub.values.shape == (1, 2, 2)
    assert (sub.values - full.values[1:, [1, 3]]).abs().max() <= TOL
    assert sub.labels["layer"] == ["1"] and sub.labels["pos"] == ["1", "3"]


def test_identical_prompts_change_nothing():
    model = MODELS["gpt2ish"]()
    pairs = make_pairs()
    same = type(pairs)(pairs.clean, pairs.clean, pairs.answer, pairs.wrong, pairs.answer_pos)
    r = activation_patch(model, same, "head-out-by-pos", progress=False)
    assert torch.allclose(r.values, torch.full_like(r.values, r.clean_value), atol=1e-6)


def test_accelerator_chunking_matches(monkeypatch):
    """The large-pass policy used on GPUs (no one-position blocks, more padding) is exact too."""
    from mechkit.patching import _engine

    monkeypatch.setattr(_engine, "prefers_large_passes", lambda device: True)
    model = MODELS["rotary"]()
    pairs = make_pairs(batch=3, n_pos=6, ragged=True)
    for sweep in ("head-out-by-pos", "head-pattern-dest-src-pos", "mlp-out"):
        ours = activation_patch(model, pairs, sweep, progress=False)
        ref = tl_sweep(SWEEPS[sweep].tl_name, model, pairs, M.logit_diff)
        assert (ours.values - ref).abs().max() <= TOL, sweep


@pytest.mark.parametrize("name", ["gpt2ish", "shortformer"])
def test_fused_kernels_match_transformer_lens(name, monkeypatch):
    """The engine's accelerator variant (fused normalisation and attention), forced on the CPU."""
    from mechkit.models import _tl_block

    monkeypatch.setattr(_tl_block, "fused_kernels", lambda device: True)
    model = MODELS[name]()
    pairs = make_pairs(batch=3, n_pos=6, seed=1)
    for sweep in ("resid-pre", "head-out-by-pos", "attn-out"):
        ours = activation_patch(model, pairs, sweep, "logit-diff", progress=False)
        ref = tl_sweep(SWEEPS[sweep].tl_name, model, pairs, M.logit_diff, "denoising")
        assert (ours.values - ref).abs().max() <= TOL, sweep
