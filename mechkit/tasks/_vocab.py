"""Word-level vocabularies and tokenizers for the model organisms.

Each task owns a fixed word list; token id = index in ``SPECIALS + words``. The tokenizer is a
``tokenizers`` WordLevel model wrapped as a ``PreTrainedTokenizerFast`` and always saved to a
directory, so ``transformers.AutoTokenizer.from_pretrained(dir)`` reloads it offline (which is
how TransformerLens re-creates tokenizers).
"""

import hashlib
from pathlib import Path

import torch
from jaxtyping import Int
from torch import Tensor

SPECIALS = ("<unk>", "<bos>", "<eos>", "<pad>")
UNK, BOS, EOS, PAD = range(4)


def build_tokenizer(vocab: list[str], save_dir: str | Path):
    """Build a word-level tokenizer over ``vocab`` (specials first) that prepends ``<bos>``, save it
    to ``save_dir`` and return it reloaded from there with ``AutoTokenizer``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(  # like TransformerLens: text -> <bos> + ids
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", BOS)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<bos>", eos_token="<eos>", pad_token="<pad>"
    )
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(save_dir)
    return AutoTokenizer.from_pretrained(save_dir, local_files_only=True)


def vocab_digest(vocab: list[str]) -> str:
    return hashlib.sha256("\n".join(vocab).encode()).hexdigest()[:12]


def mix_hash(code: Int[Tensor, " batch"], buckets: int) -> Int[Tensor, " batch"]:
    """A deterministic integer hash of non-negative codes (< 2**31) into ``buckets`` buckets."""
    h = (code.long() * 2654435761) % (2**32)
    h = (h ^ (h >> 13)) * 1274126177 % (2**32)
    return (h >> 7) % buckets


def generator(seed: int, split: str) -> torch.Generator:
    """The random stream for ``(seed, split)``: different splits never share a stream."""
    salt = {"train": 1, "test": 2}[split]
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + salt)


def random_perm_rows(gen: torch.Generator, rows: int, n: int) -> Int[Tensor, "rows n"]:
    """``rows`` independent random permutations of ``range(n)``."""
    return torch.rand(rows, n, generator=gen).argsort(dim=-1)
