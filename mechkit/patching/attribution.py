"""Attribution patching: the first-order estimate of every activation patch at once.

For a cell patching slice ``S`` of activation ``a``, the change in the mean metric is
estimated as ``sum_S grad_a(metric) * (a_source - a_base)``: one forward and one backward
pass per chunk of prompts, whatever the number of cells (Nanda 2023; Syed et al. 2023).

>>> from mechkit.patching import attribution_patch
>>> result = attribution_patch(model, pairs, "head-out-by-pos")   # doctest: +SKIP

The values are estimated *changes* from the unpatched run (``result.corrupted_value`` for
denoising, ``result.clean_value`` for noising), not patched metric values.
"""

from collections.abc import Sequence

import torch
from torch import Tensor
from transformer_lens import HookedTransformer

from mechkit._types import PromptPairs
from mechkit.errors import HookNameError
from mechkit.patching import _engine
from mechkit.patching._labels import axis_labels
from mechkit.patching._metrics import MetricLike, bind_metric, metric_name, metric_scope, project
from mechkit.patching._sweeps import EVERY, FEATURE_AXES, Sweep, cell_coords, cell_masks, get_sweep
from mechkit.patching.activation import check_layers, check_positions, stack_every
from mechkit.patching.result import PatchResult


def attribution_patch(
    model: HookedTransformer,
    pairs: PromptPairs,
    sweep: str,
    metric: MetricLike = "logit-diff",
    *,
    direction: str = "denoising",
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    memory_gib: float = _engine.DEFAULT_MEMORY_GIB,
) -> PatchResult:
    """Attribution-patching counterpart of :func:`mechkit.patching.activation_patch` (same sweeps)."""
    if sweep in EVERY:
        parts = [attribution_patch(model, pairs, s, metric, direction=direction, layers=layers,
                                   positions=positions, memory_gib=memory_gib) for s in EVERY[sweep]]
        return stack_every(parts, sweep, direction, "attribution")
    spec = get_sweep(sweep)
    pairs = _engine.check_pairs(model, pairs)
    layer_list = check_layers(model, layers)
    pos = check_positions(pairs, positions)
    keep = {a: pos for a in ("pos", "dest_pos", "src_pos")} if pos is not None else {}
    hooks = [spec.hook_name(layer) for layer in layer_list]
    for h in hooks:
        if h not in model.hook_dict:
            raise HookNameError(f"the model has no hook {h!r}: pick another sweep")
    base_tokens, source_tokens = _engine.split_direction(pairs, direction)
    scope = metric_scope(metric)

    with torch.no_grad():
        base_final = model(base_tokens, stop_at_layer=model.cfg.n_layers)
        source_run = _engine.forward_run(model, source_tokens, hooks)
    missing = [h for h in hooks if h not in source_run.acts]
    if missing:
        raise HookNameError(f"the model never runs hook {missing[0]!r} (attention-only models have no MLP): pick another sweep")
    with torch.no_grad():
        base_last = project(model, base_final, pairs, 0, "position")[0][:, 0]
        source_last = project(model, source_run.final, pairs, 0, "position")[0][:, 0]
    clean_last, corrupted_last = (source_last, base_last) if direction == "denoising" else (base_last, source_last)
    bound = bind_metric(metric, clean_last, corrupted_last, pairs)

    n = len(pairs)
    per_prompt = _prompt_bytes(model, pairs.clean.shape[1])
    chunk = max(1, int(memory_gib * 2**30) // per_prompt)
    totals: dict[str, Tensor] = {}
    base_sum = source_sum = 0.0
    for i in range(0, n, chunk):
        rows = torch.arange(i, min(n, i + chunk), device=pairs.clean.device)
        contrib, b_vals = _chunk_contributions(model, spec, hooks, base_tokens[rows], source_run, rows, pairs, bound, scope)
        for h, c in contrib.items():
            totals[h] = totals[h] + c if h in totals else c
        base_sum += b_vals.sum().item()
    with torch.no_grad():
        src_vals = bound.score(*project(model, source_run.final, pairs, 0, scope), torch.arange(n, device=pairs.clean.device))
        source_sum = src_vals.sum().item()

    rows_out = []
    for h in hooks:
        per_slot = totals[h] / n  # [*mask]: mean over prompts of each slot's first-order term
        shape = tuple(per_slot.shape)
        sizes = dict(zip(spec.mask_axes, shape))
        coords = cell_coords(sizes, spec, keep).to(per_slot.device)
        masks = cell_masks(coords, shape)
        rows_out.append((masks * per_slot[None]).flatten(1).sum(1))
    index_shape = tuple(len(keep.get(a, range(sizes[a]))) for a in spec.index)
    values = torch.stack(rows_out).reshape(len(layer_list), *index_shape).float().cpu()
    clean_v, corr_v = (source_sum / n, base_sum / n) if direction == "denoising" else (base_sum / n, source_sum / n)
    return PatchResult(values, spec.dims, axis_labels(model, pairs, spec.dims, values.shape, layer_list, keep),
                       sweep, direction, metric_name(metric), "attribution", clean_v, corr_v)


def _prompt_bytes(model: HookedTransformer, n_pos: int) -> int:
    """Activation memory one prompt's forward + backward keeps alive (a generous estimate)."""
    cfg = model.cfg
    per_layer = n_pos * (24 * cfg.d_model + 6 * (cfg.d_mlp or 0) + 12 * cfg.n_heads * cfg.d_head
                         + 6 * cfg.n_heads * n_pos)
    elt = torch.finfo(cfg.dtype).bits // 8
    return elt * (cfg.n_layers * per_layer + 3 * n_pos * cfg.d_vocab)


def _chunk_contributions(
    model: HookedTransformer,
    spec: Sweep,
    hooks: list[str],
    tokens: Tensor,
    source_run: _engine.Run,
    rows: Tensor,
    pairs: PromptPairs,
    bound,
    scope: str,
) -> tuple[dict[str, Tensor], Tensor]:
    """Sum over this chunk's prompts of grad * (source - base), reduced to the mask axes."""
    acts: dict[str, Tensor] = {}

    def save(act: Tensor, hook) -> None:
        acts[hook.name] = act

    def leaf(x: Tensor, hook) -> Tensor:
        return x.detach().requires_grad_(True)

    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        with torch.enable_grad(), model.hooks(fwd_hooks=[("hook_embed", leaf)] + [(h, save) for h in hooks]):
            final = model(tokens, stop_at_layer=model.cfg.n_layers)
            values = bound.score(*project(model, final, pairs[rows], 0, scope), rows)
            grads = torch.autograd.grad(values.sum(), [acts[h] for h in hooks], allow_unused=True)
    finally:
        for p in params:
            p.requires_grad_(True)
    out = {}
    feat = tuple(1 + i for i, a in enumerate(spec.act_axes) if a in FEATURE_AXES)
    for h, g in zip(hooks, grads):
        a = acts[h].detach()
        g = torch.zeros_like(a) if g is None else g
        term = g * (source_run.acts[h][rows] - a)
        out[h] = (term.sum(dim=feat) if feat else term).sum(0)
    return out, values.detach()
