"""Activation patching sweeps, named as in ``transformer_lens.patching``.

>>> from mechkit.patching import get_act_patch_attn_head_out_by_pos
>>> result = get_act_patch_attn_head_out_by_pos(model, pairs)            # doctest: +SKIP
>>> result.dims, result.values.shape                                    # doctest: +SKIP
(('layer', 'pos', 'head'), torch.Size([2, 6, 4]))

Each function returns the same numbers as its TransformerLens namesake called with the
batch-mean of ``metric``: ``denoising`` (the default, as in TransformerLens) runs the
corrupted prompts and patches in clean activations; ``noising`` runs the clean prompts
and patches in corrupted ones.

Common arguments:

- ``metric``: ``"logit-diff"`` (default), ``"normalized-logit-diff"``, ``"kl"``,
  ``"answer-prob"`` or a function ``(logits [batch, pos, d_vocab], pairs) -> [batch]``.
- ``layers`` / ``positions``: restrict the sweep (positions apply to every position axis).
- ``max_memory``: the working-memory budget, bytes or a size such as ``"2GiB"`` (default
  :func:`mechkit.memory.budget_bytes`: ``$MECHKIT_MAX_MEMORY``, else half the available
  memory, at most 3 GiB on a CPU); ``memory_gib`` is its deprecated spelling in GiB.
- ``progress``: ``None`` shows a bar for sweeps that take over a second; ``False`` never.
"""

from collections.abc import Sequence

import torch
from transformer_lens import HookedTransformer

from mechkit import distributed
from mechkit._types import PromptPairs
from mechkit.errors import ShapeError
from mechkit.patching import _budget, _engine
from mechkit.patching._budget import MaxMemory
from mechkit.patching._labels import axis_labels
from mechkit.patching._metrics import MetricLike, metric_name, metric_scope
from mechkit.patching._sweeps import EVERY, get_sweep
from mechkit.patching.result import PatchResult


def check_layers(model: HookedTransformer, layers: Sequence[int] | None) -> list[int]:
    n = model.cfg.n_layers
    out = list(range(n)) if layers is None else [int(x) for x in layers]
    bad = [x for x in out if not 0 <= x < n]
    if bad or not out:
        raise ShapeError(f"layers {bad or out} out of range: the model has layers 0..{n - 1}")
    return out


def check_positions(pairs: PromptPairs, positions: Sequence[int] | None) -> list[int] | None:
    if positions is None:
        return None
    n = pairs.clean.shape[1]
    out = [int(p) for p in positions]
    bad = [p for p in out if not 0 <= p < n]
    if bad or not out:
        raise ShapeError(f"positions {bad or out} out of range: prompts have positions 0..{n - 1}")
    return out


def activation_patch(
    model: HookedTransformer,
    pairs: PromptPairs,
    sweep: str,
    metric: MetricLike = "logit-diff",
    *,
    direction: str = "denoising",
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    max_memory: MaxMemory = None,
    memory_gib: float | None = None,
    progress: bool | None = None,
) -> PatchResult:
    """Run one named sweep (``mechkit.patching.SWEEPS``, or an "every" sweep) and label the result.

    The clean and corrupted runs of all prompts are cached once; when they do not fit
    ``max_memory`` with the patched forwards, the prompts run in chunks whose means are combined
    weighted by chunk size (the same numbers). A budget too small for one prompt is refused.
    """
    budget = _budget.resolve(model, max_memory, memory_gib)
    if sweep in EVERY:
        return _every(model, pairs, sweep, metric, direction, layers, positions, budget, progress)
    spec = get_sweep(sweep)
    _engine.check_direction(direction)
    layer_list = check_layers(model, layers)
    pos = check_positions(pairs, positions)
    keep = {a: pos for a in ("pos", "dest_pos", "src_pos")} if pos is not None else {}
    hooks = [spec.hook_name(layer) for layer in layer_list]
    n, n_pos = len(_engine.check_pairs(model, pairs)), pairs.clean.shape[1]
    # under torchrun each rank patches its share of the prompts; the sums are added across ranks
    distributed.agree_on_inputs(model, pairs)
    mine = pairs[distributed.shard(len(pairs))]
    progress = progress if distributed.is_main() else False
    plan = _budget.sweep_plan(model, len(mine), n_pos, spec.act_axes, len(layer_list), metric_scope(metric), budget)
    part_metric = _budget.chunked_metric(metric)
    total, clean_sum, corrupted_sum = 0.0, 0.0, 0.0
    for start in range(0, len(mine), plan.prompts):
        part = mine[start : start + plan.prompts]
        ctx = _engine.prepare(model, part, direction, part_metric, hooks)
        flat = _engine.run_sweep(ctx, spec, layer_list, keep, plan.rest, progress)
        total = total + flat.double() * len(part)
        clean_sum += ctx.clean_value * len(part)
        corrupted_sum += ctx.corrupted_value * len(part)
        act = ctx.base.acts[hooks[0]]
        del ctx
    sums = distributed.all_sum(torch.cat([total.reshape(-1), torch.tensor([clean_sum, corrupted_sum], dtype=torch.float64, device=total.device)]))
    flat, clean_value, corrupted_value = sums[:-2] / n, float(sums[-2]) / n, float(sums[-1]) / n
    if part_metric is not metric:
        flat = _budget.normalize(flat, clean_value, corrupted_value)
        clean_value, corrupted_value = 1.0, 0.0
    sizes = dict(zip(spec.mask_axes, _engine.mask_shape(spec, act)))
    sizes.update({a: len(pos) if pos is not None else n_pos for a in ("pos", "dest_pos", "src_pos")})
    shape = (len(layer_list), *(sizes[a] for a in spec.index))
    values = flat.reshape(shape).float().cpu()
    return PatchResult(
        values=values,
        dims=spec.dims,
        labels=axis_labels(model, pairs, spec.dims, shape, layer_list, keep),
        sweep=sweep,
        direction=direction,
        metric=metric_name(metric),
        clean_value=clean_value,
        corrupted_value=corrupted_value,
    )


