"""Evidence for attention-head roles, measured as the IOI paper (Wang et al. 2022) does: where a
head attends, and what its OV circuit copies.

>>> attention_between(model, tokens, dest, src)          # doctest: +SKIP
tensor([[0.01, ...]])                                     # [layer, head], mean over prompts
>>> scores = repeated_token_scores(model, seq_len=20)     # doctest: +SKIP
>>> scores.induction.argmax()                             # doctest: +SKIP
>>> ov_copy_scores(model, tokens, positions)              # doctest: +SKIP

- :func:`attention_between`: the attention probability from one position to another in each
  prompt (e.g. from the final token to the indirect object), per head.
- :func:`repeated_token_scores`: on a random token sequence repeated twice, the attention of the
  second copy to the token after its first occurrence (induction), to its first occurrence
  (duplicate token), and of every token to the one before it (previous token).
- :func:`ov_copy_scores`: the fraction of tokens that a head's OV circuit, fed the residual
  stream after block 0 at that token, writes into the unembedding's top ``k`` (copy score; the
  negative copy score negates the head's output first).

Nothing here is model-specific; the roles themselves (which head is a name mover) are read
off these numbers by whoever studies a task.
"""

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from mechkit.discovery.forward import mechkit_runs


def _patterns(model: HookedTransformer, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "layer batch head q k"]:
    names = {f"blocks.{layer}.attn.hook_pattern" for layer in range(model.cfg.n_layers)}
    with torch.no_grad(), mechkit_runs(model):
        _, cache = model.run_with_cache(tokens.to(model.cfg.device), names_filter=lambda n: n in names)
    return torch.stack([cache[f"blocks.{layer}.attn.hook_pattern"].float().cpu() for layer in range(model.cfg.n_layers)])


def attention_between(
    model: HookedTransformer,
    tokens: Int[Tensor, "batch pos"],
    dest: Int[Tensor, " batch"],
    src: Int[Tensor, " batch"],
) -> Float[Tensor, "layer head"]:
    """Mean over prompts of each head's attention from ``dest[b]`` to ``src[b]`` in prompt ``b``."""
    pattern = _patterns(model, tokens).permute(1, 3, 4, 0, 2)  # [batch, q, k, layer, head]
    rows = torch.arange(tokens.shape[0])
    return pattern[rows, dest.cpu(), src.cpu()].mean(0)


@dataclass(frozen=True)
class RepeatedTokenScores:
    """Mean attention per head on random tokens repeated twice, [layer, head] each."""

    induction: Float[Tensor, "layer head"]  # second copy -> token after its first occurrence
    duplicate: Float[Tensor, "layer head"]  # second copy -> its first occurrence
    previous: Float[Tensor, "layer head"]  # any token -> the token before it


def repeated_token_scores(
    model: HookedTransformer, seq_len: int = 20, n: int = 16, seed: int = 0, low: int = 1000
) -> RepeatedTokenScores:
    """Attention scores on ``n`` sequences of ``seq_len`` random tokens (ids >= ``low``, away
    from special and byte tokens) followed by the same tokens again."""
    gen = torch.Generator().manual_seed(seed)
    first = torch.randint(low, model.cfg.d_vocab, (n, seq_len), generator=gen)
    pattern = _patterns(model, torch.cat([first, first], dim=1))  # [layer, batch, head, q, k]
    dest = torch.arange(seq_len, 2 * seq_len)
    # skip the first position of the second copy: its induction target is position 1 only by
    # accident of the sequence start
    induction = pattern[..., dest[1:], dest[1:] - seq_len + 1].mean((1, -1))
    duplicate = pattern[..., dest, dest - seq_len].mean((1, -1))
    every = torch.arange(1, 2 * seq_len)
    previous = pattern[..., every, every - 1].mean((1, -1))
    return RepeatedTokenScores(induction, duplicate, previous)


def ov_copy_scores(
    model: HookedTransformer,
    tokens: Int[Tensor, "batch pos"],
    positions: Int[Tensor, " batch"],
    k: int = 5,
    negative: bool = False,
) -> Float[Tensor, "layer head"]:
    """Fraction of prompts whose token at ``positions[b]`` is among the top ``k`` logits of each
    head's OV output, the head fed the residual stream after block 0 at that position (through
    its own layer norm); the output goes through the final norm and the unembedding. With
    ``negative``, the output is negated first (negative name movers suppress what they read)."""
    cfg = model.cfg
    rows = torch.arange(tokens.shape[0])
    target = tokens[rows, positions.cpu()].to(cfg.device)  # [batch]
    hook = "blocks.0.hook_resid_post"
    with torch.no_grad(), mechkit_runs(model):
        _, cache = model.run_with_cache(tokens.to(cfg.device), names_filter=lambda n: n == hook)
        resid = cache[hook][rows.to(cfg.device), positions.to(cfg.device)]  # [batch, d_model]
        out = torch.empty(cfg.n_layers, cfg.n_heads)
        for layer, block in enumerate(model.blocks):
            x = block.ln1(resid[:, None])[:, 0]  # [batch, d_model]
            v = torch.einsum("bd,hde->bhe", x, block.attn.W_V)  # [batch, head, d_head]
            written = torch.einsum("bhe,hed->bhd", v, block.attn.W_O)  # [batch, head, d_model]
            if negative:
                written = -written
            logits = model.unembed(model.ln_final(written))  # [batch, head, d_vocab]
            top = logits.topk(k, dim=-1).indices  # [batch, head, k]
            out[layer] = (top == target[:, None, None]).any(-1).float().mean(0).cpu()
    return out
