"""The activation patching engine: many patches per forward pass, each starting where it acts.

For every (cell, prompt) the engine finds the earliest query position ``s`` the patch can
change (the first position where the patched-in values differ from the run's own; a cell
that changes nothing is a no-op and keeps the unpatched value). Causal attention leaves
positions < ``s`` untouched, so a patched forward

1. starts at the patched layer ``L`` from the cached ``blocks.L.hook_resid_pre`` (what
   ``model(resid, start_at_layer=L)`` needs), restricted to positions ``s..``;
2. feeds each block the unpatched run's keys/values for positions < ``s`` through
   TransformerLens's own key-value cache entries (so rotary offsets, GQA, QK-norm and
   attention masks are handled by TransformerLens itself);
3. stacks many (cell, prompt) items along the batch, chunked to a memory budget;
4. unembeds only what the metric reads (the two answer columns for the logit-diff family);
5. a one-position patch after the attention mixing (head outputs, queries, patterns,
   attn/MLP outputs) changes only that position of its block's output: that block runs on
   the one position, and in the last block only a patch at the answer position counts;
6. the last block computes its queries, attention and MLP at the answer position only (keys
   and values everywhere); where its input differs from the unpatched run at one position
   ``p`` only (a one-position patch in the block before it, or one before the attention mixing
   of the last block itself), it runs on ``p`` alone for that position's keys and values (for
   a whole residual patched in, they are the source run's: no pass at all), then on the answer
   with those spliced into the cached ones, read in attention layout without further copies;
7. the clean and corrupted runs that everything resumes from are one batched forward pass;
8. blocks run through ``mechkit.models._tl_block.run_block``: TransformerLens's operations
   without its per-call overhead (hook points, einops, three ``ln1`` calls), hooks called in
   place, falling back to the block itself for what it does not cover.

Every step is exact: results equal one full forward per cell up to float rounding.
"""

import bisect
from dataclasses import dataclass, field

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer
from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry as KVEntry

from mechkit._types import PromptPairs
from mechkit.errors import HookNameError, ShapeError
from mechkit.models import _tl_block
from mechkit.models._tl_block import run_block
from mechkit.patching._metrics import (
    BoundMetric, MetricLike, answer_columns, bind_metric, metric_scope, needs_answer_logits, project, project_columns,
)
from mechkit.patching._sweeps import FEATURE_AXES, Sweep, cell_coords, cell_masks

DIRECTIONS = ("denoising", "noising")
# Hooks after a block's attention mixing: what they change stays on its position until the
# next block (and for good in the last block, where no attention reads it any more).
LOCAL_IN_LAST_BLOCK = ("hook_z", "hook_q", "hook_pattern", "hook_attn_out", "hook_resid_mid", "hook_mlp_out",
                       "hook_resid_post")
# Hooks before a block's attention mixing: in the last block, a patch at one position reaches
# the answer only through that position's keys and values (and its query, at the answer).
KEYS_ONLY_IN_LAST_BLOCK = ("hook_resid_pre", "hook_attn_in", "hook_k_input", "hook_v_input", "hook_k", "hook_v")
# Hooks of a block from its MLP input on (their patches act on every position of the MLP).
AFTER_MID = ("hook_mlp_in", "ln2.", "mlp.", "hook_mlp_out", "hook_resid_post")
# A pass over a few rows reads every weight matrix for little arithmetic: on a CPU one costs
# about as much as 16 more rows of a large pass (SmolLM2: matrix products over 2 rows run at a
# tenth of the rate of those over 100+), so a few recomputed positions are cheaper than a pass.
PASS_ROWS = 16
CPU_PASS_BYTES = 8 << 20  # cached keys and values copied per pass in the one-position modes, on CPU


@dataclass
class Run:
    """One forward pass's cached state, everything a patched forward resumes from.

    ===========  ================================  =====================================
    field        shape                             meaning
    ===========  ================================  =====================================
    resid_pre    n_layers x [batch, pos, d_model]  input of each block
    keys/values  n_layers x [batch, pos, kv, dh]   what each block's attention cached
    acts         {hook: [batch, ...]}              activations of the patched hooks
    final        [batch, pos, d_model]             output of the last block (positions
                                                   ``final_offset..``, or each row's answer)
    ===========  ================================  =====================================
    """

    tokens: Tensor
    resid_pre: list[Tensor]
    keys: list[Tensor]
    values: list[Tensor]
    acts: dict[str, Tensor]
    final: Tensor
    shortformer: Tensor | None
    attention_mask: Tensor | None
    final_offset: int | Tensor = 0


