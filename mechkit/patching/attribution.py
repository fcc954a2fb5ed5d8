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

from mechkit import distributed
from mechkit._types import PromptPairs
from mechkit.errors import HookNameError
from mechkit.patching import _budget, _engine
from mechkit.patching._budget import MaxMemory
from mechkit.patching._labels import axis_labels
from mechkit.patching._metrics import MetricLike, bind_metric, metric_name, metric_scope, needs_answer_logits, project
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
    max_memory: MaxMemory = None,
    memory_gib: float | None = None,
) -> PatchResult:
    """Attribution-patching counterpart of :func:`mechkit.patching.activation_patch` (same sweeps).

    Prompts run in chunks whose forward and backward passes fit ``max_memory`` (bytes or a size
    such as ``"2GiB"``; default :func:`mechkit.memory.budget_bytes`; ``memory_gib`` is its
    deprecated spelling in GiB); the result does not depend on the chunking.
    """
    budget = _budget.resolve(model, max_memory, memory_gib)
    if sweep in EVERY:
        parts = [attribution_patch(model, pairs, s, metric, direction=direction, layers=layers,
                                   positions=positions, max_memory=budget) for s in EVERY[sweep]]
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
    part_metric = _budget.chunked_metric(metric)
    scope = metric_scope(part_metric)

    n, n_pos = len(pairs), pairs.clean.shape[1]
    cfg = model.cfg
    kept = _budget.act_numel(model, spec.act_axes, n_pos) * len(hooks) + n_pos * cfg.d_model + 2 * cfg.d_vocab
    per_prompt = _prompt_bytes(model, n_pos) + kept * torch.finfo(cfg.dtype).bits // 8
    chunk = _budget.plan_prompts(model, n, budget, per_prompt, 0, "attribution patching").prompts
    totals: dict[str, Tensor] = {}
    base_sum = source_sum = 0.0
    # under torchrun each rank takes its share of the prompts; the sums are added across ranks
    distributed.agree_on_inputs(model, pairs)
    mine = distributed.shard(n)
    for i in range(mine.start, mine.stop, chunk):
        stop = min(i + chunk, mine.stop)
        part = pairs[i:stop]
        base_part, source_part = base_tokens[i:stop], source_tokens[i:stop]
        source_acts, source_final = _source_run(model, source_part, hooks)
        clean_last = corrupted_last = None
        if needs_answer_logits(part_metric):
            with torch.no_grad():
                base_last = project(model, model(base_part, stop_at_layer=cfg.n_layers), part, 0, "position")[0][:, 0]
                source_last = project(model, source_final, part, 0, "position")[0][:, 0]
            clean_last, corrupted_last = (source_last, base_last) if direction == "denoising" else (base_last, source_last)
        bound = bind_metric(part_metric, clean_last, corrupted_last, part)
        rows = torch.arange(len(part), device=pairs.clean.device)
        contrib, b_vals = _chunk_contributions(model, spec, hooks, base_part, source_acts, rows, part, bound, scope)
        for h, c in contrib.items():
            totals[h] = totals[h] + c if h in totals else c
        base_sum += b_vals.double().sum().item()
        with torch.no_grad():
            source_sum += bound.score(*project(model, source_final, part, 0, scope), rows).double().sum().item()
        del source_acts, source_final
    if distributed.active():
        totals = {h: distributed.all_sum(t).to(dtype=t.dtype) for h, t in totals.items()}
        base_sum, source_sum = distributed.all_sum(torch.tensor([base_sum, source_sum])).tolist()
    clean_v, corr_v = (source_sum / n, base_sum / n) if direction == "denoising" else (base_sum / n, source_sum / n)
    if part_metric is not metric:  # the change of a normalised logit difference is the change's share
        totals = {h: _budget.normalize(t, clean_v, corr_v, change=True) for h, t in totals.items()}
        clean_v, corr_v = 1.0, 0.0

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
    return PatchResult(values, spec.dims, axis_labels(model, pairs, spec.dims, values.shape, layer_list, keep),
                       sweep, direction, metric_name(metric), "attribution", clean_v, corr_v)


@torch.no_grad()
def _source_run(model: HookedTransformer, tokens: Tensor, hooks: list[str]) -> tuple[dict[str, Tensor], Tensor]:
    """The source run's activations at ``hooks`` and its final residual [batch, pos, d_model]."""
    acts: dict[str, Tensor] = {}

    def save(act: Tensor, hook) -> None:
        acts[hook.name] = act

    final = model.run_with_hooks(tokens, fwd_hooks=[(h, save) for h in hooks], stop_at_layer=model.cfg.n_layers)
    missing = [h for h in hooks if h not in acts]
    if missing:
        raise HookNameError(f"the model never runs hook {missing[0]!r} (attention-only models have no MLP): pick another sweep")
    return acts, final


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
    source_acts: dict[str, Tensor],
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
            values = bound.score(*project(model, final, pairs, 0, scope), rows)
            grads = torch.autograd.grad(values.sum(), [acts[h] for h in hooks], allow_unused=True)
    finally:
        for p in params:
            p.requires_grad_(True)
    out = {}
    feat = tuple(1 + i for i, a in enumerate(spec.act_axes) if a in FEATURE_AXES)
    for h, g in zip(hooks, grads):
        a = acts[h].detach()
        g = torch.zeros_like(a) if g is None else g
        term = g * (source_acts[h] - a)
        out[h] = (term.sum(dim=feat) if feat else term).sum(0)
    return out, values.detach()
