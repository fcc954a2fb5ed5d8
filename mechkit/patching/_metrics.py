"""Metrics for patching: a name or a plain function, bound to one batch's clean/corrupted runs.

A user metric is ``metric(logits [batch, pos, d_vocab], pairs) -> [batch]``: one value per
prompt, and row-wise (row ``i`` may depend only on prompt ``i``), because the engine stacks
many patched copies of the batch into one forward pass and scores them together.

Built-in names and how much of the unembedding each needs (the engine computes only that,
so results stay exact):

=========================  ==========  ============================================
name                       scope       value per prompt
=========================  ==========  ============================================
``logit-diff``             columns     logit(answer) - logit(wrong) at answer_pos
``normalized-logit-diff``  columns     (ld - corrupted) / (clean - corrupted)
``kl``                     position    KL(clean || patched) at answer_pos
``answer-prob``            position    p(answer) at answer_pos
user function              full        whatever it returns
=========================  ==========  ============================================
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechkit import metrics as M
from mechkit._types import PromptPairs
from mechkit.errors import HookNameError, MechkitError, ShapeError, did_you_mean

MetricLike = str | Callable[[Tensor, PromptPairs], Tensor]


class MetricError(MechkitError, ValueError):
    """A metric that returned unusable values (NaN, infinite)."""


SCOPES = {
    "logit-diff": "columns",
    "normalized-logit-diff": "columns",
    "kl": "position",
    "answer-prob": "position",
}
_BY_FUNCTION = {M.logit_diff: "logit-diff", M.answer_prob: "answer-prob"}


def metric_name(metric: MetricLike) -> str:
    """The canonical name of a metric (a user function's ``__name__``)."""
    if isinstance(metric, str):
        if metric not in SCOPES:
            raise HookNameError(f"unknown metric {metric!r}; {did_you_mean(metric, SCOPES)}")
        return metric
    if metric in _BY_FUNCTION:
        return _BY_FUNCTION[metric]
    if not callable(metric):
        raise HookNameError(f"metric must be a name ({', '.join(SCOPES)}) or a function, got {type(metric).__name__}")
    return getattr(metric, "__name__", type(metric).__name__)


def metric_scope(metric: MetricLike) -> str:
    """``columns``, ``position`` or ``full``: how much of the logits the metric reads."""
    name = metric_name(metric)
    return "full" if _is_user(metric) else SCOPES[name]


def _is_user(metric: MetricLike) -> bool:
    return not isinstance(metric, str) and metric not in _BY_FUNCTION


@dataclass(frozen=True)
class BoundMetric:
    """A metric ready to score rows of one batch: ``score(logits, pairs, rows) -> [n]``.

    ``logits`` and ``pairs`` come from :func:`project` (so their shapes depend on ``scope``);
    ``rows`` [n] index the original batch, for metrics that need per-prompt references.
    """

    name: str
    scope: str
    fn: Callable[[Tensor, PromptPairs, Tensor], Tensor]
    # the same values from the [n, 2] (answer, wrong) logits alone, for built-in columns metrics
    on_columns: Callable[[Tensor], Tensor] | None = None

    def score(self, logits: Tensor, pairs: PromptPairs | None, rows: Int[Tensor, " n"]) -> Float[Tensor, " n"]:
        """Values of ``logits`` (from :func:`project`; with ``pairs=None``, [n, 2] answer and
        wrong logits for a metric with ``on_columns``)."""
        out = self.fn(logits, pairs, rows) if pairs is not None else self.on_columns(logits)
        n = logits.shape[0]
        if not isinstance(out, Tensor) or out.shape != (n,):
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ShapeError(
                f"metric {self.name!r} returned {got}, expected shape ({n},): return one value per prompt, not a mean"
            )
        if not torch.isfinite(out).all():
            raise MetricError(f"metric {self.name!r} returned NaN or infinite values: check it on the clean and corrupted runs")
        return out.float()


def needs_answer_logits(metric: MetricLike) -> bool:
    """Whether :func:`bind_metric` reads the clean and corrupted answer-position logits."""
    return not _is_user(metric) and metric_name(metric) in ("kl", "normalized-logit-diff")


def bind_metric(
    metric: MetricLike,
    clean_last: Float[Tensor, "batch d_vocab"] | None,
    corrupted_last: Float[Tensor, "batch d_vocab"] | None,
    pairs: PromptPairs,
) -> BoundMetric:
    """Bind ``metric`` to the clean and corrupted answer-position logits of ``pairs`` (``None``
    where :func:`needs_answer_logits` says the metric does not read them)."""
    name = metric_name(metric)
    if _is_user(metric):
        return BoundMetric(name, "full", lambda logits, p, rows: metric(logits, p))
    if name == "logit-diff":
        return BoundMetric(name, "columns", lambda logits, p, rows: M.logit_diff(logits, p), _difference)
    if name == "answer-prob":
        return BoundMetric(name, "position", lambda logits, p, rows: M.answer_prob(logits, p))
    if name == "kl":
        ref = clean_last.float()
        return BoundMetric(name, "position", lambda logits, p, rows: M.kl_div(logits, p, ref[rows.to(ref.device)]))
    # normalized-logit-diff: baselines are batch means of the clean and corrupted runs
    at = _answer_only(pairs)
    clean = M.logit_diff(clean_last[:, None], at).mean().item()
    corrupted = M.logit_diff(corrupted_last[:, None], at).mean().item()
    if abs(clean - corrupted) < 1e-12:
        raise MetricError(
            "clean and corrupted runs have the same mean logit difference: normalized-logit-diff is undefined, use logit-diff"
        )
    return BoundMetric(name, "columns", lambda logits, p, rows: M.normalized_logit_diff(logits, p, clean, corrupted),
                       lambda c: (_difference(c) - corrupted) / (clean - corrupted))


def _difference(columns: Float[Tensor, "n 2"]) -> Float[Tensor, " n"]:
    return columns[:, 0] - columns[:, 1]


def _answer_only(pairs: PromptPairs) -> PromptPairs:
    """``pairs`` re-pointed at logits that hold only the answer position (pos axis of size 1)."""
    zeros = torch.zeros_like(pairs.answer_pos)
    return PromptPairs(pairs.clean[:, :1], pairs.corrupted[:, :1], pairs.answer, pairs.wrong, zeros, task=pairs.task)


def _columns_only(pairs: PromptPairs) -> PromptPairs:
    """``pairs`` re-pointed at logits [n, 1, 2] holding the (answer, wrong) columns."""
    zeros = torch.zeros_like(pairs.answer_pos)
    return PromptPairs(pairs.clean[:, :1], pairs.corrupted[:, :1], zeros, zeros + 1, zeros, task=pairs.task)


def answer_columns(model, pairs: PromptPairs) -> tuple[Float[Tensor, "n 2 d_model"], Float[Tensor, "n 2"]]:
    """The unembedding columns (and biases) of each row's (answer, wrong) tokens."""
    cols = torch.stack([pairs.answer, pairs.wrong], dim=1).to(model.unembed.W_U.device)  # [n, 2]
    w_u = model.unembed.W_U  # [d_model, d_vocab]: gather the 2n columns, not a transposed copy
    w = torch.index_select(w_u, 1, cols.flatten()).view(w_u.shape[0], *cols.shape).permute(1, 2, 0)
    return w, model.unembed.b_U[cols]


def project(
    model,
    resid: Float[Tensor, "n pos d_model"],
    pairs: PromptPairs,
    offset: int,
    scope: str,
    columns: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, PromptPairs]:
    """Final residual (positions ``offset..``) -> the logits ``scope`` needs, and matching pairs.

    - ``columns``: [n, 1, 2], the (answer, wrong) logits at each row's answer position
      (``columns``: these rows' :func:`answer_columns`, when the caller has them)
    - ``position``: [n, 1, d_vocab] at the answer position
    - ``full``: [n, pos - offset, d_vocab] (the caller prepends unchanged prefix logits)

    Final LayerNorm and the unembedding act per position, so scoring a subset is exact.
    """
    from transformer_lens.utilities.activation_functions import apply_softcap

    from mechkit.models._tl_block import final_norm

    cfg = model.cfg
    if scope == "full":
        x = final_norm(model, resid)
        return apply_softcap(model.unembed(x), cfg.output_logits_soft_cap), pairs
    answer_pos = pairs.answer_pos.to(resid.device)
    if scope == "columns":
        columns = columns if columns is not None else answer_columns(model, pairs)
        return project_columns(model, resid, answer_pos, offset, columns)[:, None], _columns_only(pairs)
    rows = torch.arange(resid.shape[0], device=resid.device)
    x = final_norm(model, resid[rows, answer_pos - offset][:, None])  # [n, 1, d_model]
    return apply_softcap(model.unembed(x), cfg.output_logits_soft_cap), _answer_only(pairs)


def project_columns(
    model, resid: Float[Tensor, "n pos d_model"], answer_pos: Int[Tensor, " n"], offset: int | Tensor,
    columns: tuple[Tensor, Tensor],
) -> Float[Tensor, "n 2"]:
    """The (answer, wrong) logits of :func:`project`'s ``columns`` scope, as [n, 2], without
    building prompt pairs (for metrics with ``on_columns``, in the engine's inner loop)."""
    from transformer_lens.utilities.activation_functions import apply_softcap

    from mechkit.models._tl_block import final_norm

    rows = torch.arange(resid.shape[0], device=resid.device)
    x = final_norm(model, resid[rows, answer_pos - offset][:, None])  # [n, 1, d_model]
    w, b = columns
    return apply_softcap(x @ w.transpose(1, 2) + b[:, None], model.cfg.output_logits_soft_cap)[:, 0]
