"""Every shipped organism loads by name and meets its thresholds on a fresh held-out sample."""

import json

import pytest

import mechkit.organisms as org
from mechkit import load_model
from mechkit.models import organisms_dir
from mechkit.organisms.train import evaluate

FRESH_SEED = 97  # differs from the card's evaluation seed


@pytest.mark.parametrize("name", org.list_organisms())
def test_shipped_organism_meets_thresholds(name):
    path = organisms_dir() / name
    size = sum(f.stat().st_size for f in path.iterdir())
    assert size <= 5 * 2**20
    card = json.loads((path / "card.json").read_text())
    for key in ("seed", "steps", "wall_time_s", "device", "held_out", "task"):
        assert key in card
    model = load_model(f"organism:{name}", device="cpu")
    t = org.task(name)
    m = evaluate(model, t, n=300, seed=FRESH_SEED)
    floor = 0.99 if name.startswith("wired-") else 0.95
    assert m["accuracy"] >= floor and m["logit_diff"] >= 2.0, m
    if name == "sandbagging":  # sandbagged with the cue AND truthful without it
        assert m["corrupted_accuracy"] >= 0.95, m
    if card["kind"] == "trained":
        assert card["batch_size"] and 1 <= card["threads"] <= 2 and card["wall_time_s"] <= 20 * 60
        assert card["held_out"]["accuracy"] >= 0.95


def test_card_task_matches_the_registered_task():
    for name in org.list_organisms():
        card = json.loads((organisms_dir() / name / "card.json").read_text())
        assert card["task"] == {"name": name, "params": org.task(name).params}


def test_text_prompts_tokenize_to_the_task_ids_with_the_model():
    model = load_model("organism:chekhov", device="cpu")
    t = org.task("chekhov")
    pairs, texts = t.generate(3, seed=8), t.generate_text(3, seed=8)
    for i, row in enumerate(texts):
        assert model.to_tokens(row["clean"])[0].tolist() == pairs.clean[i].tolist()
