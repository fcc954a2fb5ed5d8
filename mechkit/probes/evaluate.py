"""Held-out AUROC of a probe, with a stratified bootstrap confidence interval.

>>> from mechkit.probes import auroc_ci
>>> r = auroc_ci([0.9, 0.8, 0.7, 0.3, 0.2, 0.1], [1, 1, 1, 0, 0, 0], n_boot=200)
>>> r.auroc, r.ci_low, r.ci_high
(1.0, 1.0, 1.0)

The interval resamples positives and negatives separately (each with replacement, keeping the
class sizes), so every bootstrap sample has both classes; it is the percentile interval of
``n_boot`` AUROCs. The point estimate is
:func:`mechkit.discovery.ground_truth.auroc` (Mann-Whitney U, ties counted half).
"""

from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from mechkit.errors import DataError
from mechkit.probes.fit import LinearProbe, check_labels


@dataclass(frozen=True)
class Auroc:
    """An AUROC, its bootstrap interval and the class sizes it was measured on."""

    auroc: float
    ci_low: float
    ci_high: float
    n_pos: int
    n_neg: int
    level: float = 0.95

    def __str__(self) -> str:
        return (f"AUROC {self.auroc:.4f} [{self.ci_low:.4f}, {self.ci_high:.4f}] "
                f"({self.n_pos} positive, {self.n_neg} negative)")

    def as_dict(self) -> dict[str, float | int]:
        return {"auroc": self.auroc, "ci_low": self.ci_low, "ci_high": self.ci_high, "n_pos": self.n_pos,
                "n_neg": self.n_neg, "level": self.level}


def _aurocs(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """AUROC of each row: ``pos`` [B, P] positive scores against ``neg`` [B, N] negative ones."""
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([pos, neg], axis=1), axis=1)
    p, n = pos.shape[1], neg.shape[1]
    return (ranks[:, :p].sum(1) - p * (p + 1) / 2) / (p * n)


def auroc_ci(scores: Float[Tensor, " n"] | list[float], labels, n_boot: int = 1000, level: float = 0.95,
             seed: int = 0) -> Auroc:
    """AUROC of ``scores`` for binary ``labels`` with a ``level`` stratified bootstrap interval."""
    from mechkit.discovery.ground_truth import auroc

    s = np.asarray(torch.as_tensor(scores, dtype=torch.float64))
    y = np.asarray(torch.as_tensor(labels)).astype(bool)
    if s.shape != y.shape or s.ndim != 1:
        raise DataError(f"{s.shape} scores for {y.shape} labels: give one score per label")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise DataError(f"AUROC needs both classes: got {n_pos} positive and {n_neg} negative prompts")
    if not np.isfinite(s).all():
        raise DataError("scores hold NaN or infinity")
    point = auroc(s, y)
    pos, neg = s[y], s[~y]
    rng = np.random.default_rng(seed)
    boots = []
    for start in range(0, n_boot, 256):  # bounded memory: 256 resamples at a time
        b = min(256, n_boot - start)
        boots.append(_aurocs(pos[rng.integers(0, n_pos, (b, n_pos))], neg[rng.integers(0, n_neg, (b, n_neg))]))
    boot = np.concatenate(boots) if boots else np.array([point])
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return Auroc(round(float(point), 6), round(float(lo), 6), round(float(hi), 6), n_pos, n_neg, level)


def evaluate_probe(probe: LinearProbe, x: Float[Tensor, "n d"], labels, n_boot: int = 1000, seed: int = 0) -> Auroc:
    """Held-out AUROC of ``probe`` on activations ``x`` with ``labels``."""
    y = check_labels(x, torch.as_tensor(labels))
    return auroc_ci(probe.score(x), y, n_boot=n_boot, seed=seed)
