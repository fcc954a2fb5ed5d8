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


def load_source(
    model: HookedTransformer, source: str, n: int = 256, seed: int = 0, split: str = "train", pos: int | None = None
) -> Int[Tensor, "batch pos"] | PromptPairs:
    """Token rows or prompt pairs from a source string (see the module docstring)."""
    pos = pos or model.cfg.n_ctx
    kind, _, arg = source.partition(":")
    if kind == "task":
        from mechkit.organisms import task

        return task(arg).generate(n, seed=seed, split=split)
    if kind == "tokens":
        tokens = load_file(arg).get("tokens")
        if tokens is None or tokens.ndim != 2:
            raise DataError(f"{arg} needs a 2-d int tensor named 'tokens' [batch, pos]")
        return tokens[:n].long()
    if kind == "text":
        if model.tokenizer is None:
            raise DataError("this model has no tokenizer: use tokens:PATH or task:NAME")
        ids = model.tokenizer(Path(arg).read_text())["input_ids"]
        rows = len(ids) // pos
        if rows == 0:
            raise DataError(f"{arg} has {len(ids)} tokens, fewer than one row of {pos}")
        return torch.tensor(ids[: rows * pos]).reshape(rows, pos)[:n]
    if kind == "random":
        gen = torch.Generator().manual_seed(seed)
        return torch.randint(0, model.cfg.d_vocab, (n, pos), generator=gen)
    raise DataError(f"unknown token source {source!r}: use task:NAME, tokens:PATH, text:PATH or random")
