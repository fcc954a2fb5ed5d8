"""Path patching (Wang et al. 2022, IOI): the effect of senders on receivers through one input.

Three runs, with ``base`` the run patched into (clean for ``noising``, the paper's setting)
and ``source`` the other:

1. cache the base and source runs;
2. run base, patch the senders' outputs from source and *freeze* every other head's output
   (and, with ``freeze_mlps``, every MLP's) to its base value; cache the receivers' inputs;
3. run base with only the receivers' inputs (a head's q/k/v input, an MLP's input, or the
   final residual for ``logits``) replaced by those cached values; score.

Many senders are patched at once, stacked along the batch.

>>> from mechkit.patching import path_patch, path_patch_heads
>>> path_patch(model, pairs, ["L0H1"], ["L1H0"], receiver_input="v")        # doctest: +SKIP
0.83
>>> path_patch_heads(model, pairs, ["logits"]).dims                          # doctest: +SKIP
('layer', 'head')
"""

from collections.abc import Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from mechkit._types import PromptPairs
from mechkit.models import Component, component, input_hooks_enabled
from mechkit.patching import _budget, _engine
from mechkit.patching._budget import MaxMemory
from mechkit.patching._labels import axis_labels
from mechkit.patching._metrics import MechkitError, MetricLike, bind_metric, metric_name, needs_answer_logits, project
from mechkit.patching.result import PatchResult


class PathError(MechkitError, ValueError):
    """Senders and receivers that do not form a path."""


def path_patch(
    model: HookedTransformer,
    pairs: PromptPairs,
    senders: str | Sequence[str],
    receivers: str | Sequence[str],
    metric: MetricLike = "logit-diff",
    *,
    receiver_input: str = "qkv",
    direction: str = "noising",
    freeze_mlps: bool = False,
    max_memory: MaxMemory = None,
) -> float:
    """Mean metric after patching the path ``senders -> receivers`` (heads ``L3H7``, MLPs ``M2``).

    ``receiver_input`` picks which inputs of head receivers are patched: any of ``q``, ``k``,
    ``v`` (default all three); MLP receivers use their input, ``logits`` the final residual.
    Prompts run in chunks within ``max_memory`` (see :func:`path_patch_heads`).
    """
    senders = [senders] if isinstance(senders, str) else list(senders)
    values = _path_values(model, pairs, [senders], receivers, metric, receiver_input, direction, freeze_mlps,
                          _budget.resolve(model, max_memory, None), False)[0]
    return float(values[0])


def path_patch_heads(
    model: HookedTransformer,
    pairs: PromptPairs,
    receivers: str | Sequence[str],
    metric: MetricLike = "logit-diff",
    *,
    receiver_input: str = "qkv",
    direction: str = "noising",
    freeze_mlps: bool = False,
    max_memory: MaxMemory = None,
    memory_gib: float | None = None,
    progress: bool | None = None,
) -> PatchResult:
    """Path patching from every head (one at a time) to ``receivers``: [layer, head].

    Heads that are not upstream of every receiver cannot reach them and keep the unpatched value.
    The base and source runs of the prompts are cached in chunks that fit ``max_memory`` (bytes
    or a size such as ``"2GiB"``; default :func:`mechkit.memory.budget_bytes`; ``memory_gib`` is
    its deprecated spelling in GiB), the rest of it holding many senders' runs per forward; the
    result does not depend on the chunking.
    """
    budget = _budget.resolve(model, max_memory, memory_gib)
    cfg = model.cfg
    recv = _receivers(model, receivers, receiver_input)
    first = min((r.layer if r.kind != "logits" else cfg.n_layers) for r, _ in recv)
    upstream = [f"L{layer}H{h}" for layer in range(cfg.n_layers) for h in range(cfg.n_heads)
                if layer < first or all(r.kind == "mlp" and layer <= r.layer for r, _ in recv)]
    sender_sets = [[s] for s in upstream]
    vals, clean_v, corr_v = _path_values(model, pairs, sender_sets, receivers, metric, receiver_input, direction,
                                         freeze_mlps, budget, progress, with_baselines=True)
    base_v = clean_v if direction == "noising" else corr_v
    out = torch.full((cfg.n_layers, cfg.n_heads), base_v)
    for s, v in zip(upstream, vals.tolist()):
        c = component(model, s)
        out[c.layer, c.head] = v
    dims = ("layer", "head")
    return PatchResult(out, dims, axis_labels(model, pairs, dims, tuple(out.shape)), "path-heads", direction,
                       metric_name(metric), "path", clean_v, corr_v,
                       extra={"receivers": [r.name for r, _ in recv], "receiver_input": receiver_input,
                              "freeze_mlps": freeze_mlps})


