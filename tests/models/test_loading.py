"""load_model: Hugging Face parity per architecture, organisms, and one-line errors."""

import json

import pytest
import torch
import transformers

from mechkit import load_model
from mechkit.errors import SpecError
from tests.conftest import VOCAB, word_tokenizer

V = len(VOCAB)


def _gpt2():
    return transformers.GPT2LMHeadModel(
        transformers.GPT2Config(vocab_size=V, n_positions=32, n_embd=32, n_layer=2, n_head=4)
    )


def _neox():
    return transformers.GPTNeoXForCausalLM(
        transformers.GPTNeoXConfig(
            vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=32, rotary_pct=0.25,
        )
    )


def _llama():
    return transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
        )
    )


def _mistral():
    return transformers.MistralForCausalLM(
        transformers.MistralConfig(
            vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
        )
    )


def _qwen2():
    return transformers.Qwen2ForCausalLM(
        transformers.Qwen2Config(
            vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
        )
    )


BUILDERS = {"gpt2": _gpt2, "pythia": _neox, "llama": _llama, "mistral": _mistral, "qwen2": _qwen2}


def save_checkpoint(builder, path, seed=0):
    torch.manual_seed(seed)
    hf = builder().eval()
    # random init leaves LayerNorm/RMSNorm weights at 1: perturb them so the test would
    # catch a conversion that drops or misplaces them
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name or "ln" in name:
                p.add_(0.1 * torch.randn_like(p))
    hf.save_pretrained(path)
    word_tokenizer(path)
    return hf