def _every(model, pairs, name, metric, direction, layers, positions, budget, progress) -> PatchResult:
    parts = [
        activation_patch(model, pairs, s, metric, direction=direction, layers=layers, positions=positions,
                         max_memory=budget, progress=progress)
        for s in EVERY[name]
    ]
    return stack_every(parts, name, direction)


def stack_every(parts: list[PatchResult], name: str, direction: str, method: str = "activation") -> PatchResult:
    """One "every" result from its parts' results, stacked along a leading ``act`` axis."""
    if name == "head-by-pos-every":  # pattern comes as (layer, head, dest_pos): align to (layer, pos, head)
        parts[-1] = PatchResult(parts[-1].values.transpose(1, 2), parts[0].dims, parts[0].labels,
                                parts[-1].sweep, direction, parts[-1].metric, method)
    width = parts[0].values.shape[-1]
    values = torch.stack([torch.nn.functional.pad(p.values, (0, width - p.values.shape[-1])) for p in parts])
    labels = {"act": [p.sweep for p in parts], **parts[0].labels}
    return PatchResult(values, ("act", *parts[0].dims), labels, name, direction, parts[0].metric, method,
                       clean_value=parts[0].clean_value, corrupted_value=parts[0].corrupted_value)


def get_act_patch_resid_pre(
    model: HookedTransformer,
    pairs: PromptPairs,
    metric: MetricLike = "logit-diff",
    *,
    direction: str = "denoising",
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    max_memory: MaxMemory = None,
    memory_gib: float | None = None,
    progress: bool | None = None,
) -> PatchResult:
    """Patch the residual stream at the start of each block, by layer x position: [layer, pos]."""
    return activation_patch(model, pairs, "resid-pre", metric, direction=direction, layers=layers,
                            positions=positions, max_memory=max_memory, memory_gib=memory_gib,
                            progress=progress)


def get_act_patch_resid_mid(
    model: HookedTransformer,
    pairs: PromptPairs,
    metric: MetricLike = "logit-diff",
    *,
    direction: str = "denoising",
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    max_memory: MaxMemory = None,
    memory_gib: float | None = None,
    progress: bool | None = None,
) -> PatchResult:
    """Patch the residual stream between attention and MLP, by layer x position: [layer, pos]."""
    return activation_patch(model, pairs, "resid-mid", metric, direction=direction, layers=layers,
                            positions=positions, max_memory=max_memory, memory_gib=memory_gib,
                            progress=progress)


def get_act_patch_resid_post(
    model: HookedTransformer,
    pairs: PromptPairs,
    metric: MetricLike = "logit-diff",
    *,
    direction: str = "denoising",
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    max_memory: MaxMemory = None,
    memory_gib: float | None = None,
    progress: bool | None = None,
) -> PatchResult:
    """Patch the residual stream at the end of each block, by layer x position: [layer, pos]."""
    return activation_patch(model, pairs, "resid-post", metric, direction=direction, layers=layers,
                            positions=positions, max_memory=max_memory, memory_gib=memory_gib,
                            progress=progress)


def get_act_patch_attn_out(
    model: HookedTransformer,
    pairs: PromptPairs,
    metric: MetricLike = "logit-diff",
    *,
    direction: str = "denoising",
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    max_memory: MaxMemory = None,
    memory_gib: float | None = None,
    progress: bool | None = None,
) -> PatchResult:
    """Patch each attention layer's output, by layer x position: [layer, pos]."""
    return activation_patch(model, pairs, "attn-out", metric, direction=direction, layers=layers,
                            positions=positions, max_memory=max_memory, memory_gib=memory_gib,
                            progress=progress)


