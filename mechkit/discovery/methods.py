"""Scoring methods, registered by name: ``eap``, ``eap-ig`` and ``exact``.

Every method has one signature, ``(model, graph, pairs, metric, ablated, options) ->
(edge_scores [n_edges], node_scores [n_nodes])``, and is registered once with its
hyperparameters' defaults:

- ``eap`` (Syed et al. 2023): ``(ablated_s - clean_s) . dM/d input_r`` per edge, the gradient
  taken on the clean run, summed over positions and averaged over prompts.
- ``eap-ig`` (Hanna et al. 2024, EAP-IG-inputs): as EAP, but the gradient is averaged over
  ``ig_steps`` runs whose input embeddings are ``ablated + k/ig_steps (clean - ablated)``,
  k = 0 .. ig_steps-1 (the reference implementation's steps).
- ``eap-ig-activations`` (EAP-IG's ``EAP-IG-activations``, ``get_scores_ig_activations``): the
  interpolation is at activations instead of inputs. For each sender group (the embedding, each
  layer's heads, each MLP) and k = 1 .. ig_steps, that group's output is set to
  the constant ``ablated + k/ig_steps (clean - ablated)`` (so no gradient flows through it in
  that run); gradients at every receiver, summed over all these runs and divided by their
  number, multiply ``ablated_s - clean_s``.
- ``exact``: patch one edge at a time (many edges per batched forward) and measure
  ``mean metric(edge ablated) - mean metric(clean)``; node scores patch one node's output.

Gradient methods' node scores are the same formula at the node's output,
``(ablated_s - clean_s) . dM/d out_s``, which equals the sum of the node's outgoing edge scores.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import einops
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from mechkit._types import PromptPairs
from mechkit.discovery.forward import (
    Metric,
    repeat_pairs,
    run_metric,
    sender_hooks,
    run_masked_chunked,
    sender_outputs,
)
from mechkit.discovery.grads import receiver_grads_plain
from mechkit.discovery.graph import Graph
from mechkit.errors import MechkitError, did_you_mean

ScoreFn = Callable[..., tuple[Tensor, Tensor]]


class MethodError(MechkitError, ValueError):
    """An unknown method name or hyperparameter."""


@dataclass(frozen=True)
class Method:
    key: str
    func: ScoreFn
    defaults: dict[str, Any]


METHODS: dict[str, Method] = {}


def register(key: str, **defaults: Any) -> Callable[[ScoreFn], ScoreFn]:
    """Register a scoring method under ``key`` with its hyperparameters' defaults."""

    def wrap(func: ScoreFn) -> ScoreFn:
        if key in METHODS:
            raise MethodError(f"scoring method {key!r} is already registered")
        METHODS[key] = Method(key, func, defaults)
        return func

    return wrap


def get_method(key: str) -> Method:
    if key not in METHODS:
        raise MethodError(f"unknown scoring method {key!r}; {did_you_mean(key, METHODS)}")
    return METHODS[key]


def _node_from_dense(graph: Graph, dense: Float[Tensor, "n_fwd n_bwd"]) -> Float[Tensor, " n_nodes"]:
    return (dense * graph.real.to(dense.device)).sum(-1)[1:]


def _gradient_scores(graph: Graph, delta: Tensor, grads: Tensor, n: int) -> tuple[Tensor, Tensor]:
    dense = einops.einsum(delta, grads, "b p f d, b p r d -> f r").float().cpu() / n
    return graph.from_matrix(dense), _node_from_dense(graph, dense)


@register("eap")
def eap(
    model: HookedTransformer, graph: Graph, pairs: PromptPairs, metric: Metric, ablated: Tensor, *, progress: bool = False, max_batch: int = 512
) -> tuple[Tensor, Tensor]:
    clean = sender_outputs(model, graph, pairs.clean.to(model.cfg.device))
    grads = receiver_grads_plain(model, graph, pairs, metric)
    return _gradient_scores(graph, ablated - clean, grads, len(pairs))


def check_ig_steps(ig_steps: object) -> None:
    if not isinstance(ig_steps, int) or ig_steps < 1:
        raise MethodError(f"ig_steps must be a positive integer, got {ig_steps!r}")


