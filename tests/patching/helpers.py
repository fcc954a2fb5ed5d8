"""Small models and prompt pairs shared by the patching tests."""

import contextlib
import io

import torch

from mechkit import metrics as M
from mechkit._types import PromptPairs
from tests.conftest import tiny_hooked

MODELS = {
    # GPT-2-shaped: LayerNorm, GELU MLPs, absolute positions
    "gpt2ish": lambda: tiny_hooked(seed=1),
    "attn_only": lambda: tiny_hooked(seed=3, attn_only=True, n_heads=3, d_head=4, d_model=12),
    # rotary positions, RMSNorm, gated MLP, grouped-query attention
    "rotary": lambda: tiny_hooked(seed=2, positional_embedding_type="rotary", normalization_type="RMS", rotary_dim=4,
                                  n_heads=4, n_key_value_heads=2, d_head=8, act_fn="silu", gated_mlp=True),
    # positions added to queries and keys in every layer
    "shortformer": lambda: tiny_hooked(seed=4, positional_embedding_type="shortformer"),
}


def make_pairs(batch=2, n_pos=4, seed=0, ragged=False) -> PromptPairs:
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(4, 60, (batch, n_pos), generator=g)
    corrupted = clean.clone()
    corrupted[:, 1] = torch.randint(4, 60, (batch,), generator=g)
    corrupted[-1, n_pos - 2] = 5
    answer_pos = torch.full((batch,), n_pos - 1)
    if ragged:
        answer_pos[0] = n_pos - 2
    answer, wrong = torch.randint(4, 60, (2, batch), generator=g)
    return PromptPairs(clean, corrupted, answer, wrong, answer_pos)


def tl_sweep(tl_name, model, pairs, metric_fn, direction="denoising"):
    """TransformerLens's own sweep, with the batch mean of a mechkit metric."""
    from transformer_lens import patching

    base, source = (pairs.corrupted, pairs.clean) if direction == "denoising" else (pairs.clean, pairs.corrupted)
    _, cache = model.run_with_cache(source)
    with contextlib.redirect_stderr(io.StringIO()):  # TransformerLens's own progress bars
        return getattr(patching, tl_name)(model, base, cache, lambda logits: metric_fn(logits, pairs).mean())


def logit_diff(logits, pairs):
    return M.logit_diff(logits, pairs)