def get_act_patch_mlp_out(
    model: HookedTransformer,
    pairs: PromptPairs,
    metric: MetricLike = "logit-diff",
    *,
    direction: str = "denoising",
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    max_memory: MaxMemory = None,
    memory_gib: float | None = None,
    progress: bool | None = None,
) -> PatchResult:
    """Patch each MLP's output, by layer x position: [layer, pos]."""
    return activation_patch(model, pairs, "mlp-out", metric, direction=direction, layers=layers,
                            positions=positions, max_memory=max_memory, memory_gib=memory_gib,
                            progress=progress)


def get_act_patch_attn_head_out_by_pos(
    model: HookedTransformer,
    pairs: PromptPairs,
    metric: MetricLike = "logit-diff",
    *,
    direction: str = "denoising",
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    max_memory: MaxMemory = None,
    memory_gib: float | None = None,
    progress: bool | None = None,
) -> PatchResult:
    """Patch each head's output (hook_z) by position: [layer, pos, head]."""
    return activation_patch(model, pairs, "head-out-by-pos", metric, direction=direction, layers=layers,
                            positions=positions, max_memory=max_memory, memory_gib=memory_gib,
                            progress=progress)


def get_act_patch_attn_head_q_by_pos(
    model: HookedTransformer,
    pairs: PromptPairs,
    metric: MetricLike = "logit-diff",
    *,
    direction: str = "denoising",
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    max_memory: MaxMemory = None,
    memory_gib: float | None = None,
    progress: bool | None = None,
) -> PatchResult:
    """Patch each head's queries by position: [layer, pos, head]."""
    return activation_patch(model, pairs, "head-q-by-pos", metric, direction=direction, layers=layers,
                            positions=positions, max_memory=max_memory, memory_gib=memory_gib,
                            progress=progress)


def get_act_patch_attn_head_k_by_pos(
    model: HookedTransformer,
    pairs: PromptPairs,
    metric: MetricLike = "logit-diff",
    *,
    direction: str = "denoising",
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    max_memory: MaxMemory = None,
    memory_gib: float | None = None,
    progress: bool | None = None,
) -> PatchResult:
    """Patch each key head's keys by position: [layer, pos, kv_head]."""
    return activation_patch(model, pairs, "head-k-by-pos", metric, direction=direction, layers=layers,
                            positions=positions, max_memory=max_memory, memory_gib=memory_gib,
                            progress=progress)


def get_act_patch_attn_head_v_by_pos(
    model: HookedTransformer,
    pairs: PromptPairs,
    metric: MetricLike = "logit-diff",
    *,
    direction: str = "denoising",
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    max_memory: MaxMemory = None,
    memory_gib: float | None = None,
    progress: bool | None = None,
) -> PatchResult:
    """Patch each value head's values by position: [layer, pos, kv_head]."""
    return activation_patch(model, pairs, "head-v-by-pos", metric, direction=direction, layers=layers,
                            positions=positions, max_memory=max_memory, memory_gib=memory_gib,
                            progress=progress)


def get_act_patch_attn_head_pattern_by_pos(
    model: HookedTransformer,
    pairs: PromptPairs,
    metric: MetricLike = "logit-diff",
    *,
    direction: str = "denoising",
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    max_memory: MaxMemory = None,
    memory_gib: float | None = None,
    progress: bool | None = None,
) -> PatchResult:
    """Patch each head's attention pattern row by destination position: [layer, head, dest_pos]."""
    return activation_patch(model, pairs, "head-pattern-by-pos", metric, direction=direction, layers=layers,
                            positions=positions, max_memory=max_memory, memory_gib=memory_gib,
                            progress=progress)


def get_act_patch_attn_head_pattern_dest_src_pos(
    model: HookedTransformer,
    pairs: PromptPairs,
    metric: MetricLike = "logit-diff",
    *,
    direction: str = "denoising",
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    max_memory: MaxMemory = None,
    memory_gib: float | None = None,
    progress: bool | None = None,
) -> PatchResult:
    """Patch each single attention weight: [layer, head, dest_pos, src_pos]."""
    return activation_patch(model, pairs, "head-pattern-dest-src-pos", metric, direction=direction, layers=layers,
                            positions=positions, max_memory=max_memory, memory_gib=memory_gib,
                            progress=progress)