def _receivers(model: HookedTransformer, receivers: str | Sequence[str], receiver_input: str) -> list[tuple[Component, list[str]]]:
    names = [receivers] if isinstance(receivers, str) else list(receivers)
    if not names:
        raise PathError("no receivers: name at least one (L3H7, M2 or logits)")
    if not receiver_input or set(receiver_input) - set("qkv"):
        raise PathError(f"receiver_input {receiver_input!r} must be made of q, k and v (e.g. 'v' or 'qk')")
    out = []
    for name in names:
        c = component(model, name)
        if c.kind == "head":
            out.append((c, [c.input_hooks[x] for x in "qkv" if x in receiver_input]))
        elif c.kind in ("mlp", "logits"):
            out.append((c, [c.input_hooks["in"]]))
        else:
            raise PathError(f"{name} receives nothing: receivers are heads, MLPs or logits")
    return out


def _check_senders(model: HookedTransformer, senders: list[str], recv: list[tuple[Component, list[str]]]) -> list[Component]:
    out = []
    for name in senders:
        c = component(model, name)
        if c.kind not in ("head", "mlp"):
            raise PathError(f"sender {name!r} is not a head or MLP: path patching sends from L<l>H<h> or M<l>")
        for r, _ in recv:
            ok = (r.kind == "logits" or c.layer < r.layer or (c.kind == "head" and r.kind == "mlp" and c.layer == r.layer))
            if not ok:
                raise PathError(f"sender {name} is not upstream of receiver {r.name}: pick senders in earlier layers")
        out.append(c)
    return out


