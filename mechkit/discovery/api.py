"""The two entry points: ``attribute`` (scores) and ``discover`` (a finished ``Circuit``).

>>> import mechkit
>>> circuit = mechkit.discover(model, pairs, method="eap-ig", edges="5%")   # doctest: +SKIP
>>> circuit.faithfulness[0].value                                           # doctest: +SKIP
0.96
"""

import dataclasses
from typing import Any

import torch
from transformer_lens import HookedTransformer

from mechkit import distributed
from mechkit._types import Circuit, PromptPairs
from mechkit.discovery.acdc import acdc
from tqdm.auto import tqdm

from mechkit.discovery.budget import plan_chunks
from mechkit.discovery.convergence import from_effect, path_effect, warn_if_unresolved
from mechkit.discovery.evaluate import evaluate
from mechkit.discovery.forward import Metric, chunk_ablation, mechkit_runs, shared_ablation
from mechkit.discovery.graph import Graph
from mechkit.discovery.methods import METHODS, MethodError, get_method
from mechkit.discovery.oracle import oracle
from mechkit.discovery.scores import EdgeScores
from mechkit.discovery.select import prune_dangling
from mechkit.errors import did_you_mean
from mechkit.models.loading import spec_of
from mechkit.metrics import logit_diff
from mechkit.models import fingerprint

# Methods that select edges themselves rather than scoring them for a budget.
SELECTING = {"acdc": {"tau": 0.01, "objective": "kl"}, "oracle": {"target": 0.9}}


def _metric_name(metric: Metric | None) -> str:
    return "logit_diff" if metric is None else getattr(metric, "__name__", type(metric).__name__)


