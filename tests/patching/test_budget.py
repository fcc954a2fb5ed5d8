"""Patching within a memory budget: prompts in chunks give the numbers of one chunk, and a
budget too small for one prompt is refused in one line saying what it needs."""

import pytest
import torch

from mechkit import load_model
from mechkit.memory import MemoryBudgetError
from mechkit.organisms import task
from mechkit.patching import activation_patch, attribution_patch, path_patch, path_patch_heads
from mechkit.patching._budget import sweep_costs, sweep_plan
from mechkit.patching._metrics import metric_scope
from mechkit.patching._sweeps import get_sweep
from tests.patching.helpers import MODELS, make_pairs

BIG = "64GB"


@pytest.fixture(scope="module")
def chekhov():
    model = load_model("organism:chekhov", device="cpu")
    return model, task("chekhov").generate(7, seed=0)


def sweep_budget(model, pairs, sweep: str, metric: str, per_chunk: int) -> int:
    """A byte budget under which an activation sweep caches ``per_chunk`` prompts at a time."""
    spec, n_pos = get_sweep(sweep), pairs.clean.shape[1]
    per_prompt, per_item = sweep_costs(model, n_pos, spec.act_axes, model.cfg.n_layers, metric_scope(metric))
    budget = max(2 * per_chunk * per_prompt + 1, per_chunk * per_prompt + per_item)
    plan = sweep_plan(model, len(pairs), n_pos, spec.act_axes, model.cfg.n_layers, metric_scope(metric), budget)
    assert plan.prompts == per_chunk
    return budget


@pytest.mark.parametrize("sweep, metric, direction", [
    ("resid-pre", "logit-diff", "denoising"),
    ("head-out-by-pos", "normalized-logit-diff", "denoising"),
    ("attn-out", "kl", "noising"),
    ("head-v-all-pos", "answer-prob", "denoising"),
])
def test_chunked_sweep_equals_one_chunk_on_an_organism(chekhov, sweep, metric, direction):
    model, pairs = chekhov
    whole = activation_patch(model, pairs, sweep, metric, direction=direction, max_memory=BIG, progress=False)
    chunked = activation_patch(model, pairs, sweep, metric, direction=direction, progress=False,
                               max_memory=sweep_budget(model, pairs, sweep, metric, 3))  # chunks of 3, 3, 1
    assert whole.values.std() > 0  # the sweep measures something
    torch.testing.assert_close(chunked.values, whole.values, rtol=1e-4, atol=1e-5)
    assert chunked.clean_value == pytest.approx(whole.clean_value, rel=1e-5, abs=1e-6)
    assert chunked.corrupted_value == pytest.approx(whole.corrupted_value, rel=1e-5, abs=1e-6)


def test_chunked_sweep_with_a_full_logits_metric_and_ragged_answers():
    model, pairs = MODELS["rotary"](), make_pairs(batch=5, ragged=True)

    def last_logit(logits, pairs):  # reads every position's logits
        return logits[:, -1, 0] - logits[:, 0, 1]

    whole = activation_patch(model, pairs, "resid-pre", last_logit, max_memory=BIG, progress=False)
    chunked = activation_patch(model, pairs, "resid-pre", last_logit, progress=False,
                               max_memory=sweep_budget(model, pairs, "resid-pre", last_logit, 2))
    torch.testing.assert_close(chunked.values, whole.values, rtol=1e-4, atol=1e-5)


def test_activation_budget_too_small_says_what_it_needs(chekhov):
    model, pairs = chekhov
    with pytest.raises(MemoryBudgetError, match=r"^activation patching needs about .* for one prompt but the memory "
                                                r"budget is .*: raise max_memory \(--max-memory\)"):
        activation_patch(model, pairs, "resid-pre", max_memory=1000, progress=False)


def test_memory_gib_still_works_and_is_deprecated(chekhov):
    model, pairs = chekhov
    whole = activation_patch(model, pairs, "attn-out", max_memory=BIG, progress=False)
    with pytest.warns(DeprecationWarning, match="max_memory"):
        old = activation_patch(model, pairs, "attn-out", memory_gib=1.0, progress=False)
    torch.testing.assert_close(old.values, whole.values)


def attribution_budget(model, pairs, sweep: str, per_chunk: int) -> int:
    """A byte budget under which attribution patching runs ``per_chunk`` prompts at a time."""
    from mechkit.patching._budget import act_numel
    from mechkit.patching.attribution import _prompt_bytes

    cfg, n_pos = model.cfg, pairs.clean.shape[1]
    kept = act_numel(model, get_sweep(sweep).act_axes, n_pos) * cfg.n_layers + n_pos * cfg.d_model + 2 * cfg.d_vocab
    return 2 * per_chunk * (_prompt_bytes(model, n_pos) + 4 * kept) + 1


