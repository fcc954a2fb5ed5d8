"""Wired organisms: the ground-truth circuit carries the behaviour; single circuit heads matter."""

import json

import pytest

import mechkit.organisms as org
from mechkit import load_model
from mechkit._types import Edge, Node
from mechkit.models import organisms_dir
from mechkit.organisms.checks import circuit_checks, patched_logit_diff

WIRED = ["wired-induction", "wired-chekhov"]


@pytest.fixture(scope="module", params=WIRED)
def wired(request):
    name = request.param
    card = json.loads((organisms_dir() / name / "card.json").read_text())
    model = load_model(f"organism:{name}", device="cpu")
    return name, model, card, org.task(name).generate(200, seed=31, split="test")


def test_ground_truth_uses_mechkit_names(wired):
    _, model, card, _ = wired
    truth = card["ground_truth"]
    nodes = {Node.parse(n).name for n in truth["nodes"]}
    for e in truth["edges"]:
        edge = Edge.parse(e)
        assert edge.src in nodes and edge.dst in nodes
    assert {"embed", "logits"} <= nodes


def test_complement_patching_keeps_the_logit_difference(wired):
    name, model, card, pairs = wired
    checks = circuit_checks(model, pairs, card["ground_truth"]["nodes"])
    assert checks["clean_logit_diff"] >= 2 and checks["corrupted_logit_diff"] < 0
    assert checks["complement_patched_fraction_kept"] >= 0.95
    assert abs(checks["complement_patched_fraction_kept"] - card["circuit_checks"]["complement_patched_fraction_kept"]) < 0.05


def test_patching_a_single_circuit_head_drops_the_logit_difference(wired):
    name, model, card, pairs = wired
    clean = patched_logit_diff(model, pairs, [])
    heads = [n for n in card["ground_truth"]["nodes"] if Node.parse(n).kind == "head"]
    for head in heads:
        corrupted_drop = 1 - patched_logit_diff(model, pairs, [head]) / clean
        zero_drop = 1 - patched_logit_diff(model, pairs, [head], source="zero") / clean
        assert zero_drop >= 0.9, (head, zero_drop)
        if (name, head) == ("wired-chekhov", "L0H0"):
            # the owner head reads only the story prefix, which the corruption leaves unchanged
            assert abs(corrupted_drop) < 0.05
        else:
            assert corrupted_drop >= 1.5, (head, corrupted_drop)  # the answer flips
        assert abs(corrupted_drop - card["circuit_checks"]["single_head_corrupted_patch_drop"][head]) < 0.1
    distractor = card["ground_truth"]["distractors"][0]
    assert abs(1 - patched_logit_diff(model, pairs, [distractor]) / clean) < 0.05


def test_rebuilding_gives_the_shipped_weights():
    import torch

    from mechkit.organisms.wired import BUILDERS

    for name in WIRED:
        built, _ = BUILDERS[name](seed=0)
        shipped = load_model(f"organism:{name}", device="cpu")
        sd = shipped.state_dict()
        for k, v in built.state_dict().items():
            assert torch.equal(v, sd[k]), k