def last_query_at(model: HookedTransformer, answer: Int[Tensor, " batch"], start: int = 0) -> Tensor | None:
    """Where to cut the last block to each row's answer position (``run_block``'s ``query_at``),
    for runs that only read the answer position's output and whose residual covers positions
    ``start..``. None where the block has no separate MLP step (attention-only, parallel)."""
    if model.cfg.attn_only or model.cfg.parallel_attn_mlp:
        return None
    return answer - start


def touches_last_mlp(model: HookedTransformer, hook: str) -> bool:
    """Whether ``hook`` is in the last block's MLP step (from its input on)."""
    prefix = f"blocks.{model.cfg.n_layers - 1}."
    return hook.startswith(prefix) and hook[len(prefix):].startswith(AFTER_MID)


@torch.no_grad()
def forward_run(
    model: HookedTransformer, tokens: Int[Tensor, "batch pos"], hooks: list[str], answer_pos: Tensor | None = None
) -> Run:
    """A full forward pass (block by block, as ``HookedTransformer.forward`` does), caching a Run.

    With ``answer_pos`` the caller reads only those positions of the final residual: the last
    block's MLP runs on them alone (unless a cached hook needs it everywhere).
    """
    resid, tokens, shortformer, mask = model.input_to_embed(tokens)
    acts: dict[str, Tensor] = {}

    def save(act: Tensor, hook) -> None:
        acts[hook.name] = act

    query = None
    if answer_pos is not None and not any(touches_last_mlp(model, h) for h in hooks):
        query = last_query_at(model, answer_pos.to(resid.device))
    resid_pre, keys, values = [], [], []
    last = model.cfg.n_layers - 1
    for i in range(model.cfg.n_layers):
        entry = KVEntry.init_cache_entry(model.cfg, resid.device, resid.shape[0])
        resid_pre.append(resid)
        resid = run_block(model, i, resid, entry, [(h, save) for h in hooks], shortformer, mask,
                          query_at=query if i == last else None)
        keys.append(entry.past_keys)
        values.append(entry.past_values)
    return Run(tokens, resid_pre, keys, values, acts, resid, shortformer, mask, answer_pos if query is not None else 0)


def split_run(run: Run, n: int) -> tuple[Run, Run]:
    """Rows ``:n`` and ``n:`` of a run as two runs (views, no copies)."""

    def rows(t: Tensor | None, first: bool) -> Tensor | None:
        return None if t is None else (t[:n] if first else t[n:])

    return tuple(
        Run(rows(run.tokens, first), [rows(t, first) for t in run.resid_pre], [rows(t, first) for t in run.keys],
            [rows(t, first) for t in run.values], {h: rows(a, first) for h, a in run.acts.items()},
            rows(run.final, first), rows(run.shortformer, first), rows(run.attention_mask, first),
            run.final_offset if isinstance(run.final_offset, int) else rows(run.final_offset, first))
        for first in (True, False)
    )


def check_pairs(model: HookedTransformer, pairs: PromptPairs) -> PromptPairs:
    if not isinstance(pairs, PromptPairs):
        raise ShapeError(f"expected PromptPairs, got {type(pairs).__name__}: build one or use mechkit.patching.read_pairs")
    if len(pairs) == 0:
        raise ShapeError("no prompt pairs: pass at least one")
    if pairs.clean.shape[1] > model.cfg.n_ctx:
        raise ShapeError(f"prompts have {pairs.clean.shape[1]} tokens but the model's context is {model.cfg.n_ctx}: shorten them")
    return pairs.to(model.cfg.device)


def check_direction(direction: str) -> str:
    if direction not in DIRECTIONS:
        raise ShapeError(f"unknown direction {direction!r}: use 'denoising' (corrupted run, clean patches) or 'noising'")
    return direction


def split_direction(pairs: PromptPairs, direction: str) -> tuple[Tensor, Tensor]:
    """(tokens of the run patched into, tokens of the run patches come from)."""
    if check_direction(direction) == "denoising":
        return pairs.corrupted, pairs.clean
    return pairs.clean, pairs.corrupted


