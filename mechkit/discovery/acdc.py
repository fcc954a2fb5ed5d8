"""ACDC-style iterative pruning (Conmy et al. 2023): patch edges for real, one at a time.

>>> scores, mask = acdc(model, graph, pairs, "resample", tau=0.01)   # doctest: +SKIP

Start from the full graph. Visit receivers from the logits backwards (reverse topological
order) and, for each, its incoming edges from the latest sender back; ablate the edge, and keep
it ablated if the objective rises by less than ``tau``:

- ``objective="kl"`` (ACDC's default): KL(clean || circuit) of the next-token distribution at
  the answer position, averaged over prompts;
- ``objective="metric"``: |mean metric(circuit) - mean metric(clean)|.

A receiver whose node no longer sends anything is dropped without a forward (its inputs cannot
change the output). One forward per visited edge, so it is much slower than attribution
patching; use it on small models. An edge's score is the rise in the objective measured when it
was tried (0 for edges never tried).
"""

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from mechkit._types import PromptPairs
from mechkit.discovery.budget import plan_chunks
from mechkit.discovery.forward import Metric, chunk_ablation, run_masked, shared_ablation
from mechkit.discovery.graph import Graph
from mechkit.errors import MechkitError
from mechkit.metrics import answer_logits, logit_diff

OBJECTIVES = ("kl", "metric")


class ACDCError(MechkitError, ValueError):
    """Bad ACDC settings."""


def _kl_metric(model: HookedTransformer, pairs: PromptPairs) -> Metric:
    with torch.no_grad():
        clean_lp = F.log_softmax(answer_logits(model(pairs.clean.to(model.cfg.device)), pairs).float(), -1)

    def kl(logits: Tensor, rep: PromptPairs) -> Tensor:
        lp = F.log_softmax(answer_logits(logits, rep).float(), -1)
        ref = clean_lp.repeat(lp.shape[0] // clean_lp.shape[0], 1)
        return (ref.exp() * (ref - lp)).sum(-1)

    return kl


def acdc(
    model: HookedTransformer,
    graph: Graph,
    pairs: PromptPairs,
    ablated: Tensor | str,
    tau: float = 0.01,
    objective: str = "kl",
    metric: Metric | None = None,
    progress: bool = False,
    max_memory: str | int | float | None = None,
) -> tuple[Float[Tensor, " n_edges"], Bool[Tensor, " n_edges"]]:
    """Scores (objective rise when tried) and the kept-edge mask, both [n_edges].

    ``ablated``: the senders' ablated outputs (:func:`~mechkit.discovery.forward.ablated_outputs`)
    or the ablation's name, to compute them chunk by chunk. Prompts run in chunks that fit
    ``max_memory`` (:func:`~mechkit.discovery.budget.plan_chunks`); with more than one chunk and
    resample ablation by name, each chunk's corrupted run is redone per forward rather than kept.
    """
    if objective not in OBJECTIVES:
        raise ACDCError(f"unknown ACDC objective {objective!r}: use one of {', '.join(OBJECTIVES)}")
    if tau < 0:
        raise ACDCError(f"tau must be >= 0, got {tau}")
    metric = metric or logit_diff
    n = len(pairs)
    plan = plan_chunks(model, graph, n, pairs.clean.shape[1], grad=False, max_memory=max_memory)
    parts = [(start, pairs[start : start + plan.prompts]) for start in range(0, n, plan.prompts)]
    shared = shared_ablation(model, graph, pairs, ablated, plan.prompts) if isinstance(ablated, str) else None

    def ablated_of(start: int, part: PromptPairs) -> Tensor:
        if isinstance(ablated, str):
            return chunk_ablation(model, graph, part, shared)
        return ablated if ablated.shape[0] == 1 else ablated[start : start + len(part)]

    kept = [ablated_of(*parts[0])] if len(parts) == 1 else None  # one chunk: computed once
    measures = [_kl_metric(model, part) if objective == "kl" else metric for _, part in parts]

    def total(keep: Tensor) -> float:
        """Sum over prompts of the per-prompt measure with edges ``keep``."""
        out = 0.0
        for j, (start, part) in enumerate(parts):
            abl = kept[0] if kept is not None else ablated_of(start, part)
            out += float(run_masked(model, graph, part, abl, keep[None], measures[j]).double().sum())
        return out

    if objective == "kl":

        def value(keep: Tensor) -> float:
            return total(keep) / n

    else:
        with torch.no_grad():
            clean = sum(float(metric(model(part.clean.to(model.cfg.device)), part).double().sum()) for _, part in parts) / n

        def value(keep: Tensor) -> float:
            return abs(total(keep) / n - clean)

    keep = graph.real.float().clone()
    scores = torch.zeros(graph.n_forward, graph.n_backward)
    recv_node = graph.receiver_fwd.tolist()
    with torch.no_grad():
        current = value(keep)
        bar = tqdm(total=int(graph.real.sum()), desc="acdc", disable=not progress, leave=False)
        for r in range(graph.n_backward - 1, -1, -1):
            senders = graph.real[:, r].nonzero().flatten().tolist()[::-1]
            node = recv_node[r]
            if node >= 0 and not keep[node].any():
                keep[:, r] = 0.0
                bar.update(len(senders))
                continue
            for s in senders:
                keep[s, r] = 0.0
                new = value(keep)
                scores[s, r] = new - current
                if new - current < tau:
                    current = new
                else:
                    keep[s, r] = 1.0
                bar.update(1)
        bar.close()
    return graph.from_matrix(scores), graph.from_matrix(keep).to(torch.bool)