@pytest.mark.parametrize("metric, direction", [("logit-diff", "denoising"), ("normalized-logit-diff", "noising"),
                                               ("kl", "denoising")])
def test_chunked_attribution_equals_one_chunk(chekhov, metric, direction):
    model, pairs = chekhov
    whole = attribution_patch(model, pairs, "head-out-by-pos", metric, direction=direction, max_memory=BIG)
    chunked = attribution_patch(model, pairs, "head-out-by-pos", metric, direction=direction,
                                max_memory=attribution_budget(model, pairs, "head-out-by-pos", 2))
    assert whole.values.abs().max() > 0
    torch.testing.assert_close(chunked.values, whole.values, rtol=1e-4, atol=1e-5)
    assert chunked.clean_value == pytest.approx(whole.clean_value, rel=1e-5, abs=1e-6)
    assert chunked.corrupted_value == pytest.approx(whole.corrupted_value, rel=1e-5, abs=1e-6)


def test_attribution_budget_too_small_says_what_it_needs(chekhov):
    model, pairs = chekhov
    with pytest.raises(MemoryBudgetError, match=r"^attribution patching needs about .* but the memory budget is"):
        attribution_patch(model, pairs, "resid-pre", max_memory=1000)


def path_budget(model, pairs, per_chunk: int) -> int:
    """A byte budget under which path patching caches ``per_chunk`` prompts' runs at a time."""
    from mechkit.patching._budget import cached_bytes
    from mechkit.patching._engine import item_bytes

    cfg, n_pos = model.cfg, pairs.clean.shape[1]
    acts = n_pos * cfg.n_layers * (cfg.n_heads * cfg.d_head + cfg.d_model)
    per_prompt = cached_bytes(model, n_pos, acts, False) + 2 * item_bytes(model, n_pos, n_pos, "full", 0)
    return 2 * per_chunk * per_prompt + 1


@pytest.mark.parametrize("metric", ["logit-diff", "normalized-logit-diff", "kl"])
def test_chunked_path_patching_equals_one_chunk(chekhov, metric):
    model, pairs = chekhov
    small = path_budget(model, pairs, 3)
    whole = path_patch_heads(model, pairs, "logits", metric, max_memory=BIG, progress=False)
    chunked = path_patch_heads(model, pairs, "logits", metric, max_memory=small, progress=False)
    assert whole.values.std() > 0
    torch.testing.assert_close(chunked.values, whole.values, rtol=1e-4, atol=1e-5)
    assert chunked.clean_value == pytest.approx(whole.clean_value, rel=1e-5, abs=1e-6)
    one = path_patch(model, pairs, ["L0H1", "L0H2"], ["L1H0"], metric, receiver_input="v", max_memory=BIG)
    assert path_patch(model, pairs, ["L0H1", "L0H2"], ["L1H0"], metric, receiver_input="v",
                      max_memory=small) == pytest.approx(one, rel=1e-4, abs=1e-6)


def test_path_budget_too_small_says_what_it_needs(chekhov):
    model, pairs = chekhov
    with pytest.raises(MemoryBudgetError, match=r"^path patching needs about .* but the memory budget is"):
        path_patch_heads(model, pairs, "logits", max_memory=1000, progress=False)


def test_small_budget_sweep_equals_default_on_smollm2(smollm2):
    from mechkit.tasks import task as real_task

    pairs = real_task("ioi").generate(4, seed=0, model=smollm2)
    spec, n_pos = get_sweep("resid-pre"), pairs.clean.shape[1]
    layers = [0, 14, 29]
    per_prompt, per_item = sweep_costs(smollm2, n_pos, spec.act_axes, len(layers), "columns")
    small = 2 * 2 * per_prompt + 1  # two prompts' cached runs: chunks of 2 and 2
    assert sweep_plan(smollm2, 4, n_pos, spec.act_axes, len(layers), "columns", small).prompts == 2
    whole = activation_patch(smollm2, pairs, "resid-pre", layers=layers, progress=False)
    chunked = activation_patch(smollm2, pairs, "resid-pre", layers=layers, max_memory=small, progress=False)
    assert whole.values.std() > 0.1  # patching the residual moves the logit difference
    torch.testing.assert_close(chunked.values, whole.values, rtol=1e-4, atol=1e-4)
    assert chunked.clean_value == pytest.approx(whole.clean_value, rel=1e-5)
