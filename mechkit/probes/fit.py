"""Fitting linear probes: logistic regression and difference of means.

>>> import torch
>>> from mechkit.probes import fit_probe
>>> x = torch.cat([torch.randn(50, 4) + 2, torch.randn(50, 4) - 2])
>>> y = torch.arange(100) < 50
>>> probe = fit_probe(x, y, hook="blocks.0.hook_resid_post", method="diff-means")
>>> bool((probe.score(x[:50]) > 0).all())
True

A :class:`LinearProbe` scores an activation ``x`` as ``x @ direction + bias`` (higher: more
positive). ``logreg`` fits L2-regularised logistic regression (full-batch L-BFGS on
standardised features, mapped back to raw features); ``diff-means`` takes the difference of
the class means, with the bias at their midpoint. Difference of means needs no optimiser and
is what the contrast-pair probe uses; logistic regression usually separates better.
"""

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from mechkit.errors import DataError, ShapeError, did_you_mean

METHODS = ("logreg", "diff-means")


@dataclass(frozen=True)
class LinearProbe:
    """A direction in one hook's activation space.

    =========  =======  =============================================================
    field      shape    meaning
    =========  =======  =============================================================
    direction  [d]      ``score = x @ direction + bias``; positive scores: positive class
    bias       scalar
    hook       str      where the activations come from, e.g. ``blocks.3.hook_resid_post``
    position   str      which position was probed (``answer``, ``last`` or an index)
    method     str      ``logreg``, ``diff-means`` or ``contrast`` (diff-means on generic pairs)
    =========  =======  =============================================================
    """

    direction: Float[Tensor, " d"]
    bias: float
    hook: str
    position: str = "answer"
    method: str = "logreg"
    hyperparameters: dict[str, Any] = field(default_factory=dict)

    @property
    def unit(self) -> Float[Tensor, " d"]:
        """The direction scaled to norm 1 (what steering adds and ablation removes)."""
        return self.direction / self.direction.norm().clamp_min(1e-12)

    def score(self, x: Float[Tensor, "n d"]) -> Float[Tensor, " n"]:
        if x.ndim != 2 or x.shape[1] != self.direction.shape[0]:
            raise ShapeError(f"activations {tuple(x.shape)} do not fit a probe of width {self.direction.shape[0]}: "
                             f"pass [n, {self.direction.shape[0]}] activations of {self.hook}")
        return x.float() @ self.direction.float() + self.bias


def check_labels(x: Tensor, y: Tensor) -> Bool[Tensor, " n"]:
    """Binary labels as bools; one-class labels and mismatched shapes are refused."""
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ShapeError(f"features {tuple(x.shape)} and labels {tuple(y.shape)} do not fit: pass [n, d] and [n]")
    if y.dtype != torch.bool:
        if bool(((y != 0) & (y != 1)).any()):
            raise DataError("labels must be binary (0/1 or bool)")
        y = y.bool()
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == len(y):
        raise DataError(f"labels are all {'positive' if n_pos else 'negative'} ({len(y)} prompts): a probe needs "
                        "prompts of both classes")
    return y


def fit_logistic(x: Float[Tensor, "n d"], y: Int[Tensor, " n"], n_classes: int, steps: int = 200,
                 l2: float = 1e-3, seed: int = 0) -> tuple[Float[Tensor, "d n_classes"], Float[Tensor, " n_classes"]]:
    """Multinomial logistic regression (full-batch L-BFGS on standardised features).

    Returns ``(W, b)`` acting on *raw* features: ``logits = x @ W + b``.
    """
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ShapeError(f"features {tuple(x.shape)} and labels {tuple(y.shape)} do not fit: pass [n, d] and [n]")
    x = x.detach().float()
    mu, sd = x.mean(0), x.std(0) + 1e-6
    z = (x - mu) / sd
    torch.manual_seed(seed)
    w = torch.zeros(x.shape[1], n_classes, requires_grad=True)
    b = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z @ w + b, y.long()) + l2 * (w**2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    w_raw = (w / sd[:, None]).detach()
    return w_raw, (b - mu @ w_raw).detach()


def diff_means(x: Float[Tensor, "n d"], y: Bool[Tensor, " n"]) -> tuple[Float[Tensor, " d"], float]:
    """Mean of the positives minus mean of the negatives; bias puts 0 at the midpoint."""
    pos, neg = x[y].float().mean(0), x[~y].float().mean(0)
    direction = pos - neg
    return direction, float(-direction @ (pos + neg) / 2)


def fit_probe(x: Float[Tensor, "n d"], y: Bool[Tensor, " n"] | Int[Tensor, " n"], hook: str,
              method: str = "logreg", position: str = "answer", l2: float = 1e-3, steps: int = 200,
              seed: int = 0) -> LinearProbe:
    """A binary probe for ``y`` on activations ``x`` of ``hook`` (see the module docstring)."""
    y = check_labels(x, torch.as_tensor(y))
    if method == "logreg":
        w, b = fit_logistic(x, y.long(), 2, steps=steps, l2=l2, seed=seed)
        return LinearProbe(w[:, 1] - w[:, 0], float(b[1] - b[0]), hook, str(position), method,
                           {"l2": l2, "steps": steps, "seed": seed})
    if method in ("diff-means", "contrast"):
        direction, bias = diff_means(x, y)
        return LinearProbe(direction, bias, hook, str(position), method, {})
    raise DataError(f"unknown probe method {method!r}; {did_you_mean(method, METHODS)}")
