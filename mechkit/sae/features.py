"""Per-feature statistics of an SAE on a model: frequency, top contexts, histograms, logit effects.

>>> stats = feature_stats(model, sae, tokens)          # doctest: +SKIP
>>> f = stats.most_frequent(1)[0]                      # doctest: +SKIP
>>> stats.node_name(f), stats.context_text(model, f, 0) # doctest: +SKIP
('F:blocks.1.hook_resid_post:17', 'the capital of [[zoria]] is')

==============  ======================  =================================================
field           shape                   meaning
==============  ======================  =================================================
frequency       [feature]               fraction of tokens on which the feature is active
max_act         [feature]               largest activation seen
top_acts        [feature, n_top]        the n_top largest activations (0 = none)
top_where       [feature, n_top, 2]     (row, position) of each of them in ``tokens``
hist            [feature, n_bins]       counts of nonzero activations in bins of [0, max_act]
tokens          [batch, pos]            the rows evaluated
lengths         [batch]                 real tokens per row
==============  ======================  =================================================
"""

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from sae_lens import SAE
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from mechkit._types import PromptPairs
from mechkit.models import check_hook_name
from mechkit.sae.cache import _as_sequences
from mechkit.sae.io import check_sae_fits, sae_hook


@dataclass(frozen=True)
class FeatureStats:
    hook: str
    frequency: Float[Tensor, " feature"]
    max_act: Float[Tensor, " feature"]
    top_acts: Float[Tensor, "feature n_top"]
    top_where: Int[Tensor, "feature n_top 2"]
    hist: Float[Tensor, "feature n_bins"]
    tokens: Int[Tensor, "batch pos"]
    lengths: Int[Tensor, " batch"]
    logit_weights: Float[Tensor, "feature d_vocab"]  # W_dec @ W_U: direct effect on the logits

    def node_name(self, feature: int) -> str:
        return f"F:{self.hook}:{feature}"

    def most_frequent(self, n: int) -> list[int]:
        return self.frequency.argsort(descending=True)[:n].tolist()

    def contexts(self, feature: int) -> list[tuple[int, int, float]]:
        """(row, position, activation) of the feature's top activations, largest first."""
        return [
            (int(r), int(p), float(a))
            for (r, p), a in zip(self.top_where[feature].tolist(), self.top_acts[feature].tolist())
            if a > 0
        ]

    def context_text(self, model: HookedTransformer, feature: int, i: int, window: int = 8) -> str:
        ctx = self.contexts(feature)
        if i >= len(ctx):
            return ""
        row, pos, _ = ctx[i]
        words = [model.to_single_str_token(t) for t in self.tokens[row, max(0, pos - window) : pos + 1].tolist()]
        words[-1] = f"[[{words[-1]}]]"
        return "".join(words) if any(w.startswith(" ") for w in words) else " ".join(words)

    def top_logit_tokens(self, model: HookedTransformer, feature: int, k: int = 10, sign: int = 1) -> list[str]:
        idx = (sign * self.logit_weights[feature]).topk(k).indices.tolist()
        return [model.to_single_str_token(t) for t in idx]


@torch.no_grad()
def feature_stats(
    model: HookedTransformer,
    sae: SAE,
    data: Int[Tensor, "batch pos"] | PromptPairs,
    hook: str | None = None,
    n_top: int = 10,
    n_bins: int = 30,
    batch_size: int = 64,
    progress: bool = False,
) -> FeatureStats:
    """Run the model on ``data`` and collect ``FeatureStats`` for every feature (two passes)."""
    hook = check_hook_name(model, sae_hook(sae, hook))
    check_sae_fits(model, sae, hook)
    tokens, lengths = _as_sequences(data)
    device = model.cfg.device
    sae = sae.to(device)
    d = sae.cfg.d_sae
    freq = torch.zeros(d, device=device)
    top_acts = torch.zeros(d, n_top, device=device)
    top_idx = torch.zeros(d, n_top, dtype=torch.long, device=device)
    n_tok, pos = 0, tokens.shape[1]

    def feature_batches(desc: str):
        for start in tqdm(range(0, len(tokens), batch_size), desc=desc, disable=not progress):
            lens = lengths[start : start + batch_size].to(device)
            batch = tokens[start : start + batch_size].to(device)
            _, cache = model.run_with_cache(batch, names_filter=[hook])
            feats = sae.encode(cache[hook]).float()  # [batch, pos, feature]
            keep = torch.arange(pos, device=device)[None] < lens[:, None]
            yield start, feats * keep[..., None], keep

    for start, feats, keep in feature_batches("feature stats"):
        freq += (feats > 0).sum((0, 1))
        n_tok += int(keep.sum())
        flat = feats.reshape(-1, d).T  # [feature, batch*pos]
        k = min(n_top, flat.shape[1])
        vals, idx = flat.topk(k, dim=1)
        both_v = torch.cat([top_acts, vals], 1)
        both_i = torch.cat([top_idx, idx + start * pos], 1)
        best = both_v.topk(n_top, dim=1).indices
        top_acts, top_idx = both_v.gather(1, best), both_i.gather(1, best)
    max_act = top_acts[:, 0]
    hist = torch.zeros(d, n_bins, device=device)
    edges = max_act.clamp(min=1e-12)
    for _, feats, _ in feature_batches("histograms"):
        flat = feats.reshape(-1, d)
        bins = (flat / edges * n_bins).long().clamp(max=n_bins - 1)
        hist.scatter_add_(1, bins.T, (flat > 0).float().T)
    w_dec = sae.W_dec.float()
    logit_weights = w_dec @ model.W_U.float()
    return FeatureStats(
        hook=hook,
        frequency=(freq / max(n_tok, 1)).cpu(),
        max_act=max_act.cpu(),
        top_acts=top_acts.cpu(),
        top_where=torch.stack([top_idx // pos, top_idx % pos], -1).cpu(),
        hist=hist.cpu(),
        tokens=tokens.cpu(),
        lengths=lengths.cpu(),
        logit_weights=logit_weights.cpu(),
    )
