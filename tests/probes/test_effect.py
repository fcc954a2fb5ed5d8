"""steering_effect: the task's two accuracies per intervention, with Wilson intervals."""

import json
import math

import pytest
import torch

from mechkit import load_model
from mechkit.errors import DataError
from mechkit.probes import Labelled, behaviour_labels, collect, fit_probe
from mechkit.probes.effect import Rate, steering_effect
from mechkit.tasks import task

MID = "blocks.0.hook_resid_mid"


@pytest.fixture(scope="module")
def setup():
    torch.set_num_threads(1)
    model = load_model("organism:sandbagging", device="cpu")
    t = task("sandbagging")
    train = Labelled.from_pairs(t.generate(100, seed=0, split="train"))
    probe = fit_probe(collect(model, train, [MID], progress=False)[MID], train.labels, MID, method="diff-means")
    return model, t, probe, t.generate(60, seed=1, split="test")


def test_rows_match_the_unsteered_behaviour_and_steering_changes_it(setup):
    model, t, probe, pairs = setup
    effect = steering_effect(model, probe, pairs, [-8.0], ablate=True, labels=t.accuracy_labels, batch_size=16)
    assert [r.name for r in effect.rows] == ["none", "alpha -8", "ablate"] and effect.n == 60
    behaviour = behaviour_labels(model, pairs)  # top == answer on clean rows, then corrupted rows
    assert effect.rows[0].clean.hits == int(behaviour[:60].sum())
    assert effect.rows[1].clean.value <= 0.05 and effect.rows[1].corrupted.value >= 0.9
    doc = json.loads(json.dumps(effect.to_dict(), allow_nan=False))
    assert doc["labels"] == list(t.accuracy_labels) and doc["rows"][1]["alpha"] == -8.0
    assert "sandbagged with cue" in effect.lines()[1]


def test_wilson_interval():
    lo, hi = Rate(0, 100).ci
    assert lo == 0.0 and 0.03 < hi < 0.04  # 3.7%: never the empty [0, 0] of a normal interval
    lo, hi = Rate(50, 100).ci
    assert math.isclose(lo, 0.4038, abs_tol=1e-3) and math.isclose(hi, 0.5962, abs_tol=1e-3)


def test_bad_arguments(setup):
    model, _, probe, pairs = setup
    with pytest.raises(DataError, match="finite"):
        steering_effect(model, probe, pairs, [float("inf")])
    with pytest.raises(DataError, match="positions"):
        steering_effect(model, probe, pairs, [1.0], positions="middle")
