"""Prompt chunks for patching, from a memory budget (:func:`mechkit.memory.budget_bytes`).

Every patching method caches whole runs of its prompts before it patches anything: activation
and path patching keep each block's input, keys and values (``_engine.Run``) of the clean and
the corrupted run; attribution patching keeps a backward pass's activations. Results are means
over prompts, so when one batch's runs do not fit, the prompts go in chunks and the chunk means
are combined weighted by chunk size: the same numbers as one chunk, up to float rounding.

Bytes of one prompt (4-byte floats; ``L`` layers, ``p`` positions, ``d`` d_model, ``kv`` key
heads of ``e`` dims, ``a`` the patched activation's size per layer, ``V`` the vocabulary):

- cached runs: two runs of ``p (L (d + 2 kv e) + d) + L a`` values, plus ``p V`` logits of the
  base run for a metric that reads every position;
- the forward that fills them: two rows of :func:`mechkit.patching._engine.item_bytes`.

What is left of the budget after a chunk's cached runs goes to the patched forwards (the
``memory_bytes`` of ``_engine.run_sweep``). Nothing is allocated to find out.
"""

import math
import warnings
from dataclasses import dataclass

import torch
from transformer_lens import HookedTransformer

from mechkit.errors import ShapeError
from mechkit.memory import GiB, MemoryBudgetError, budget_bytes, format_bytes
from mechkit.patching._engine import item_bytes
from mechkit.patching._metrics import MetricError, MetricLike, metric_name

MaxMemory = str | int | float | None


@dataclass(frozen=True)
class PromptPlan:
    """``prompts`` per chunk; ``rest`` bytes left for a chunk's patched forwards."""

    prompts: int
    rest: int
    budget: int


def resolve(model: HookedTransformer, max_memory: MaxMemory, memory_gib: float | None) -> int:
    """The budget in bytes, taking the deprecated ``memory_gib`` (GiB) when it is given."""
    if memory_gib is not None:
        if max_memory is not None:
            raise ShapeError("pass max_memory only: memory_gib is its deprecated spelling in GiB")
        warnings.warn("memory_gib is deprecated: pass max_memory (bytes or a size such as '2GiB')",
                      DeprecationWarning, stacklevel=3)
        if not memory_gib > 0:
            raise MemoryBudgetError(f"memory_gib must be positive, got {memory_gib}")
        return int(memory_gib * GiB)
    return budget_bytes(max_memory, str(model.cfg.device))


def _itemsize(model: HookedTransformer) -> int:
    return torch.finfo(model.cfg.dtype).bits // 8


def act_numel(model: HookedTransformer, act_axes: tuple[str, ...], pos: int) -> int:
    """Values per prompt of one layer's activation with axes ``act_axes`` (an upper bound)."""
    cfg = model.cfg
    sizes = {"pos": pos, "dest_pos": pos, "src_pos": pos, "head": cfg.n_heads, "d_head": cfg.d_head,
             "d_model": cfg.d_model}
    return math.prod(sizes[a] for a in act_axes)


def cached_bytes(model: HookedTransformer, pos: int, acts: int, full_logits: bool) -> int:
    """One prompt's clean and corrupted ``_engine.Run``: ``acts`` values of cached hooks per run."""
    cfg = model.cfg
    kv = cfg.n_key_value_heads or cfg.n_heads
    per_run = pos * (cfg.n_layers * (cfg.d_model + 2 * kv * cfg.d_head) + cfg.d_model) + acts
    return _itemsize(model) * (2 * per_run + (pos * cfg.d_vocab if full_logits else 0))


def plan_prompts(
    model: HookedTransformer, n_prompts: int, budget: int, per_prompt: int, per_item: int, what: str
) -> PromptPlan:
    """The largest prompt chunk whose cached data takes at most half of ``budget`` and leaves
    room for one patched item (``per_item`` bytes). Raises one line when one prompt cannot fit."""
    need = per_prompt + per_item
    if need > budget:
        raise MemoryBudgetError(
            f"{what} needs about {format_bytes(need)} for one prompt but the memory budget is "
            f"{format_bytes(budget)}: raise max_memory (--max-memory), or use shorter prompts"
        )
    prompts = max(1, min(n_prompts, budget // 2 // per_prompt, (budget - per_item) // per_prompt))
    return PromptPlan(prompts, budget - prompts * per_prompt, budget)


def sweep_costs(
    model: HookedTransformer, pos: int, act_axes: tuple[str, ...], n_layers: int, scope: str
) -> tuple[int, int]:
    """(bytes per prompt, bytes of the largest patched item) of an activation patching sweep
    over ``n_layers`` layers of one hook."""
    acts = act_numel(model, act_axes, pos)
    per_prompt = cached_bytes(model, pos, n_layers * acts, scope == "full") + 2 * item_bytes(model, pos, pos, scope, 0)
    return per_prompt, item_bytes(model, pos, pos, scope, acts)


def sweep_plan(
    model: HookedTransformer, n_prompts: int, pos: int, act_axes: tuple[str, ...], n_layers: int, scope: str,
    budget: int,
) -> PromptPlan:
    """Chunks for an activation patching sweep (see :func:`sweep_costs`)."""
    per_prompt, per_item = sweep_costs(model, pos, act_axes, n_layers, scope)
    return plan_prompts(model, n_prompts, budget, per_prompt, per_item, "activation patching")


def chunked_metric(metric: MetricLike) -> MetricLike:
    """What each chunk scores: ``normalized-logit-diff`` normalises by the mean clean and
    corrupted logit differences of *all* prompts, so chunks score the plain logit difference
    and :func:`normalize` applies those means at the end."""
    return "logit-diff" if isinstance(metric, str) and metric_name(metric) == "normalized-logit-diff" else metric


def normalize(value, clean: float, corrupted: float, change: bool = False):
    """``(value - corrupted) / (clean - corrupted)``; for an estimated ``change`` only the scale."""
    if abs(clean - corrupted) < 1e-12:
        raise MetricError(
            "clean and corrupted runs have the same mean logit difference: normalized-logit-diff is undefined, use logit-diff"
        )
    return value / (clean - corrupted) if change else (value - corrupted) / (clean - corrupted)