@dataclass
class Context:
    """A base run, a source run and the bound metric for one sweep over one batch."""

    model: HookedTransformer
    pairs: PromptPairs
    base: Run
    source: Run
    metric: BoundMetric
    base_values: Float[Tensor, " batch"]
    base_logits: Tensor | None  # full logits of the base run, for full-scope metrics
    clean_value: float
    corrupted_value: float
    columns: tuple[Tensor, Tensor] | None = None  # answer_columns of every row, for columns-scope metrics
    answer_kv: dict = field(default_factory=dict)  # answer position -> the last block's keys/values up to it


def prepare(
    model: HookedTransformer, pairs: PromptPairs, direction: str, metric: MetricLike, hooks: list[str]
) -> Context:
    """Run the clean and corrupted prompts once and bind the metric."""
    pairs = check_pairs(model, pairs)
    for h in hooks:
        if h not in model.hook_dict:
            raise HookNameError(f"the model has no hook {h!r} (attention-only models have no MLP hooks): pick another sweep")
    scope = metric_scope(metric)
    base_tokens, source_tokens = split_direction(pairs, direction)
    if scope != "full":  # positions after the last answer cannot change any score
        length = int(pairs.answer_pos.max()) + 1
        base_tokens, source_tokens = base_tokens[:, :length], source_tokens[:, :length]
    # one forward for both runs: on a small model the fixed cost per pass is what counts
    answer_pos = torch.cat([pairs.answer_pos] * 2) if scope != "full" else None
    base, source = split_run(forward_run(model, torch.cat([base_tokens, source_tokens]), hooks, answer_pos), len(pairs))
    missing = [h for h in hooks if h not in base.acts]
    if missing:
        raise HookNameError(f"the model never runs hook {missing[0]!r} (attention-only models have no MLP): pick another sweep")
    with torch.no_grad():
        clean_last = corrupted_last = None
        if needs_answer_logits(metric):
            base_last = project(model, base.final, pairs, base.final_offset, "position")[0][:, 0]
            source_last = project(model, source.final, pairs, source.final_offset, "position")[0][:, 0]
            clean_last, corrupted_last = (source_last, base_last) if direction == "denoising" else (base_last, source_last)
        bound = bind_metric(metric, clean_last, corrupted_last, pairs)
        rows = torch.arange(len(pairs), device=pairs.clean.device)
        base_logits = None
        if scope == "full":
            base_logits, _ = project(model, base.final, pairs, 0, "full")
        columns = answer_columns(model, pairs) if scope == "columns" else None
        base_values = bound.score(*project(model, base.final, pairs, base.final_offset, scope, columns), rows)
        source_values = bound.score(*project(model, source.final, pairs, source.final_offset, scope, columns), rows)
    clean_values, corrupted_values = (source_values, base_values) if direction == "denoising" else (base_values, source_values)
    return Context(
        model, pairs, base, source, bound, base_values, base_logits,
        clean_values.mean().item(), corrupted_values.mean().item(), columns,
    )


def mask_shape(sweep: Sweep, act: Tensor) -> tuple[int, ...]:
    """The activation's per-example shape without its feature axes."""
    return tuple(n for a, n in zip(sweep.act_axes, act.shape[1:]) if a not in FEATURE_AXES)