@register("eap-ig", ig_steps=5)
def eap_ig(
    model: HookedTransformer,
    graph: Graph,
    pairs: PromptPairs,
    metric: Metric,
    ablated: Tensor,
    *,
    ig_steps: int = 5,
    progress: bool = False,
    max_batch: int = 512,
) -> tuple[Tensor, Tensor]:
    check_ig_steps(ig_steps)
    clean = sender_outputs(model, graph, pairs.clean.to(model.cfg.device))
    start = ablated[:, :, 0].expand_as(clean[:, :, 0])  # [b, p, d]
    step = clean[:, :, 0] - start
    batch = len(pairs)
    per = max(1, max_batch // batch)  # interpolation steps per forward
    grads = 0.0
    chunks = range(0, ig_steps, per)
    for first in tqdm(chunks, desc="eap-ig", disable=not progress, leave=False):
        ks = torch.arange(first, min(first + per, ig_steps), device=start.device, dtype=start.dtype)
        alphas = (ks / ig_steps)[:, None, None, None]
        embed = einops.rearrange(start + alphas * step, "s b p d -> (s b) p d")
        g = receiver_grads_plain(model, graph, repeat_pairs(pairs, len(ks)), metric, embed=embed)
        grads = grads + einops.reduce(g, "(s b) p r d -> b p r d", "sum", s=len(ks))
    return _gradient_scores(graph, ablated - clean, grads / ig_steps, batch)


@register("eap-ig-activations", ig_steps=5)
def eap_ig_activations(
    model: HookedTransformer,
    graph: Graph,
    pairs: PromptPairs,
    metric: Metric,
    ablated: Tensor,
    *,
    ig_steps: int = 5,
    progress: bool = False,
    max_batch: int = 512,
) -> tuple[Tensor, Tensor]:
    check_ig_steps(ig_steps)
    device = model.cfg.device
    clean = sender_outputs(model, graph, pairs.clean.to(device))
    groups = sender_hooks(graph)
    wanted = {g.patch_hook for g in groups}
    with torch.no_grad():
        _, cache = model.run_with_cache(pairs.clean.to(device), names_filter=lambda name: name in wanted)
    per = max(1, max_batch // len(pairs))
    grads, runs = 0.0, 0
    for group in tqdm(groups, desc="eap-ig-activations", disable=not progress, leave=False):
        # the group's clean output and its ablated output, as the activation at patch_hook
        hook = group.patch_hook
        out_clean = cache[hook]
        out_ablated = out_clean + (ablated[:, :, group.fwd] - clean[:, :, group.fwd]).sum(2)
        for first in range(1, ig_steps + 1, per):
            ks = torch.arange(first, min(first + per, ig_steps + 1), device=device, dtype=out_clean.dtype)
            alphas = (ks / ig_steps)[:, None, None, None]
            values = out_ablated + alphas * (out_clean - out_ablated)  # [c, b, p, d]
            g = receiver_grads_plain(model, graph, pairs, metric, replace=(hook, values.detach()))
            grads = grads + einops.reduce(g, "(c b) p r d -> b p r d", "sum", c=len(ks))
            runs += len(ks)
    return _gradient_scores(graph, ablated - clean, grads / runs, len(pairs))


@register("exact")
def exact(
    model: HookedTransformer, graph: Graph, pairs: PromptPairs, metric: Metric, ablated: Tensor, *, progress: bool = False, max_batch: int = 512
) -> tuple[Tensor, Tensor]:
    with torch.no_grad():
        base = run_metric(model, pairs.clean.to(model.cfg.device), pairs, metric).float().mean().cpu()
    real = graph.real.float()
    per = max(1, max_batch // len(pairs))
    edge_scores = []
    f, b = graph.edge_index[:, 0], graph.edge_index[:, 1]
    for start in tqdm(range(0, graph.n_edges, per), desc="exact", disable=not progress, leave=False):
        idx = torch.arange(start, min(start + per, graph.n_edges))
        keep = real.repeat(len(idx), 1, 1)
        keep[torch.arange(len(idx)), f[idx], b[idx]] = 0.0
        values = run_masked_chunked(model, graph, pairs, ablated, keep, metric, max_batch)
        edge_scores.append(values.mean(1).cpu() - base)
    n_nodes = graph.n_forward - 1
    keep_nodes = torch.ones(n_nodes, graph.n_forward)
    keep_nodes[torch.arange(n_nodes), torch.arange(1, graph.n_forward)] = 0.0
    node_scores = run_masked_chunked(model, graph, pairs, ablated, keep_nodes, metric, max_batch).mean(1).cpu() - base
    return torch.cat(edge_scores), node_scores