def _check_options(key: str, defaults: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    unknown = set(options) - set(defaults)
    if unknown:
        name = sorted(unknown)[0]
        valid = ", ".join(defaults) or "none"
        raise MethodError(f"{key} takes no hyperparameter {name!r} (its hyperparameters: {valid})")
    return {**defaults, **options}


def attribute(
    model: HookedTransformer,
    pairs: PromptPairs,
    method: str = "eap-ig",
    *,
    metric: Metric | None = None,
    ablation: str = "resample",
    model_spec: str = "",
    progress: bool = False,
    max_batch: int = 512,
    max_memory: str | int | float | None = None,
    **hyperparameters: Any,
) -> EdgeScores:
    """Score every edge (and node) of ``model``'s graph on ``pairs`` with a registered method.

    >>> scores = attribute(model, pairs, "eap-ig", ig_steps=5)   # doctest: +SKIP
    >>> scores.top_edges(40).in_circuit.sum()                    # doctest: +SKIP
    tensor(40)

    Methods: ``eap``, ``eap-ig`` and ``eap-ig-activations`` (``ig_steps``, default 5), ``exact``. ``metric(logits, pairs)``
    returns one value per prompt (default: logit difference).

    Prompts are scored in chunks that fit ``max_memory`` (bytes, ``"6GB"``, or a share of the
    available memory such as ``0.5``; default :func:`mechkit.memory.budget_bytes`), with at most
    ``max_batch`` sequences per forward; the result does not depend on either (up to float
    summation order).

    The integrated-gradients methods also check their integral (``scores.convergence``,
    :mod:`mechkit.discovery.convergence`) and warn (``IntegrationWarning``) when it is more than
    20% off.
    """
    if method in SELECTING:
        raise MethodError(f"{method} selects edges itself rather than scoring them: use discover(model, pairs, method={method!r})")
    entry = get_method(method)
    model_spec = model_spec or spec_of(model)
    options = _check_options(method, entry.defaults, hyperparameters)
    metric = metric or logit_diff
    graph = Graph.from_model(model)
    # scores are means over prompts: score chunk by chunk, so that only one chunk's activations
    # and gradients exist at a time, and add up weighted by chunk size
    # under torchrun each rank scores its share of the pairs; the sums are added across ranks
    model_fingerprint = fingerprint(model)
    distributed.agree_on_inputs(model, pairs, model_fingerprint)
    mine = pairs[distributed.shard(len(pairs))]
    plan = plan_chunks(model, graph, len(mine), pairs.clean.shape[1], grad=method != "exact",
                       max_memory=max_memory, max_batch=max_batch)
    progress = progress and distributed.is_main()
    with mechkit_runs(model):
        shared = shared_ablation(model, graph, pairs, ablation, plan.prompts)
        starts = range(0, len(mine), plan.prompts)
        edge_sum, node_sum, effect = 0.0, 0.0, 0.0
        for start in tqdm(starts, desc=method, disable=not progress or len(starts) == 1, leave=False):
            part = mine[start : start + plan.prompts]
            ablated = chunk_ablation(model, graph, part, shared)
            edge, node = entry.func(
                model, graph, part, metric, ablated, progress=progress and len(starts) == 1, max_batch=plan.rows, **options
            )
            edge_sum = edge_sum + edge.detach().double().cpu() * len(part)
            node_sum = node_sum + node.detach().double().cpu() * len(part)
            if "ig_steps" in options:
                effect += path_effect(model, part, metric, ablated)
            del ablated
    edge_sum, node_sum = distributed.all_sum(edge_sum), distributed.all_sum(node_sum)
    effect = float(distributed.all_sum(effect))
    edge, node = edge_sum / len(pairs), node_sum / len(pairs)
    check = None
    if "ig_steps" in options:
        check = from_effect(graph, effect / len(pairs), edge, options["ig_steps"])
        warn_if_unresolved(check)
    return EdgeScores(
        graph=graph,
        scores=edge.detach().float().cpu(),
        node_scores=node.detach().float().cpu(),
        method=method,
        hyperparameters={**options, "ablation": ablation, "metric": _metric_name(metric), "n_prompts": len(pairs)},
        model_spec=model_spec,
        model_fingerprint=model_fingerprint,
        task=dict(pairs.task),
        convergence=check,
    )


def discover(
    model: HookedTransformer,
    pairs: PromptPairs,
    method: str = "eap-ig",
    edges: int | float | str | None = "5%",
    *,
    rule: str = "top-n",
    threshold: float | None = None,
    absolute: bool = True,
    metric: Metric | None = None,
    ablation: str = "resample",
    model_spec: str = "",
    eval_pairs: PromptPairs | None = None,
    n_boot: int = 1000,
    progress: bool = False,
    max_batch: int = 512,
    max_memory: str | int | float | None = None,
    **hyperparameters: Any,
) -> Circuit:
    """Find a circuit and measure it: scores, selection, dangling-edge pruning, then faithfulness
    under resample ablation (with a bootstrap interval) on ``eval_pairs`` (default ``pairs``).

    Scoring methods (``eap``, ``eap-ig``, ``eap-ig-activations``, ``exact``) select by ``rule`` ("top-n", "greedy" with the
    ``edges`` budget — an int or ``"5%"`` — or "threshold" with ``threshold``). ``acdc``
    (``tau``, ``objective``) and ``oracle`` (``target``) select edges themselves.
    """
    model_spec = model_spec or spec_of(model)
    if method in SELECTING:
        options = _check_options(method, SELECTING[method], hyperparameters)
        circuit = _selecting(model, pairs, method, options, metric, ablation, model_spec, progress, max_batch, max_memory)
    elif method in METHODS:
        scores = attribute(
            model, pairs, method, metric=metric, ablation=ablation, model_spec=model_spec,
            progress=progress, max_batch=max_batch, max_memory=max_memory, **hyperparameters,
        )
        circuit = scores.select(edges, rule=rule, threshold=threshold, absolute=absolute)
    else:
        raise MethodError(f"unknown method {method!r}; {did_you_mean(method, [*METHODS, *SELECTING])}")
    measured = evaluate(model, eval_pairs or pairs, circuit, "resample", metric, n_boot, max_batch=max_batch, max_memory=max_memory)
    if eval_pairs is None:
        return dataclasses.replace(circuit, faithfulness=(measured,))
    # the artifact's task is the data its faithfulness was measured on (what `verify` re-measures);
    # the pairs the edges were scored on are kept with the hyperparameters
    return dataclasses.replace(
        circuit,
        task=dict(eval_pairs.task),
        hyperparameters={**circuit.hyperparameters, "scored_on": dict(pairs.task)},
        faithfulness=(measured,),
    )


def _selecting(
    model: HookedTransformer,
    pairs: PromptPairs,
    method: str,
    options: dict[str, Any],
    metric: Metric | None,
    ablation: str,
    model_spec: str,
    progress: bool,
    max_batch: int,
    max_memory: str | int | float | None = None,
) -> Circuit:
    graph = Graph.from_model(model)
    if method == "acdc":
        edge, mask = acdc(model, graph, pairs, ablation, options["tau"], options["objective"], metric, progress,
                          max_memory)
        node = (graph.to_matrix(edge) * graph.real).sum(-1)[1:]
        selection = {"rule": "acdc", "tau": options["tau"], "prune_dangling": True}
    else:
        found = oracle(model, pairs, options["target"], ablation, metric, progress=progress,
                       max_memory=max_memory)
        keep = torch.tensor([n in found.nodes for n in graph.node_names])
        mask = graph.node_mask_to_edges(keep)
        edge, node = mask.float(), keep.float()
        selection = {"rule": "oracle", "target": options["target"], "reached": found.reached, "prune_dangling": True}
    scores = EdgeScores(
        graph=graph,
        scores=edge.float().cpu(),
        node_scores=node.float().cpu(),
        method=method,
        hyperparameters={**options, "ablation": ablation, "metric": _metric_name(metric), "n_prompts": len(pairs)},
        model_spec=model_spec,
        model_fingerprint=fingerprint(model),
        task=dict(pairs.task),
    )
    return scores.circuit(prune_dangling(graph, mask), selection)