def _changes(
    diff: torch.Tensor, coords: Tensor, shape: tuple[int, ...], pos_axis: int, answer_pos: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """For each (cell, prompt): whether the patch changes anything, the first position it
    changes (the sequence length where none), and whether it changes the answer position.

    diff: [batch, *mask] where base and source differ. Returns three [cell, batch] tensors.
    """
    n_pos = shape[pos_axis]
    per = max(1, (1 << 24) // max(1, diff.numel()))
    ans = answer_pos.clamp(max=n_pos - 1)[None, :, None]
    changed, first, at_answer = [], [], []
    for i in range(0, coords.shape[0], per):
        hit = cell_masks(coords[i : i + per].to(diff.device), shape)[:, None] & diff[None]  # [c, batch, *mask]
        other = tuple(2 + a for a in range(len(shape)) if a != pos_axis)
        by_pos = hit.any(dim=other) if other else hit  # [c, batch, pos]
        any_ = by_pos.any(-1)
        changed.append(any_)
        first.append(torch.where(any_, by_pos.to(torch.uint8).argmax(-1), n_pos))
        at_answer.append(by_pos.gather(-1, ans.expand(by_pos.shape[0], -1, 1))[..., 0])
    return torch.cat(changed), torch.cat(first), torch.cat(at_answer)


def prefix_bytes(model: HookedTransformer, n_pos: int) -> int:
    """Bytes of one item's cached keys and values over ``n_pos`` positions in one block."""
    cfg = model.cfg
    return 2 * n_pos * (cfg.n_key_value_heads or cfg.n_heads) * cfg.d_head * (torch.finfo(cfg.dtype).bits // 8)


def item_bytes(model: HookedTransformer, n_pos: int, full_len: int, scope: str, act_numel: int) -> int:
    """A generous estimate of the activation memory one stacked item needs at its peak."""
    cfg = model.cfg
    d_mlp = cfg.d_mlp or 0
    per_pos = 10 * cfg.d_model + 3 * d_mlp + 8 * cfg.n_heads * cfg.d_head + 3 * cfg.n_heads * full_len
    if scope == "full":
        per_pos += 2 * cfg.d_vocab
    kv = 4 * full_len * (cfg.n_key_value_heads or cfg.n_heads) * cfg.d_head
    elt = torch.finfo(cfg.dtype).bits // 8
    return elt * (n_pos * per_pos + kv + 2 * act_numel) + act_numel  # + bool mask


def resume(
    ctx: Context,
    layer: int,
    rows: Int[Tensor, " n"],
    start: int,
    hooks: list[tuple[str, object]],
    single: bool = False,
    answer_only: bool = False,
) -> tuple[Float[Tensor, "n pos d_model"], int | Int[Tensor, " n"]]:
    """Run blocks ``layer..`` for base-run rows ``rows`` from position ``start`` on, with ``hooks``.

    Positions < ``start`` are taken as unchanged: their keys and values come from the base run.
    ``single``: the hooks change block ``layer``'s output at position ``start`` only (or, in
    the last block, only the keys and values there), so that block runs on that one position
    and the next resumes from the base run's residual there.
    ``answer_only``: only the answer position's output is read, so the last block's MLP runs
    on that position alone (its attention still needs every position's keys and values); and
    when the last block's input differs from the base run at one position ``p`` only, the last
    block runs twice on one position: at ``p`` for its keys and values, then at the answer.

    Returns the final residual and the position of its first row: ``start``, or each row's
    answer position when only that one is left.
    """
    model, base = ctx.model, ctx.base
    last = model.cfg.n_layers - 1
    mask = base.attention_mask.index_select(0, rows) if base.attention_mask is not None else None
    answer = ctx.pairs.answer_pos[rows].to(base.tokens.device)
    shared = int(answer[0]) if answer_only and bool((answer == answer[0]).all()) else None

    def block(i: int, resid: Tensor, at: int, query_at: Tensor | None = None) -> Tensor:
        """Block ``i`` on positions ``at..`` (keys and values before ``at`` from the base run)."""
        entry = KVEntry(base.keys[i][:, :at].index_select(0, rows), base.values[i][:, :at].index_select(0, rows),
                        frozen=True)
        pos_embed = (base.shortformer[:, at : at + resid.shape[1]].index_select(0, rows)
                     if base.shortformer is not None else None)
        return run_block(model, i, resid, entry, hooks, pos_embed, mask, query_at=query_at)

    if single and shared is not None and start < shared and layer == last - 1 and mask is None:
        out = block(layer, base.resid_pre[layer][:, start : start + 1].index_select(0, rows), start)
        return answer_via_keys(ctx, rows, torch.full_like(rows, start), out, []), shared

    offset: int | Tensor = start
    query = last_query_at(model, answer, start) if answer_only else None
    if query is not None:
        offset = answer
    if single:
        out = block(layer, base.resid_pre[layer][:, start : start + 1].index_select(0, rows), start,
                    query if layer == last else None)
        if layer == last:
            return out, offset
        resid = base.resid_pre[layer + 1][:, start:].index_select(0, rows)
        resid[:, :1] = out
        layer += 1
    else:
        resid = base.resid_pre[layer][:, start:].index_select(0, rows)
    for i in range(layer, last + 1):
        resid = block(i, resid, start, query if i == last else None)
    return resid, offset


def block_at(
    ctx: Context, layer: int, rows: Int[Tensor, " n"], at: Int[Tensor, " n"], resid_at: Float[Tensor, "n 1 d_model"],
    hooks: list,
) -> Float[Tensor, "n 1 d_model"]:
    """Block ``layer`` on one position per row, ``at`` (rows may differ), holding ``resid_at``,
    attending to the base run's keys and values before it.

    The rows share one pass: each row's cached prefix is padded to the longest and the padding
    masked out (the attention-mask path TransformerLens uses for padded prompts). Rotary
    positions come out right: TransformerLens counts a key's position among the attended ones
    (``get_offset_position_ids``), so the prefix keeps 0..at-1 and the row's own slot is ``at``.
    Not for ALiBi, whose bias counts slots.
    """
    base = ctx.base
    longest = int(at.max())
    slots = torch.arange(longest + 1, device=at.device)[None]
    mask = ((slots < at[:, None]) | (slots == longest)).long()  # own key last, after the padding
    entry = KVEntry(base.keys[layer][:, :longest].index_select(0, rows),
                    base.values[layer][:, :longest].index_select(0, rows), frozen=True)
    pos_embed = base.shortformer[rows, at][:, None] if base.shortformer is not None else None
    return run_block(ctx.model, layer, resid_at, entry, hooks, pos_embed, mask)


def answer_via_keys(
    ctx: Context, rows: Int[Tensor, " n"], at: Int[Tensor, " n"], resid_at: Float[Tensor, "n 1 d_model"] | None,
    hooks: list,
) -> Float[Tensor, "n 1 d_model"]:
    """The last block's output at the (shared) answer position when its input differs from the
    base run at one position per row only: ``at`` (before the answer), holding ``resid_at``.

    A position's keys and values depend on its own residual alone (keys are cached before
    rotary), so the block first runs on ``resid_at`` by itself, with ``hooks``, just for them;
    then once at the answer, attending to the base run's keys and values with those spliced in.
    ``resid_at=None``: that position holds the source run's residual, so its keys and values are
    the source run's (no first pass). Needs no attention mask (no padding).
    """
    model, base = ctx.model, ctx.base
    last = model.cfg.n_layers - 1
    answer = int(ctx.pairs.answer_pos[rows[0]])

    def pos_embed(pos: Tensor) -> Tensor | None:
        return base.shortformer[rows, pos][:, None] if base.shortformer is not None else None

    if resid_at is None:
        new_keys, new_values = ctx.source.keys[last][rows, at], ctx.source.values[last][rows, at]
    else:
        entry = KVEntry.init_cache_entry(model.cfg, rows.device, len(rows))
        run_block(model, last, resid_at, entry, hooks, pos_embed(at))
        new_keys, new_values = entry.past_keys[:, 0], entry.past_values[:, 0]
    # the base run's keys and values up to the answer (its own included), gathered per row in the
    # layout attention reads them in, so the splice is the only other copy
    # (keys [batch, head, d_head, pos] for a matmul; [batch, head, pos, d_head] for fused attention)
    fused = _tl_block.fused_kernels(rows.device)
    if answer not in ctx.answer_kv:
        keys = base.keys[last][:, : answer + 1]
        ctx.answer_kv[answer] = ((keys.transpose(1, 2) if fused else keys.permute(0, 2, 3, 1)).contiguous(),
                                 base.values[last][:, : answer + 1].transpose(1, 2).contiguous())
    keys_t, values_t = ctx.answer_kv[answer]
    keys = keys_t.index_select(0, rows)
    keys = keys.transpose(1, 2) if fused else keys.permute(0, 3, 1, 2)  # [n, pos, head, d_head] views
    values = values_t.index_select(0, rows).transpose(1, 2)
    index = torch.arange(len(rows), device=rows.device)
    keys[index, at], values[index, at] = new_keys, new_values
    at_answer = base.resid_pre[last][:, answer : answer + 1].index_select(0, rows)
    spliced = KVEntry(keys, values, frozen=True)
    return run_block(model, last, at_answer, spliced, [], pos_embed(torch.full_like(at, answer)), own_kv_cached=True)


def score(ctx: Context, resid: Tensor, rows: Tensor, start: int | Tensor) -> Float[Tensor, " n"]:
    """Metric values of patched runs whose final residual covers positions ``start..``
    (``start`` per row when the residual holds only each row's answer position)."""
    columns = tuple(c.index_select(0, rows) for c in ctx.columns) if ctx.columns is not None else None
    if columns is not None and ctx.metric.on_columns is not None:
        answer = ctx.pairs.answer_pos.index_select(0, rows)
        return ctx.metric.score(project_columns(ctx.model, resid, answer, start, columns), None, rows)
    pairs = ctx.pairs[rows]
    logits, scored_pairs = project(ctx.model, resid, pairs, start, ctx.metric.scope, columns)
    if ctx.metric.scope == "full":
        end = start + logits.shape[1]  # positions outside start..end are unchanged
        logits = torch.cat([ctx.base_logits[rows, :start], logits, ctx.base_logits[rows, end:]], dim=1)
    return ctx.metric.score(logits, scored_pairs, rows)


def prefers_large_passes(device: torch.device) -> bool:
    """Whether a forward pass's fixed cost (kernel launches) outweighs recomputing a few positions."""
    return device.type != "cpu"


def chunk_size(starts: list[int], i: int, length: int, cap: int, waste: float = 0.25,
               pass_rows: int = PASS_ROWS) -> int:
    """How many items (sorted by start) from ``i`` on to stack into one forward pass.

    All items in a pass resume from the first one's start, so later starts compute a few
    unchanged positions again. Take whole groups of equal starts while that recomputation
    stays under ``waste`` of the useful work plus ``pass_rows`` (what a pass costs whatever
    its size, in item positions: fewer, larger passes; little padding), up to ``cap`` items
    (the memory budget).
    """
    s0 = starts[i]
    n = padded = useful = 0
    j = i
    while j < len(starts) and n < cap:
        k = j
        while k < len(starts) and starts[k] == starts[j]:
            k += 1
        k = min(k, i + cap)
        add_useful = (k - j) * (length - starts[j])
        add_padded = (k - j) * (length - s0)
        if n and (padded + add_padded) - (useful + add_useful) > waste * (useful + add_useful) + pass_rows:
            break
        n += k - j
        padded += add_padded
        useful += add_useful
        j = k
    return max(1, n)


@torch.no_grad()
def run_sweep(
    ctx: Context,
    sweep: Sweep,
    layers: list[int],
    keep: dict[str, list[int]],
    memory_bytes: int,
    progress: bool | None,
) -> Float[Tensor, "layer ..."]:
    """Patch every cell of ``sweep`` (one layer at a time) and return the mean metric per cell."""
    model, base, source = ctx.model, ctx.base, ctx.source
    answer_pos = ctx.pairs.answer_pos
    scoped = ctx.metric.scope != "full"
    accelerator = prefers_large_passes(base.tokens.device)
    plans = []
    for layer in layers:
        hook = sweep.hook_name(layer)
        b_act, s_act = base.acts[hook], source.acts[hook]
        shape = mask_shape(sweep, b_act)
        sizes = dict(zip(sweep.mask_axes, shape))
        sizes.update({a: ctx.pairs.clean.shape[1] for a in ("pos", "dest_pos", "src_pos")})
        coords = cell_coords(sizes, sweep, keep)
        # cells at positions past a truncated run get all-false masks: they change nothing
        feat = tuple(1 + i for i, a in enumerate(sweep.act_axes) if a in FEATURE_AXES)
        diff = (b_act != s_act).any(dim=feat) if feat else b_act != s_act  # [batch, *mask]
        changed, first, at_answer = _changes(diff, coords, shape, sweep.pos_axis, answer_pos)
        if scoped:
            changed &= first <= answer_pos[None]
            if layer == model.cfg.n_layers - 1 and sweep.hook.split(".")[-1] in LOCAL_IN_LAST_BLOCK:
                # no attention reads this position any more: only a patch at the answer counts
                changed &= at_answer
                first = answer_pos[None].expand_as(first)
        cell, row = changed.nonzero(as_tuple=True)
        start = first[cell, row]
        order = torch.argsort(start, stable=True)
        plans.append((layer, hook, shape, coords, cell[order], row[order], start[order]))

    values = [ctx.base_values[None].repeat(p[3].shape[0], 1) for p in plans]  # [cell, batch] per layer
    total = sum(p[4].numel() for p in plans)
    bar = tqdm(total=total, desc=f"patching {sweep.name}", unit="patch", delay=1.0,
               disable=progress is False or total == 0, leave=False)
    shared_answer = scoped and bool((answer_pos == answer_pos[0]).all())
    for k, (layer, hook, shape, coords, cells, rows, starts) in enumerate(plans):
        s_act = source.acts[hook]
        # the patch must be in place before the last block's MLP is cut to the answer position
        answer_only = scoped and not touches_last_mlp(model, hook)
        n_feat = len(sweep.act_axes) - len(shape)
        starts_list = starts.tolist()
        # One query position per cell, at a hook whose effect stays on that position in its
        # block: run that block on the one position. This needs equal starts per forward, so
        # accelerators (where each forward's fixed cost dominates) take fewer, larger passes.
        kind = sweep.hook.split(".")[-1]
        last = model.cfg.n_layers - 1
        one_pos = sweep.mask_axes[sweep.pos_axis] in sweep.index
        plain = shared_answer and base.attention_mask is None  # one answer position, no padding
        # In the last block a patch before its attention mixing reaches the answer only through
        # its position's keys and values: every item before the answer goes in one pass
        keys_only = one_pos and kind in KEYS_ONLY_IN_LAST_BLOCK and layer == last and plain
        # ...and so do one-position patches in the block before it, where cached positions can
        # be padded and masked (positions counted among attended keys, as rotary's are)
        padded = (one_pos and kind in LOCAL_IN_LAST_BLOCK and layer == last - 1 and plain
                  and model.cfg.positional_embedding_type in ("standard", "shortformer", "rotary")
                  and "src_pos" not in sweep.mask_axes)
        single = keys_only or (not accelerator and one_pos and kind in LOCAL_IN_LAST_BLOCK)
        waste = 0.0 if single else (1.0 if accelerator else 0.25)
        answer = int(answer_pos[0])
        i = 0
        while i < cells.numel():
            start = starts_list[i]
            full_len = base.tokens.shape[1]
            n_pos = 1 if single else full_len - start
            per_item = item_bytes(model, full_len - start, full_len, ctx.metric.scope, s_act[0].numel())
            per_row = (keys_only or padded) and start < answer  # each item at its own position
            if per_row:
                n = min(max(1, memory_bytes // per_item), bisect.bisect_left(starts_list, answer, lo=i) - i)
                if not accelerator:  # each item copies its cached keys and values: keep a pass in cache
                    n = min(n, max(1, CPU_PASS_BYTES // prefix_bytes(model, answer)))
            else:
                # (one-position passes need one start per pass: no recomputation at all)
                n = chunk_size(starts_list, i, full_len, max(1, memory_bytes // per_item), waste,
                               0 if single else PASS_ROWS)
            c, r = cells[i : i + n], rows[i : i + n]
            mask = cell_masks(coords[c.cpu()].to(s_act.device), shape)
            pos_axis = 1 + sweep.pos_axis  # feature axes come last: the same index in mask and activation
            if per_row:  # cut to each item's own position
                at = starts[i : i + n]
                mask = mask.take_along_dim(at.view(-1, *([1] * (mask.dim() - 1))), dim=pos_axis)
                src = s_act.movedim(pos_axis, 1)[r, at].unsqueeze(pos_axis)
            else:  # cut to the positions this forward computes
                src = s_act
                for a, axis in enumerate(sweep.mask_axes):
                    if a == sweep.pos_axis:
                        mask, src = mask.narrow(1 + a, start, n_pos), src.narrow(1 + a, start, n_pos)
                    elif axis == "src_pos":
                        mask, src = mask.narrow(1 + a, 0, start + n_pos), src.narrow(1 + a, 0, start + n_pos)
                src = src.index_select(0, r)
            mask = mask.reshape(*mask.shape, *([1] * n_feat))

            def patch(act: Tensor, hook, mask=mask, src=src) -> Tensor:
                return torch.where(mask, src, act)

            if per_row:
                if kind == "hook_resid_pre" and layer == last:  # the source's whole residual there
                    resid_at, hooks = None, []
                else:
                    resid_at, hooks = base.resid_pre[layer][r, at][:, None], [(hook, patch)]
                    if padded:  # this block on the one position, then the last block through its keys
                        resid_at, hooks = block_at(ctx, layer, r, at, resid_at, hooks), []
                resid, offset = answer_via_keys(ctx, r, at, resid_at, hooks), answer
            else:
                resid, offset = resume(ctx, layer, r, start, [(hook, patch)], single, answer_only)
            values[k][c, r] = score(ctx, resid, r, offset)
            bar.update(n)
            i += n
    bar.close()
    return torch.stack([v.mean(1) for v in values])  # [layer, cell]
