"""Evaluate an SAE on a model: reconstruction, sparsity, and what splicing it in costs the model.

>>> result = evaluate_sae(model, load_sae("saes/L1"), tokens)   # doctest: +SKIP
>>> Console().print(eval_table(result))                        # doctest: +SKIP

===================  ==========================================================================
field                meaning
===================  ==========================================================================
explained_variance   1 - sum |x - sae(x)|^2 / sum |x - mean(x)|^2, pooled over tokens
l0                   mean number of active features per token
dead_fraction        features that never fire on these tokens / d_sae
ce_clean             next-token cross-entropy of the model as is
ce_spliced           ... with the hook's activation replaced by the SAE's reconstruction
ce_zero              ... with the hook's activation zeroed
ce_recovered         (ce_zero - ce_spliced) / (ce_zero - ce_clean); 1.0 = lossless
kl_spliced           mean KL(clean || spliced) of the next-token distributions, nats
===================  ==========================================================================

On token rows the cross-entropies are next-token losses at every position. On ``PromptPairs``
(the organisms are trained on the answer alone) they are the loss of the task's answer at
``answer_pos``: ``answer`` on clean prompts, ``wrong`` on corrupted ones; KL likewise. Positions
after a row's length (padding) are excluded everywhere; with ``skip_first`` the first position
is neither replaced nor counted (for SAEs trained without BOS tokens).
"""

from dataclasses import asdict, dataclass

import torch
from jaxtyping import Int
from sae_lens import SAE
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from mechkit._types import PromptPairs
from mechkit.models import check_hook_name
from mechkit.sae.cache import _as_sequences
from mechkit.sae.io import check_sae_fits, sae_hook


@dataclass(frozen=True)
class SAEEval:
    hook: str
    n_tokens: int
    d_sae: int
    explained_variance: float
    mse: float
    l0: float
    dead_features: int
    dead_fraction: float
    ce_clean: float
    ce_spliced: float
    ce_zero: float
    ce_recovered: float
    kl_spliced: float

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def evaluate_sae(
    model: HookedTransformer,
    sae: SAE,
    data: Int[Tensor, "batch pos"] | PromptPairs,
    hook: str | None = None,
    batch_size: int = 32,
    skip_first: bool = False,
    progress: bool = False,
) -> SAEEval:
    """Measure ``sae`` on ``data`` (token rows, or PromptPairs: clean and corrupted prompts)."""
    hook = check_hook_name(model, sae_hook(sae, hook))
    check_sae_fits(model, sae, hook)
    tokens, lengths = _as_sequences(data)
    answers = torch.cat([data.answer, data.wrong]) if isinstance(data, PromptPairs) else None
    device = model.cfg.device
    sae = sae.to(device)
    sq_err = sum_x = sum_x2 = l0 = 0.0
    n_tok = 0
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool, device=device)
    ce = {"clean": 0.0, "spliced": 0.0, "zero": 0.0}
    kl, n_pred = 0.0, 0
    for start in tqdm(range(0, len(tokens), batch_size), desc="evaluating SAE", disable=not progress):
        lens = lengths[start : start + batch_size].to(device)
        batch = tokens[start : start + batch_size, : int(lens.max())].to(device)
        keep = torch.arange(batch.shape[1], device=device)[None] < lens[:, None]  # [batch, pos]
        if skip_first:
            keep[:, 0] = False
        stats: dict[str, Tensor] = {}

        def splice(act: Tensor, hook) -> Tensor:
            feats = sae.encode(act)
            recon = sae.decode(feats).to(act.dtype)
            x, r, f = act[keep].float(), recon[keep].float(), feats[keep]
            stats.update(sq=(x - r).pow(2).sum(), x=x.sum(0), x2=x.pow(2).sum(), l0=(f != 0).sum(), n=len(x))
            stats["fired"] = (f != 0).any(0)
            return torch.where(keep[..., None], recon, act)

        def zero(act: Tensor, hook) -> Tensor:
            return torch.where(keep[..., None], torch.zeros_like(act), act)

        logits_clean = model(batch).float()
        with model.hooks(fwd_hooks=[(hook, splice)]):
            logits_spliced = model(batch).float()
        with model.hooks(fwd_hooks=[(hook, zero)]):
            logits_zero = model(batch).float()
        sq_err += stats["sq"].item()
        sum_x = stats["x"] + sum_x
        sum_x2 += stats["x2"].item()
        l0 += stats["l0"].item()
        n_tok += stats["n"]
        fired |= stats["fired"]
        width = batch.shape[1]
        if answers is None:  # position p predicts token p + 1, both real
            pred = torch.arange(width, device=device)[None] < (lens[:, None] - 1)  # [batch, pos]
            targets = torch.cat([batch[:, 1:], batch[:, :1]], 1)  # last column unused
        else:  # the task's answer at answer_pos (= length - 1)
            pred = torch.arange(width, device=device)[None] == (lens[:, None] - 1)
            targets = answers[start : start + batch_size].to(device)[:, None].expand(-1, width)
        logp_clean = logits_clean.log_softmax(-1)
        for name, logits in (("clean", logits_clean), ("spliced", logits_spliced), ("zero", logits_zero)):
            nll = -logits.log_softmax(-1).gather(-1, targets[..., None])[..., 0]
            ce[name] += nll[pred].sum().item()
        logp_spliced = logits_spliced.log_softmax(-1)
        kl += (logp_clean.exp() * (logp_clean - logp_spliced)).sum(-1)[pred].sum().item()
        n_pred += int(pred.sum())
    total_var = sum_x2 - (sum_x.pow(2).sum().item() / n_tok)
    ce = {k: v / max(n_pred, 1) for k, v in ce.items()}
    dead = int((~fired).sum())
    return SAEEval(
        hook=hook,
        n_tokens=n_tok,
        d_sae=sae.cfg.d_sae,
        explained_variance=1 - sq_err / total_var,
        mse=sq_err / n_tok,
        l0=l0 / n_tok,
        dead_features=dead,
        dead_fraction=dead / sae.cfg.d_sae,
        ce_clean=ce["clean"],
        ce_spliced=ce["spliced"],
        ce_zero=ce["zero"],
        ce_recovered=(ce["zero"] - ce["spliced"]) / (ce["zero"] - ce["clean"]),
        kl_spliced=kl / max(n_pred, 1),
    )


def eval_table(result: SAEEval, title: str | None = None):
    """A rich Table of an ``SAEEval``."""
    from rich.table import Table

    table = Table(title=title or f"SAE on {result.hook}", show_header=False)
    rows = [
        ("tokens", f"{result.n_tokens:,}"),
        ("features", f"{result.d_sae:,}"),
        ("explained variance", f"{result.explained_variance:.4f}"),
        ("MSE per token", f"{result.mse:.4g}"),
        ("L0", f"{result.l0:.2f}"),
        ("dead features", f"{result.dead_features} ({result.dead_fraction:.1%})"),
        ("CE clean / spliced / zero", f"{result.ce_clean:.4f} / {result.ce_spliced:.4f} / {result.ce_zero:.4f}"),
        ("CE loss recovered", f"{result.ce_recovered:.4f}"),
        ("KL(clean || spliced)", f"{result.kl_spliced:.4g}"),
    ]
    for key, value in rows:
        table.add_row(key, value)
    return table
