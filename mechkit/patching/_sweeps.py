"""Sweep definitions: which hook each sweep patches and which slices of it form the cells.

A sweep patches one hook per layer. The activation's axes after ``batch`` are listed in
``act_axes``; the *mask axes* are those without the feature axis (``d_model``, ``d_head``).
``index`` names the mask axes a cell fixes (one cell per combination); the other mask axes
are patched whole. Results have dims ``("layer", *index)``, in TransformerLens's order.
"""

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from mechkit.errors import HookNameError, did_you_mean

FEATURE_AXES = ("d_model", "d_head")
POSITION_AXES = ("pos", "dest_pos")  # the axis a patch's earliest affected query position lies on


@dataclass(frozen=True)
class Sweep:
    name: str  # CLI name, e.g. "head-out-by-pos"
    tl_name: str  # TransformerLens's function, e.g. "get_act_patch_attn_head_out_by_pos"
    hook: str  # with {layer}
    act_axes: tuple[str, ...]
    index: tuple[str, ...]

    @property
    def mask_axes(self) -> tuple[str, ...]:
        return tuple(a for a in self.act_axes if a not in FEATURE_AXES)

    @property
    def pos_axis(self) -> int:
        """Index, among mask axes, of the query-position axis."""
        return next(i for i, a in enumerate(self.mask_axes) if a in POSITION_AXES)

    @property
    def dims(self) -> tuple[str, ...]:
        return ("layer", *self.index)

    def hook_name(self, layer: int) -> str:
        return self.hook.format(layer=layer)


_RESID = ("pos", "d_model")
_HEAD = ("pos", "head", "d_head")
_PATTERN = ("head", "dest_pos", "src_pos")

SWEEPS: dict[str, Sweep] = {
    s.name: s
    for s in [
        Sweep("resid-pre", "get_act_patch_resid_pre", "blocks.{layer}.hook_resid_pre", _RESID, ("pos",)),
        Sweep("resid-mid", "get_act_patch_resid_mid", "blocks.{layer}.hook_resid_mid", _RESID, ("pos",)),
        Sweep("resid-post", "get_act_patch_resid_post", "blocks.{layer}.hook_resid_post", _RESID, ("pos",)),
        Sweep("attn-out", "get_act_patch_attn_out", "blocks.{layer}.hook_attn_out", _RESID, ("pos",)),
        Sweep("mlp-out", "get_act_patch_mlp_out", "blocks.{layer}.hook_mlp_out", _RESID, ("pos",)),
        Sweep("head-out-by-pos", "get_act_patch_attn_head_out_by_pos", "blocks.{layer}.attn.hook_z", _HEAD, ("pos", "head")),
        Sweep("head-q-by-pos", "get_act_patch_attn_head_q_by_pos", "blocks.{layer}.attn.hook_q", _HEAD, ("pos", "head")),
        Sweep("head-k-by-pos", "get_act_patch_attn_head_k_by_pos", "blocks.{layer}.attn.hook_k", _HEAD, ("pos", "head")),
        Sweep("head-v-by-pos", "get_act_patch_attn_head_v_by_pos", "blocks.{layer}.attn.hook_v", _HEAD, ("pos", "head")),
        Sweep("head-pattern-by-pos", "get_act_patch_attn_head_pattern_by_pos", "blocks.{layer}.attn.hook_pattern", _PATTERN, ("head", "dest_pos")),
        Sweep("head-pattern-dest-src-pos", "get_act_patch_attn_head_pattern_dest_src_pos", "blocks.{layer}.attn.hook_pattern", _PATTERN, ("head", "dest_pos", "src_pos")),
        Sweep("head-out-all-pos", "get_act_patch_attn_head_out_all_pos", "blocks.{layer}.attn.hook_z", _HEAD, ("head",)),
        Sweep("head-q-all-pos", "get_act_patch_attn_head_q_all_pos", "blocks.{layer}.attn.hook_q", _HEAD, ("head",)),
        Sweep("head-k-all-pos", "get_act_patch_attn_head_k_all_pos", "blocks.{layer}.attn.hook_k", _HEAD, ("head",)),
        Sweep("head-v-all-pos", "get_act_patch_attn_head_v_all_pos", "blocks.{layer}.attn.hook_v", _HEAD, ("head",)),
        Sweep("head-pattern-all-pos", "get_act_patch_attn_head_pattern_all_pos", "blocks.{layer}.attn.hook_pattern", _PATTERN, ("head",)),
    ]
}

# The "every" sweeps stack several sweeps along a leading "act" axis, as TransformerLens does.
EVERY: dict[str, tuple[str, ...]] = {
    "block-every": ("resid-pre", "attn-out", "mlp-out"),
    "head-all-pos-every": ("head-out-all-pos", "head-q-all-pos", "head-k-all-pos", "head-v-all-pos", "head-pattern-all-pos"),
    "head-by-pos-every": ("head-out-by-pos", "head-q-by-pos", "head-k-by-pos", "head-v-by-pos", "head-pattern-by-pos"),
}


def get_sweep(name: str) -> Sweep:
    if name in SWEEPS:
        return SWEEPS[name]
    raise HookNameError(f"unknown sweep {name!r}; {did_you_mean(name, [*SWEEPS, *EVERY])}")


def cell_coords(sizes: dict[str, int], sweep: Sweep, keep: dict[str, list[int]]) -> Int[Tensor, "cell n_mask"]:
    """One row per cell: the index along each mask axis, -1 where the axis is patched whole.

    Cells come in row-major order over ``sweep.index`` (restricted to ``keep[axis]``).
    """
    ranges = [torch.tensor(keep.get(a, range(sizes[a])), dtype=torch.long) for a in sweep.index]
    grid = torch.cartesian_prod(*ranges) if len(ranges) > 1 else ranges[0][:, None]
    out = torch.full((grid.shape[0], len(sweep.mask_axes)), -1, dtype=torch.long)
    for j, axis in enumerate(sweep.index):
        out[:, sweep.mask_axes.index(axis)] = grid[:, j]
    return out


def cell_masks(coords: Int[Tensor, "n n_mask"], mask_shape: tuple[int, ...]) -> Bool[Tensor, "n *mask"]:
    """Boolean masks [n, *mask_shape] of the slices each cell patches."""
    n = coords.shape[0]
    mask = torch.ones((n, *mask_shape), dtype=torch.bool, device=coords.device)
    for a, size in enumerate(mask_shape):
        idx = coords[:, a : a + 1]
        m = (idx == -1) | (idx == torch.arange(size, device=coords.device))  # [n, size]
        shape = [n] + [1] * len(mask_shape)
        shape[1 + a] = size
        mask &= m.reshape(shape)
    return mask
