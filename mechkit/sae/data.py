"""Where SAE tokens come from: a task's prompt pairs, a token file, a text file, or random tokens.

Source strings (used by the ``mechkit sae`` commands):

==========================  ====================================================================
``task:NAME``               ``mechkit.organisms.task(NAME).generate(n, seed, split)`` prompt pairs
``tokens:PATH``             a safetensors file with ``tokens`` [batch, pos] (int)
``text:PATH``               a UTF-8 text file, tokenized and cut into rows of ``pos`` tokens
``random``                  ``n`` rows of ``pos`` uniform random tokens (smoke tests, benchmarks)
==========================  ====================================================================
"""

from pathlib import Path

import torch
from jaxtyping import Int
from safetensors.torch import load_file
from torch import Tensor
from transformer_lens import HookedTransformer

from mechkit._types import PromptPairs
from mechkit.errors import DataError
from mechkit.sae.io import regular_file, safetensors_shapes

KINDS = ("task", "tokens", "text", "random")
MAX_TEXT_BYTES = 1 << 30
_INT_DTYPES = ("I64", "I32", "I16", "I8", "U8", "U16", "U32")


def check_source(source: str) -> str:
    """Check a source string (and its file) before any model is loaded; its kind."""
    kind, _, arg = source.partition(":")
    if kind not in KINDS or (kind != "random" and not arg) or (kind == "random" and arg):
        raise DataError(f"unknown token source {source!r}: use task:NAME, tokens:PATH, text:PATH or random")
    if kind == "tokens":
        dtype, shape = safetensors_shapes(Path(arg), "token file", "pass a safetensors file with int tokens "
                                          "[batch, pos]").get("tokens", ("", []))
        if len(shape) != 2 or dtype not in _INT_DTYPES:
            raise DataError(f"{arg} needs a 2-d int tensor named 'tokens' [batch, pos]")
    elif kind == "text":
        st = regular_file(Path(arg), "text file", "pass a UTF-8 text file")
        if st.st_size > MAX_TEXT_BYTES:
            raise DataError(f"text file {arg} is {st.st_size:,} bytes, more than {MAX_TEXT_BYTES:,}: use a part of it")
    return kind


def load_source(
    model: HookedTransformer, source: str, n: int = 256, seed: int = 0, split: str = "train", pos: int | None = None
) -> Int[Tensor, "batch pos"] | PromptPairs:
    """Token rows or prompt pairs from a source string (see the module docstring)."""
    pos = pos or model.cfg.n_ctx
    check_source(source)
    kind, _, arg = source.partition(":")
    if kind == "task":
        from mechkit.tasks import needs_model, task

        # real-model tasks (ioi, capitals, ...) are written in the model's own tokens
        return task(arg).generate(n, seed=seed, split=split, **({"model": model} if needs_model(arg) else {}))
    if kind == "tokens":
        tokens = load_file(arg)["tokens"][:n].long()
        if tokens.numel() == 0:
            raise DataError(f"{arg} holds no tokens")
        if int(tokens.min()) < 0 or int(tokens.max()) >= model.cfg.d_vocab:
            raise DataError(f"{arg} holds token ids outside the model's vocabulary 0..{model.cfg.d_vocab - 1}")
        return tokens
    if kind == "text":
        if model.tokenizer is None:
            raise DataError("this model has no tokenizer: use tokens:PATH or task:NAME")
        try:
            text = Path(arg).read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError as err:
            raise DataError(f"{arg} is not UTF-8 text (at byte {err.start}): save it as UTF-8") from None
        ids = model.tokenizer(text)["input_ids"]
        rows = len(ids) // pos
        if rows == 0:
            raise DataError(f"{arg} has {len(ids)} tokens, fewer than one row of {pos}")
        return torch.tensor(ids[: rows * pos]).reshape(rows, pos)[:n]
    if kind == "random":
        gen = torch.Generator().manual_seed(seed)
        return torch.randint(0, model.cfg.d_vocab, (n, pos), generator=gen)
    raise DataError(f"unknown token source {source!r}: use task:NAME, tokens:PATH, text:PATH or random")
