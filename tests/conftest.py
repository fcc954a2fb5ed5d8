"""Shared fixtures: small random models built in temp dirs, so nothing is downloaded."""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# one thread per worker when the suite runs in parallel (pytest -n): more would oversubscribe the cores
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, torch.get_num_threads()))

VOCAB = ["<unk>", "<bos>", "<eos>", "<pad>"] + [f"w{i}" for i in range(60)]


def word_tokenizer(save_dir=None):
    """A word-level fast tokenizer over VOCAB, saved to ``save_dir`` when given."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<bos>", eos_token="<eos>", pad_token="<pad>"
    )
    if save_dir is not None:
        fast.save_pretrained(save_dir)
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(save_dir, local_files_only=True)
    return fast


def tiny_hooked(seed=0, attn_only=False, **overrides):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    torch.manual_seed(seed)
    kw = dict(
        n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=16, d_vocab=len(VOCAB),
        act_fn="gelu", normalization_type="LN", attn_only=attn_only, seed=seed, device="cpu",
    )
    kw.update(overrides)
    return HookedTransformer(HookedTransformerConfig(**kw))


@pytest.fixture
def tiny_organism_dir(tmp_path, monkeypatch):
    """A saved random organism named 'tiny', reachable as ``organism:tiny``."""
    from mechkit.models import save_organism

    tok_dir = tmp_path / "tok"
    model = tiny_hooked()
    model.set_tokenizer(word_tokenizer(tok_dir))
    root = tmp_path / "organisms"
    save_organism(model, root / "tiny", card={"name": "tiny", "note": "random weights for tests"})
    monkeypatch.setenv("MECHKIT_ORGANISMS_DIR", str(root))
    return root / "tiny"


@pytest.fixture(scope="session")
def smollm2():
    """The real pretrained model mechkit ships (SmolLM2-135M-Instruct from its GGUF), loaded once
    per test session; its float32 conversion is cached under ``$MECHKIT_CACHE``."""
    from mechkit import load_model

    return load_model("smollm2-135m", device="cpu")
