"""Steering and directional ablation along a probe's direction.

>>> from mechkit.probes import steer, ablate
>>> with steer(model, probe, alpha=8.0):          # doctest: +SKIP
...     logits = model(tokens)                    # the probe's hook gets + 8 * unit direction
>>> with ablate(model, probe):                    # doctest: +SKIP
...     logits = model(tokens)                    # the direction is projected out at the hook

Both add a hook at ``probe.hook`` for the duration of the ``with`` block only (removed in a
``finally`` by ``model.hooks``). ``alpha`` is in units of the activation's norm along the
*unit* direction, so the same alpha means the same push for a logistic-regression and a
difference-of-means probe. ``positions``: None changes every position; an int changes that
position of every row (negative: from the end); a [batch] tensor one position per row.

Ablation replaces ``x`` by ``x - (x . u) u``, or with ``mean`` given by ``x - (x . u - mean) u``
(mean ablation: the component is set to ``mean``, e.g. its average over the negatives, rather
than to 0). Projecting out a difference-of-means direction makes the class means equal, so
no difference-of-means probe refitted on the ablated activations finds anything.
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from jaxtyping import Int
from torch import Tensor
from transformer_lens import HookedTransformer

from mechkit.errors import ShapeError
from mechkit.probes.fit import LinearProbe

Positions = int | Int[Tensor, " batch"] | None


def _where(act: Tensor, positions: Positions) -> tuple[slice | Tensor, slice | int | Tensor]:
    if positions is None:
        return slice(None), slice(None)
    if isinstance(positions, int):
        return slice(None), positions
    return torch.arange(act.shape[0], device=act.device), positions.to(act.device)


def _unit_like(probe: LinearProbe, act: Tensor) -> Tensor:
    shape = act.shape[2:]  # [d_model] or [head, d_head]
    if shape.numel() != probe.direction.shape[0]:
        raise ShapeError(f"{probe.hook} activations have {tuple(shape)} per position but the probe has width "
                         f"{probe.direction.shape[0]}: use the model the probe was fitted on")
    return probe.unit.to(act.device, act.dtype).reshape(shape)


def steering_hook(probe: LinearProbe, alpha: float, positions: Positions = None) -> tuple[str, Callable]:
    """``(hook name, function)`` adding ``alpha`` times the unit direction (for ``model.hooks``)."""

    def add(act: Tensor, hook) -> Tensor:
        rows, pos = _where(act, positions)
        act[rows, pos] = act[rows, pos] + alpha * _unit_like(probe, act)
        return act

    return probe.hook, add


def ablation_hook(probe: LinearProbe, positions: Positions = None, mean: float | None = None) -> tuple[str, Callable]:
    """``(hook name, function)`` projecting the unit direction out (see the module docstring)."""

    def project(act: Tensor, hook) -> Tensor:
        rows, pos = _where(act, positions)
        u = _unit_like(probe, act)
        x = act[rows, pos]
        dims = tuple(range(-u.ndim, 0))
        along = (x * u).sum(dims, keepdim=True)
        act[rows, pos] = x - (along - (mean or 0.0)) * u
        return act

    return probe.hook, project


@contextmanager
def steer(model: HookedTransformer, probe: LinearProbe, alpha: float, positions: Positions = None
          ) -> Iterator[HookedTransformer]:
    """Run ``model`` inside the block with ``alpha`` times the probe's unit direction added."""
    with model.hooks(fwd_hooks=[steering_hook(probe, alpha, positions)]):
        yield model


@contextmanager
def ablate(model: HookedTransformer, probe: LinearProbe, positions: Positions = None, mean: float | None = None
           ) -> Iterator[HookedTransformer]:
    """Run ``model`` inside the block with the probe's direction projected out at its hook."""
    with model.hooks(fwd_hooks=[ablation_hook(probe, positions, mean)]):
        yield model