def _path_values(model, pairs, sender_sets, receivers, metric, receiver_input, direction, freeze_mlps,
                 budget, progress, with_baselines=False):
    cfg = model.cfg
    pairs = _engine.check_pairs(model, pairs)
    recv = _receivers(model, receivers, receiver_input)
    senders = [_check_senders(model, s, recv) for s in sender_sets]
    base_tokens, source_tokens = _engine.split_direction(pairs, direction)
    n_layers = cfg.n_layers
    z_hooks = [f"blocks.{layer}.attn.hook_z" for layer in range(n_layers)]
    mlp_hooks = [] if cfg.attn_only else [f"blocks.{layer}.hook_mlp_out" for layer in range(n_layers)]
    n, n_pos = len(pairs), pairs.clean.shape[1]
    # per prompt: the cached base and source runs; per sender set and prompt: runs 2 and 3
    acts = n_pos * n_layers * (cfg.n_heads * cfg.d_head + (0 if cfg.attn_only else cfg.d_model))
    per_prompt = _budget.cached_bytes(model, n_pos, acts, False) + 2 * _engine.item_bytes(model, n_pos, n_pos, "full", 0)
    per_item = 2 * _engine.item_bytes(model, n_pos, n_pos, "full", n_pos * cfg.n_heads * cfg.d_model)
    plan = _budget.plan_prompts(model, n, budget, per_prompt, per_item, "path patching")
    part_metric = _budget.chunked_metric(metric)
    total, base_sum, source_sum = 0.0, 0.0, 0.0
    bar = tqdm(total=len(senders) * -(-n // plan.prompts), desc="path patching", unit="sender", delay=1.0,
               disable=progress is False, leave=False)
    for start in range(0, n, plan.prompts):
        part = pairs[start : start + plan.prompts]
        base = _engine.forward_run(model, base_tokens[start : start + plan.prompts], z_hooks + mlp_hooks)
        source = _engine.forward_run(model, source_tokens[start : start + plan.prompts], z_hooks + mlp_hooks)
        clean_last = corrupted_last = None
        if needs_answer_logits(part_metric):
            with torch.no_grad():
                base_last = project(model, base.final, part, 0, "position")[0][:, 0]
                source_last = project(model, source.final, part, 0, "position")[0][:, 0]
            clean_last, corrupted_last = (base_last, source_last) if direction == "noising" else (source_last, base_last)
        bound = bind_metric(part_metric, clean_last, corrupted_last, part)
        chunk = max(1, plan.rest // (per_item * len(part)))  # sender sets per forward
        results = []
        with input_hooks_enabled(model), torch.no_grad():
            for i in range(0, len(senders), chunk):
                group = senders[i : i + chunk]
                results.append(_run_group(model, base, source, base_tokens[start : start + plan.prompts], part, group, recv, bound, freeze_mlps,
                                          z_hooks, mlp_hooks))
                bar.update(len(group))
        total = total + torch.cat(results).double() * len(part)
        rows = torch.arange(len(part), device=pairs.clean.device)
        with torch.no_grad():
            base_sum += bound.score(*project(model, base.final, part, 0, bound.scope), rows).double().sum().item()
            source_sum += bound.score(*project(model, source.final, part, 0, bound.scope), rows).double().sum().item()
        del base, source
    bar.close()
    values, b, s = total / n, base_sum / n, source_sum / n
    clean, corrupted = (b, s) if direction == "noising" else (s, b)
    if part_metric is not metric:
        values, clean, corrupted = _budget.normalize(values, clean, corrupted), 1.0, 0.0
    if not with_baselines:
        return values, None, None
    return values, clean, corrupted


def _run_group(model, base, source, base_tokens, pairs, group, recv, bound, freeze_mlps, z_hooks, mlp_hooks) -> Tensor:
    """Runs 2 and 3 for ``len(group)`` sender sets stacked along the batch: mean metric per set."""
    cfg = model.cfg
    k, n = len(group), len(pairs)
    dev = base_tokens.device
    tokens = base_tokens.repeat(k, 1)
    head_mask = torch.zeros(k, cfg.n_layers, cfg.n_heads, dtype=torch.bool, device=dev)
    mlp_mask = torch.zeros(k, cfg.n_layers, dtype=torch.bool, device=dev)
    for j, senders in enumerate(group):
        for c in senders:
            if c.kind == "head":
                head_mask[j, c.layer, c.head] = True
            else:
                mlp_mask[j, c.layer] = True
    head_mask = head_mask.repeat_interleave(n, 0)  # [k*n, layer, head]
    mlp_mask = mlp_mask.repeat_interleave(n, 0)

    def rep(t: Tensor) -> Tensor:
        return t.repeat(k, *([1] * (t.ndim - 1)))

    def freeze_z(act: Tensor, hook) -> Tensor:
        layer = int(hook.name.split(".")[1])
        m = head_mask[:, layer][:, None, :, None]  # [k*n, 1, head, 1]
        return torch.where(m, rep(source.acts[hook.name]), rep(base.acts[hook.name]))

    def mlp(act: Tensor, hook) -> Tensor:
        layer = int(hook.name.split(".")[1])
        m = mlp_mask[:, layer][:, None, None]
        other = rep(base.acts[hook.name]) if freeze_mlps else act
        return torch.where(m, rep(source.acts[hook.name]), other)

    cached: dict[str, Tensor] = {}

    def save(act: Tensor, hook) -> None:
        cached[hook.name] = act.clone()

    recv_hooks = sorted({h for _, hs in recv for h in hs})
    hooks = [(h, freeze_z) for h in z_hooks] + [(h, mlp) for h in mlp_hooks] + [(h, save) for h in recv_hooks]
    with model.hooks(fwd_hooks=hooks):
        model(tokens, stop_at_layer=_last_needed(model, recv))

    def patch_in(act: Tensor, hook) -> Tensor:
        heads = [r.head if hook.name.endswith("q_input") else r.kv_head
                 for r, hs in recv if r.kind == "head" and hook.name in hs]
        if not heads:
            return cached[hook.name]
        out = act.clone()
        idx = torch.tensor(sorted(set(heads)), device=act.device)
        out[:, :, idx] = cached[hook.name][:, :, idx]
        return out

    with model.hooks(fwd_hooks=[(h, patch_in) for h in recv_hooks]):
        final = model(tokens, stop_at_layer=cfg.n_layers)
    rows = torch.arange(n, device=dev).repeat(k)
    values = bound.score(*project(model, final, pairs[rows], 0, bound.scope), rows)
    return values.reshape(k, n).mean(1)


def _last_needed(model: HookedTransformer, recv) -> int:
    """Blocks run 2 must run: up to and including the deepest receiver's block."""
    return max(model.cfg.n_layers if r.kind == "logits" else r.layer + 1 for r, _ in recv)

