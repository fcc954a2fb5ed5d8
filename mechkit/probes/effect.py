"""What steering or ablating along a probe's direction does to a task's behaviour.

>>> from mechkit.probes.effect import steering_effect
>>> effect = steering_effect(model, probe, pairs, alphas=[-8.0, 8.0], ablate=True,       # doctest: +SKIP
...                          labels=("sandbagged with cue", "truthful without cue"))
>>> print("\\n".join(effect.lines()))                                                     # doctest: +SKIP

The model answers every pair's clean and corrupted prompt once without intervention, once per
``alpha`` with :func:`~mechkit.probes.steer.steer` and, with ``ablate``, once with
:func:`~mechkit.probes.steer.ablate`. A clean prompt counts when its greedy next token at
``answer_pos`` is ``answer``, a corrupted one when it is ``wrong`` (what the corrupted prompt
should get): the two accuracies ``mechkit organisms eval`` reports, named by the task's
``accuracy_labels``. Each rate has a 95% Wilson score interval over the prompts. ``positions``:
``"all"`` changes every position, ``"answer"`` only each prompt's answer position.
"""

import math
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor

from mechkit._types import PromptPairs
from mechkit.errors import DataError
from mechkit.probes.activations import top_tokens
from mechkit.probes.fit import LinearProbe
from mechkit.probes.steer import ablate as ablate_along, steer

POSITIONS = ("all", "answer")
Z95 = 1.959964


@dataclass(frozen=True)
class Rate:
    """``hits`` of ``n`` prompts, with a Wilson score interval."""

    hits: int
    n: int

    @property
    def value(self) -> float:
        return self.hits / self.n if self.n else math.nan

    @property
    def ci(self) -> tuple[float, float]:
        if not self.n:
            return math.nan, math.nan
        p, n = self.value, self.n
        centre = (p + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
        half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / (1 + Z95**2 / n)
        return max(0.0, centre - half), min(1.0, centre + half)

    def __str__(self) -> str:
        lo, hi = self.ci
        return f"{self.value:.4f} [{lo:.4f}, {hi:.4f}]"

    def as_dict(self) -> dict[str, float | int]:
        lo, hi = self.ci
        return {"rate": round(self.value, 6), "ci_low": round(lo, 6), "ci_high": round(hi, 6), "hits": self.hits,
                "n": self.n}


@dataclass(frozen=True)
class Intervention:
    """One run: ``kind`` none, steer (with ``alpha``) or ablate; the two accuracies it gave."""

    kind: str
    alpha: float | None
    clean: Rate
    corrupted: Rate

    @property
    def name(self) -> str:
        return f"alpha {self.alpha:g}" if self.kind == "steer" else self.kind


@dataclass(frozen=True)
class SteeringEffect:
    """Accuracies per intervention (none first), on ``n`` prompt pairs."""

    hook: str
    method: str
    positions: str
    labels: tuple[str, str]
    rows: tuple[Intervention, ...]

    @property
    def n(self) -> int:
        return self.rows[0].clean.n

    def lines(self) -> list[str]:
        """A plain-text table (``mechkit probe steer`` prints it)."""
        width = max(26, *(len(label) for label in self.labels))
        out = [f"{self.hook} ({self.method}), {self.positions} positions, {self.n} prompt pairs, 95% Wilson intervals",
               f"{'intervention':<14} {self.labels[0]:<{width}}  {self.labels[1]}"]
        for r in self.rows:
            out.append(f"{r.name:<14} {str(r.clean):<{width}}  {r.corrupted}")
        return out

    def to_dict(self) -> dict:
        return {"hook": self.hook, "method": self.method, "positions": self.positions, "n": self.n,
                "labels": list(self.labels),
                "rows": [{"intervention": r.kind, "alpha": r.alpha, "clean": r.clean.as_dict(),
                          "corrupted": r.corrupted.as_dict()} for r in self.rows]}


def _accuracy(model, probe: LinearProbe, tokens: Tensor, answers: Tensor, pos: Tensor, kind: str, alpha: float | None,
              positions: str, batch_size: int) -> Rate:
    hits = 0
    for start in range(0, tokens.shape[0], batch_size):
        rows = slice(start, start + batch_size)
        where = None if positions == "all" else pos[rows].to(model.cfg.device)
        if kind == "steer":
            ctx = steer(model, probe, alpha, positions=where)
        elif kind == "ablate":
            ctx = ablate_along(model, probe, positions=where)
        else:
            ctx = nullcontext()
        with ctx:
            top = top_tokens(model, tokens[rows], pos[rows], batch_size)
        hits += int((top == answers[rows].cpu()).sum())
    return Rate(hits, tokens.shape[0])


@torch.no_grad()
def steering_effect(model, probe: LinearProbe, pairs: PromptPairs, alphas: Sequence[float] = (), *,
                    ablate: bool = False, positions: str = "all", labels: tuple[str, str] | None = None,
                    batch_size: int = 64) -> SteeringEffect:
    """Accuracy on the clean and the corrupted prompts of ``pairs`` without intervention, with
    each ``alpha`` of steering and (``ablate``) with the direction projected out."""
    if positions not in POSITIONS:
        raise DataError(f"positions {positions!r}: use 'all' or 'answer'")
    alphas = [float(a) for a in alphas]
    if not all(math.isfinite(a) for a in alphas):
        raise DataError(f"every alpha must be a finite number, got {alphas}")
    if len(pairs) == 0:
        raise DataError("no prompt pairs to steer on")
    runs = [("none", None), *(("steer", a) for a in alphas), *([("ablate", None)] if ablate else [])]
    rows = []
    for kind, alpha in runs:
        clean = _accuracy(model, probe, pairs.clean, pairs.answer, pairs.answer_pos, kind, alpha, positions, batch_size)
        corrupted = _accuracy(model, probe, pairs.corrupted, pairs.wrong, pairs.answer_pos, kind, alpha, positions,
                              batch_size)
        rows.append(Intervention(kind, alpha, clean, corrupted))
    labels = tuple(labels) if labels else ("clean accuracy", "corrupted-prompt accuracy")
    return SteeringEffect(probe.hook, probe.method, positions, labels, tuple(rows))
