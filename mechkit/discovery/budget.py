"""Chunk sizes for graph runs, from a memory budget.

Scoring and evaluation are averages over prompts, so they run prompt chunk by prompt chunk and
add up: only one chunk's activations, sender outputs and receiver gradients exist at a time.
This module estimates what a chunk costs, from the model's shape and the prompt length alone
(nothing is allocated to find out), and picks the largest chunk that fits the budget.

Bytes per token, with ``H`` heads, ``d`` d_model, ``e`` d_head, ``m`` d_mlp, ``p`` positions,
``L`` layers, ``V`` vocabulary, ``F``/``R`` senders/receivers of the edge graph, 4-byte floats:

- a forward+backward row (one sequence in a gradient run with split q/k/v inputs), what autograd
  keeps per layer: the three per-head inputs and their normalised copies ``6 H d``, q/k/v/z and
  rotated q/k ``8 H e``, scores and pattern ``2 H p``, the MLP's ``4 m`` and the residual
  stream's ``6 d``; plus the logits and their gradient ``3 V`` and the receivers' gradients ``R d``.
- a forward row without gradients: the sender-delta buffer ``F d``, one layer's per-head inputs
  ``6 H d`` and the logits ``2 V``.
- a prompt's data kept for its chunk: clean, ablated and delta sender outputs ``3 F d`` and the
  summed receiver gradients ``R d``.

The estimates are checked against measured peaks in ``bench/discovery.py``.
"""

from dataclasses import dataclass

from transformer_lens import HookedTransformer

from mechkit.discovery.graph import Graph
from mechkit.memory import MemoryBudgetError, budget_bytes, format_bytes


@dataclass(frozen=True)
class ChunkPlan:
    """How a run over ``n_prompts`` prompts is split: ``prompts`` per chunk, at most ``rows``
    sequences per forward (the ``max_batch`` of the methods)."""

    prompts: int
    rows: int
    budget: int  # bytes


def _row_bytes(model: HookedTransformer, graph: Graph, pos: int, grad: bool) -> int:
    cfg = model.cfg
    h, d, e = cfg.n_heads, cfg.d_model, cfg.d_head
    m = 0 if cfg.attn_only else (cfg.d_mlp or 0)
    itemsize = 4 if cfg.dtype is None else cfg.dtype.itemsize
    if grad:
        per_layer = 6 * h * d + 8 * h * e + 2 * h * pos + 4 * m + 6 * d
        per_token = cfg.n_layers * per_layer + 3 * cfg.d_vocab + graph.n_backward * d
    else:
        per_token = graph.n_forward * d + 6 * h * d + 2 * cfg.d_vocab
    return per_token * pos * itemsize


def _prompt_bytes(model: HookedTransformer, graph: Graph, pos: int) -> int:
    itemsize = 4 if model.cfg.dtype is None else model.cfg.dtype.itemsize
    return (3 * graph.n_forward + graph.n_backward) * model.cfg.d_model * pos * itemsize


def plan_chunks(
    model: HookedTransformer,
    graph: Graph,
    n_prompts: int,
    pos: int,
    *,
    grad: bool,
    max_memory: str | int | float | None = None,
    max_batch: int = 512,
) -> ChunkPlan:
    """The largest chunks that fit ``max_memory`` (see :func:`mechkit.memory.budget_bytes`).

    Half the budget goes to one forward's rows, half to the chunk's kept data. Raises
    :class:`~mechkit.memory.MemoryBudgetError` when even one prompt in one row does not fit,
    saying what budget it would need.
    """
    budget = budget_bytes(max_memory, str(model.cfg.device))
    row = _row_bytes(model, graph, pos, grad)
    prompt = _prompt_bytes(model, graph, pos)
    need = 2 * max(row, prompt)
    if need > budget:
        raise MemoryBudgetError(
            f"one prompt of {pos} tokens needs about {format_bytes(need)} for this run but the memory budget "
            f"is {format_bytes(budget)}: raise max_memory (--max-memory), or use shorter prompts"
        )
    rows = max(1, min(max_batch, budget // 2 // row))
    prompts = max(1, min(n_prompts, rows, budget // 2 // prompt))
    return ChunkPlan(prompts=prompts, rows=rows, budget=budget)
