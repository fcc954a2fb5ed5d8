"""LoRA adapters on a base checkpoint: merged logits equal peft's, the base is checked by
fingerprint, and bad adapter directories give one-line errors."""

import json

import pytest
import torch

from mechkit.errors import SpecError
from mechkit.models import adapters, fingerprint, load_model
from tests.console import mechkit
from tests.models.test_loading import _gpt2, _llama, save_checkpoint


def _adapter(tmp_path, seed=0):
    """A tiny Llama base checkpoint and a random (non-zero) LoRA adapter on it, saved."""
    from peft import LoraConfig, get_peft_model

    base_dir = tmp_path / "base"
    hf = save_checkpoint(_llama, base_dir, seed=seed)
    base_fp = fingerprint(hf)
    torch.manual_seed(1)
    config = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    peft_model = get_peft_model(hf, config)
    card = {"name": "tiny-adapter", "base": {"spec": str(base_dir), "fingerprint": base_fp}, "fingerprint": None}
    path = adapters.save_adapter(peft_model, tmp_path / "adapter", card)
    return path, peft_model, base_dir


def test_merged_model_matches_peft(tmp_path):
    path, peft_model, _ = _adapter(tmp_path)
    tokens = torch.tensor([[1, 5, 9, 14, 7, 30]])
    with torch.no_grad():
        want = peft_model(input_ids=tokens).logits
        model = load_model(path, device="cpu")
        got = model(tokens)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    # the adapter changes the model: the plain base differs
    base = load_model(tmp_path / "base", device="cpu")
    with torch.no_grad():
        assert (base(tokens) - want).abs().max() > 1e-3
    assert sorted(p.name for p in path.iterdir()) == ["adapter_config.json", "adapter_model.safetensors", "card.json"]


def test_card_fingerprint_binds_the_merged_weights(tmp_path):
    path, _, _ = _adapter(tmp_path)
    merged_fp = fingerprint(load_model(path, device="cpu"))
    card = adapters.read_card(path)
    adapters.write_card(path, {**card, "fingerprint": merged_fp})
    assert fingerprint(load_model(path, device="cpu")) == merged_fp
    adapters.write_card(path, {**card, "fingerprint": "sha256:" + "0" * 64})
    with pytest.raises(SpecError, match="merges differently"):
        load_model(path, device="cpu")


@pytest.mark.parametrize("other", ["weights", "architecture"])
def test_wrong_base_names_both_fingerprints(tmp_path, other):
    path, _, _ = _adapter(tmp_path)
    wrong = save_checkpoint(_llama if other == "weights" else _gpt2, tmp_path / "other", seed=7)
    card = adapters.read_card(path)
    with pytest.raises(SpecError) as err:
        adapters.load_adapter(path, base=str(tmp_path / "other"))
    message = str(err.value)
    assert card["base"]["fingerprint"] in message and fingerprint(wrong) in message
    assert "\n" not in message


def test_wrong_base_through_the_console_script(tmp_path):
    path, _, _ = _adapter(tmp_path)
    save_checkpoint(_llama, tmp_path / "other", seed=7)
    card = adapters.read_card(path)
    card["base"]["spec"] = str(tmp_path / "other")
    adapters.write_card(path, card)
    line = mechkit("info", path).assert_one_line_error()
    assert "was trained on" in line and card["base"]["fingerprint"] in line


@pytest.mark.parametrize("damage", ["weights", "config-field", "config-json", "card", "missing-tensor"])
def test_damaged_adapter_is_one_line(tmp_path, damage):
    from safetensors.torch import load_file, save_file

    path, _, _ = _adapter(tmp_path)
    if damage == "weights":
        (path / adapters.ADAPTER_WEIGHTS).write_bytes(b"\x00" * 100)
        match = "not a readable safetensors file"
    elif damage == "config-field":
        config = json.loads((path / adapters.ADAPTER_CONFIG).read_text())
        (path / adapters.ADAPTER_CONFIG).write_text(json.dumps({**config, "exec_this": "os.system"}))
        match = "not a plain LoRA config"
    elif damage == "config-json":
        (path / adapters.ADAPTER_CONFIG).write_text("[" * 100_000)
        match = "not valid JSON"
    elif damage == "card":
        (path / adapters.CARD).write_text(json.dumps({"name": "x"}))
        match = "does not name its base model"
    else:
        weights = load_file(path / adapters.ADAPTER_WEIGHTS)
        weights.pop(sorted(weights)[0])
        save_file(weights, path / adapters.ADAPTER_WEIGHTS)
        match = "does not fit its config"
    with pytest.raises(SpecError, match=match) as err:
        load_model(path, device="cpu")
    assert "\n" not in str(err.value)


def test_interrupted_save_leaves_the_previous_adapter(tmp_path, monkeypatch):
    path, peft_model, _ = _adapter(tmp_path)
    before = {p.name: p.read_bytes() for p in path.iterdir()}

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("safetensors.torch.save_file", boom)
    with pytest.raises(KeyboardInterrupt):
        adapters.save_adapter(peft_model, path, adapters.read_card(path))
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