def get_act_patch_attn_head_out_all_pos(
    model: HookedTransformer,
    pairs: PromptPairs,
    metric: MetricLike = "logit-diff",
    *,
    direction: str = "denoising",
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    max_memory: MaxMemory = None,
    memory_gib: float | None = None,
    progress: bool | None = None,
) -> PatchResult:
    """Patch each head's output (hook_z) at all positions: [layer, head]."""
    return activation_patch(model, pairs, "head-out-all-pos", metric, direction=direction, layers=layers,
                            positions=positions, max_memory=max_memory, memory_gib=memory_gib,
                            progress=progress)


def get_act_patch_attn_head_q_all_pos(
    model: HookedTransformer,
    pairs: PromptPairs,
    metric: MetricLike = "logit-diff",
    *,
    direction: str = "denoising",
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    max_memory: MaxMemory = None,
    memory_gib: float | None = None,
    progress: bool | None = None,
) -> PatchResult:
    """Patch each head's queries at all positions: [layer, head]."""
    return activation_patch(model, pairs, "head-q-all-pos", metric, direction=direction, layers=layers,
                            positions=positions, max_memory=max_memory, memory_gib=memory_gib,
                            progress=progress)


def get_act_patch_attn_head_k_all_pos(
    model: HookedTransformer,
    pairs: PromptPairs,
    metric: MetricLike = "logit-diff",
    *,
    direction: str = "denoising",
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    max_memory: MaxMemory = None,
    memory_gib: float | None = None,
    progress: bool | None = None,
) -> PatchResult:
    """Patch each key head's keys at all positions: [layer, kv_head]."""
    return activation_patch(model, pairs, "head-k-all-pos", metric, direction=direction, layers=layers,
                            positions=positions, max_memory=max_memory, memory_gib=memory_gib,
                            progress=progress)


def get_act_patch_attn_head_v_all_pos(
    model: HookedTransformer,
    pairs: PromptPairs,
    metric: MetricLike = "logit-diff",
    *,
    direction: str = "denoising",
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    max_memory: MaxMemory = None,
    memory_gib: float | None = None,
    progress: bool | None = None,
) -> PatchResult:
    """Patch each value head's values at all positions: [layer, kv_head]."""
    return activation_patch(model, pairs, "head-v-all-pos", metric, direction=direction, layers=layers,
                            positions=positions, max_memory=max_memory, memory_gib=memory_gib,
                            progress=progress)


def get_act_patch_attn_head_pattern_all_pos(
    model: HookedTransformer,
    pairs: PromptPairs,
    metric: MetricLike = "logit-diff",
    *,
    direction: str = "denoising",
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    max_memory: MaxMemory = None,
    memory_gib: float | None = None,
    progress: bool | None = None,
) -> PatchResult:
    """Patch each head's whole attention pattern: [layer, head]."""
    return activation_patch(model, pairs, "head-pattern-all-pos", metric, direction=direction, layers=layers,
                            positions=positions, max_memory=max_memory, memory_gib=memory_gib,
                            progress=progress)


def get_act_patch_block_every(
    model: HookedTransformer,
    pairs: PromptPairs,
    metric: MetricLike = "logit-diff",
    *,
    direction: str = "denoising",
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    max_memory: MaxMemory = None,
    memory_gib: float | None = None,
    progress: bool | None = None,
) -> PatchResult:
    """Patch resid_pre, attn_out and mlp_out stacked: [act=3, layer, pos]."""
    return activation_patch(model, pairs, "block-every", metric, direction=direction, layers=layers,
                            positions=positions, max_memory=max_memory, memory_gib=memory_gib,
                            progress=progress)


def get_act_patch_attn_head_all_pos_every(
    model: HookedTransformer,
    pairs: PromptPairs,
    metric: MetricLike = "logit-diff",
    *,
    direction: str = "denoising",
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    max_memory: MaxMemory = None,
    memory_gib: float | None = None,
    progress: bool | None = None,
) -> PatchResult:
    """Patch head output, q, k, v, pattern at all positions stacked: [act=5, layer, head]."""
    return activation_patch(model, pairs, "head-all-pos-every", metric, direction=direction, layers=layers,
                            positions=positions, max_memory=max_memory, memory_gib=memory_gib,
                            progress=progress)


def get_act_patch_attn_head_by_pos_every(
    model: HookedTransformer,
    pairs: PromptPairs,
    metric: MetricLike = "logit-diff",
    *,
    direction: str = "denoising",
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    max_memory: MaxMemory = None,
    memory_gib: float | None = None,
    progress: bool | None = None,
) -> PatchResult:
    """Patch head output, q, k, v, pattern by position stacked: [act=5, layer, pos, head]."""
    return activation_patch(model, pairs, "head-by-pos-every", metric, direction=direction, layers=layers,
                            positions=positions, max_memory=max_memory, memory_gib=memory_gib,
                            progress=progress)
