"""The real-model tasks on SmolLM2-135M itself: the model does what each task asks."""

import torch

from mechkit.metrics import logit_diff
from mechkit.tasks import regenerate, task


def diffs(model, pairs):
    with torch.no_grad():
        return logit_diff(model(pairs.clean), pairs), logit_diff(model(pairs.corrupted), pairs)


def test_ioi_logit_diff_and_accuracy(smollm2):
    pairs = task("ioi").generate(16, seed=0, model=smollm2)
    clean, corrupted = diffs(smollm2, pairs)
    assert clean.mean() > 2 and (clean > 0).float().mean() >= 0.9
    assert corrupted.mean().abs() < 1  # a third name: neither IO nor S is marked


def test_ioi_s2_flip_flips_the_answer(smollm2):
    clean, corrupted = diffs(smollm2, task("ioi-s2-flip").generate(16, seed=0, model=smollm2))
    assert clean.mean() > 2 and corrupted.mean() < -2


def test_repeated_tokens_are_predicted_by_induction(smollm2):
    clean, corrupted = diffs(smollm2, task("repeated-tokens").generate(16, seed=0, model=smollm2))
    assert clean.mean() > 5 and (clean > 0).all() and corrupted.mean().abs() < 2


def test_capitals_keeps_only_what_the_model_gets_right(smollm2):
    pairs = task("capitals").generate(16, seed=0, model=smollm2)
    with torch.no_grad():
        clean, corrupted = smollm2(pairs.clean)[:, -1], smollm2(pairs.corrupted)[:, -1]
    assert torch.equal(clean.argmax(-1), pairs.answer) and torch.equal(corrupted.argmax(-1), pairs.wrong)
    again = regenerate(pairs.task, smollm2)
    assert torch.equal(again.clean, pairs.clean) and torch.equal(again.answer, pairs.answer)