@pytest.mark.parametrize("arch", list(BUILDERS))
def test_logits_match_hugging_face(arch, tmp_path):
    # a folder name containing the architecture's name must not confuse the loader
    path = tmp_path / f"{arch}-llama-ckpt"
    hf = save_checkpoint(BUILDERS[arch], path)
    model = load_model(path, device="cpu")
    tokens = torch.randint(0, V, (3, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(tokens).logits
        got = model(tokens)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= 1e-4
    assert model.tokenizer is not None and model.tokenizer.vocab_size == V


def test_organism_round_trip(tiny_organism_dir):
    from mechkit.models import available_organisms, fingerprint

    assert "tiny" in available_organisms()
    a = load_model("organism:tiny", device="cpu")
    b = load_model(tiny_organism_dir, device="cpu")  # the same organism by path
    assert fingerprint(a) == fingerprint(b)
    assert a.tokenizer.convert_tokens_to_ids("w5") == VOCAB.index("w5")


def test_explicit_device_and_dtype(tiny_organism_dir):
    model = load_model("organism:tiny", device="cpu", dtype="bfloat16")
    assert model.cfg.device == "cpu"
    assert next(model.parameters()).dtype == torch.bfloat16


def _error(spec) -> str:
    with pytest.raises(SpecError) as info:
        load_model(spec, device="cpu")
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_unknown_spec():
    assert "unknown model spec 'no-such-model'" in _error("no-such-model")


def test_unknown_organism(tiny_organism_dir):
    message = _error("organism:tinyy")
    assert "no model organism 'tinyy'" in message and "'tiny'" in message


def test_pretrained_name_not_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    message = _error("gpt2")
    assert "not in the local Hugging Face cache" in message and "empty-cache" in message


def test_pretrained_name_from_cache(tmp_path, monkeypatch):
    """A TransformerLens name resolves through the local HF cache, offline."""
    import huggingface_hub.constants as c

    cache = tmp_path / "hub"
    snapshot = cache / "models--gpt2" / "snapshots" / ("0" * 40)
    hf = save_checkpoint(_gpt2, snapshot)
    (cache / "models--gpt2" / "refs").mkdir(parents=True)
    (cache / "models--gpt2" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    model = load_model("gpt2", device="cpu")
    tokens = torch.randint(0, V, (2, 8))
    with torch.no_grad():
        assert (model(tokens) - hf(tokens).logits).abs().max().item() <= 1e-4
    assert model.cfg.model_name == "gpt2"


def test_missing_config(tmp_path):
    (tmp_path / "weights.safetensors").write_bytes(b"")
    assert "has no config.json" in _error(tmp_path)


def test_missing_weights(tmp_path):
    save_checkpoint(_gpt2, tmp_path / "c")
    (tmp_path / "c" / "model.safetensors").unlink()
    assert "no *.safetensors weights" in _error(tmp_path / "c")


def test_pickled_weights_refused(tmp_path):
    save_checkpoint(_gpt2, tmp_path / "c")
    (tmp_path / "c" / "model.safetensors").rename(tmp_path / "c" / "pytorch_model.bin")
    assert "never unpickles" in _error(tmp_path / "c")


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupted_safetensors(tmp_path, damage):
    save_checkpoint(_gpt2, tmp_path / "c")
    weights = tmp_path / "c" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00garbage" * 10)
    assert "not a readable safetensors file" in _error(tmp_path / "c")


def test_corrupted_organism_weights(tiny_organism_dir):
    weights = tiny_organism_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert "not a readable safetensors file" in _error("organism:tiny")


def test_unsupported_architecture(tmp_path):
    save_checkpoint(_gpt2, tmp_path / "c")
    config = json.loads((tmp_path / "c" / "config.json").read_text())
    config["architectures"] = ["MambaForCausalLM"]
    (tmp_path / "c" / "config.json").write_text(json.dumps(config))
    assert "unsupported architecture 'MambaForCausalLM'" in _error(tmp_path / "c")


def test_tokenizer_that_cannot_load_offline(tmp_path):
    save_checkpoint(_gpt2, tmp_path / "c")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (tmp_path / "c" / name).unlink(missing_ok=True)
    assert "cannot be loaded offline" in _error(tmp_path / "c")


def test_cli_error_is_one_line_with_exit_code_2(tmp_path):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "mechkit", "info", str(tmp_path / "nowhere")],
        capture_output=True, text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith("error: unknown model spec")


def test_model_remembers_its_spec(tiny_organism_dir, tmp_path):
    from mechkit.models import spec_of

    assert spec_of(load_model("organism:tiny", device="cpu")) == "organism:tiny"
    assert spec_of(load_model(tiny_organism_dir, device="cpu")) == str(tiny_organism_dir.resolve())


@pytest.mark.parametrize("change", ["more-layers", "missing-tensor"])
def test_weights_that_disagree_with_config_are_refused(tmp_path, change):
    # issue: such checkpoints loaded with random weights and a new fingerprint on every load
    from safetensors.torch import load_file, save_file

    save_checkpoint(_llama, tmp_path)
    if change == "more-layers":
        config = json.loads((tmp_path / "config.json").read_text())
        config["num_hidden_layers"] = 4
        (tmp_path / "config.json").write_text(json.dumps(config))
    else:
        tensors = load_file(tmp_path / "model.safetensors")
        del tensors[next(k for k in sorted(tensors) if "layers.1.mlp" in k)]
        save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(SpecError, match="config.json and weights disagree"):
        load_model(tmp_path, device="cpu")


def test_bloom_fingerprint_is_stable(tmp_path):
    # BLOOM (ALiBi): TransformerLens's unused position table was uninitialised memory
    from mechkit.models import fingerprint

    bloom = lambda: transformers.BloomForCausalLM(  # noqa: E731
        transformers.BloomConfig(vocab_size=V, hidden_size=32, n_layer=2, n_head=4))
    save_checkpoint(bloom, tmp_path)
    assert fingerprint(load_model(tmp_path, device="cpu")) == fingerprint(load_model(tmp_path, device="cpu"))


def test_load_config_reads_no_weights(tmp_path, monkeypatch, tiny_organism_dir):
    # `mechkit export` needs d_model, layers and heads only: load_config reads config files alone
    from mechkit.models import loading

    save_checkpoint(_llama, tmp_path / "llama")
    expected = {spec: load_model(spec, device="cpu").cfg for spec in ("organism:tiny", str(tmp_path / "llama"))}
    monkeypatch.setattr(loading, "load_file", lambda *a, **k: pytest.fail("weights were read"))
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: pytest.fail("weights were read"))
    for spec, cfg in expected.items():
        got = loading.load_config(spec)
        assert (got.d_model, got.n_layers, got.n_heads, got.n_key_value_heads) == (cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.n_key_value_heads)


def test_export_does_not_load_the_model(tmp_path, monkeypatch):
    from pathlib import Path

    from typer.testing import CliRunner

    import mechkit.models
    from mechkit.cli import app
    from mechkit.models import loading

    for module in (loading, mechkit.models):
        monkeypatch.setattr(module, "load_model", lambda *a, **k: pytest.fail("export loaded the model"))
    shipped = Path(__file__).resolve().parents[2] / "circuits" / "wired-induction.circuit.json"
    res = CliRunner().invoke(app, ["export", str(shipped), "--to", "eap-ig", "--out", str(tmp_path / "g.json")])
    assert res.exit_code == 0, res.output
    monkeypatch.undo()
    assert json.loads((tmp_path / "g.json").read_text())["cfg"]["d_model"] == load_model("organism:wired-induction", device="cpu").cfg.d_model
