"""Forward passes over the edge graph: sender outputs, receiver gradients, and runs in which
only chosen edges (or nodes) carry the run's own activations while the rest are ablated.

How an edge is ablated (after EAP-IG's ``evaluate_graph``): each sender hook records
``delta_s = ablated_s - out_s`` (what the sender would write under ablation minus what it writes
in this run), and each receiver hook adds ``sum_s (1 - keep[s, r]) * delta_s`` to its input.
A receiver therefore reads the run's own output from kept edges and the ablated output from the
others. Many circuits run in one forward: their masks stack along a leading axis ``c`` and the
prompts repeat, so the model sees batch ``c * batch``.

Shapes: ``c`` circuits, ``n_fwd`` senders, ``n_bwd`` receivers (see :mod:`.graph`).
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import einops
import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from mechkit import metrics
from mechkit._types import PromptPairs
from mechkit.discovery.graph import QKV, Graph
from mechkit.errors import MechkitError
from mechkit.patching._metrics import project

Metric = Callable[[Tensor, PromptPairs], Tensor]
ABLATIONS = ("resample", "mean", "zero")


class AblationError(MechkitError, ValueError):
    """An unknown ablation name."""


@contextmanager
def config_flags(model: HookedTransformer, **values: bool) -> Iterator[HookedTransformer]:
    """Set TransformerLens config flags (read on every forward) for a block; restore them on exit."""
    cfg = model.cfg
    old = {name: getattr(cfg, name) for name in values}
    try:
        for name, value in values.items():
            setattr(cfg, name, value)
        yield model
    finally:
        for name, value in old.items():
            setattr(cfg, name, value)


def mechkit_runs(model: HookedTransformer):
    """Flags for every graph run: ``use_attn_result`` off. mechkit never reads ``hook_result``,
    and TransformerLens 3.9 builds it by broadcasting to [batch, pos, head, d_head, d_model],
    which makes every forward about 3x slower (EAP-IG's library asks its users to switch it on)."""
    return config_flags(model, use_attn_result=False)


def graph_hooks_enabled(model: HookedTransformer):
    """Turn on split q/k/v inputs, MLP inputs and ungrouped k/v heads (and ``use_attn_result``
    off: per-head outputs are computed from ``hook_z``, one einsum with ``W_O``); restore every
    flag on exit."""
    flags = {"use_split_qkv_input": True, "ungroup_grouped_query_attention": True, "use_attn_result": False}
    if not model.cfg.attn_only:
        flags["use_hook_mlp_in"] = True
    return config_flags(model, **flags)


@dataclass(frozen=True)
class SenderHook:
    """One group of senders: ``hook`` is read; ``fwd`` their forward indices; ``layer`` is set
    for heads, whose outputs are ``z @ W_O`` per head and which are patched at ``patch_hook``."""

    hook: str
    fwd: slice
    layer: int | None = None

    @property
    def patch_hook(self) -> str:
        return f"blocks.{self.layer}.hook_attn_out" if self.layer is not None else self.hook


def sender_hooks(graph: Graph) -> list[SenderHook]:
    """Every sender group, in forward order."""
    out = [SenderHook("blocks.0.hook_resid_pre", slice(0, 1))]
    for layer in range(graph.n_layers):
        start = graph.head_fwd(layer)
        out.append(SenderHook(f"blocks.{layer}.attn.hook_z", slice(start, start + graph.n_heads), layer))
        if graph.has_mlp:
            out.append(SenderHook(f"blocks.{layer}.hook_mlp_out", slice(graph.mlp_fwd(layer), graph.mlp_fwd(layer) + 1)))
    return out


def receiver_hooks(graph: Graph) -> list[tuple[str, slice, int]]:
    """(hook name, backward-index slice, sender prefix length) of every receiver group."""
    out = []
    for layer in range(graph.n_layers):
        for x in QKV:
            start = graph.qkv_bwd(layer, x)
            out.append((f"blocks.{layer}.hook_{x}_input", slice(start, start + graph.n_heads), graph.prefix(layer, "head")))
        if graph.has_mlp:
            b = graph.mlp_bwd(layer)
            out.append((f"blocks.{layer}.hook_mlp_in", slice(b, b + 1), graph.prefix(layer, "mlp")))
    b = graph.logits_bwd
    out.append((f"blocks.{graph.n_layers - 1}.hook_resid_post", slice(b, b + 1), graph.n_forward))
    return out


def _grouped(act: Tensor) -> Tensor:
    """[b, p, d] -> [b, p, 1, d]; head-indexed [b, p, h, d] unchanged."""
    return act if act.ndim == 4 else act.unsqueeze(2)


def _ungrouped(new: Tensor, like: Tensor) -> Tensor:
    return new if like.ndim == 4 else new.squeeze(2)


def _sender_value(model: HookedTransformer, sender: SenderHook, act: Tensor) -> Float[Tensor, "batch pos k d_model"]:
    """What a sender group writes into the residual stream, one slot per sender."""
    if sender.layer is None:
        return _grouped(act)
    w_o = model.blocks[sender.layer].attn.W_O  # [head, d_head, d_model]
    return einops.einsum(act, w_o.to(act.dtype), "b p h e, h e d -> b p h d")


# Built-in metrics that read only the answer position's logits, and how little of the
# unembedding they need there (see mechkit.patching._metrics.project).
_ANSWER_SCOPES = {metrics.logit_diff: "columns", metrics.answer_prob: "position", metrics.accuracy: "position"}


def run_metric(
    model: HookedTransformer, tokens: Int[Tensor, "batch pos"], pairs: PromptPairs, metric: Metric, hooks: list = ()
) -> Float[Tensor, " batch"]:
    """``metric(model.run_with_hooks(tokens, fwd_hooks=hooks), pairs)``; for built-in metrics that
    read the answer position only, just that position (or, for the logit difference, just its two
    columns) is unembedded, rather than every position's whole vocabulary."""
    scope = _ANSWER_SCOPES.get(metric)
    if scope is None:
        return metric(model.run_with_hooks(tokens, fwd_hooks=list(hooks)), pairs)
    resid = model.run_with_hooks(tokens, fwd_hooks=list(hooks), stop_at_layer=model.cfg.n_layers)
    logits, at = project(model, resid, pairs, 0, scope)
    return metric(logits, at)


def _sender_saving_hooks(model: HookedTransformer, graph: Graph, parts: list[Tensor]) -> list:
    def save(sender: SenderHook):
        def hook(act: Tensor, hook) -> None:
            parts.append(_sender_value(model, sender, act).detach())

        return hook

    # senders are read at hook_z / hook_mlp_out, which a plain run has: no split q/k/v inputs
    # (they would cost a forward per head for nothing)
    return [(s.hook, save(s)) for s in sender_hooks(graph)]


@torch.no_grad()
def sender_outputs(
    model: HookedTransformer, graph: Graph, tokens: Int[Tensor, "batch pos"]
) -> Float[Tensor, "batch pos n_fwd d_model"]:
    """Every sender's output on ``tokens`` (an unmodified run; no unembedding)."""
    parts: list[Tensor] = []
    model.run_with_hooks(tokens, fwd_hooks=_sender_saving_hooks(model, graph, parts), stop_at_layer=model.cfg.n_layers)
    return torch.cat(parts, dim=2)


@torch.no_grad()
def sender_outputs_and_metric(
    model: HookedTransformer, graph: Graph, tokens: Int[Tensor, "batch pos"], pairs: PromptPairs, metric: Metric
) -> tuple[Float[Tensor, "batch pos n_fwd d_model"], Float[Tensor, " batch"]]:
    """Every sender's output on ``tokens`` and the metric of that same (unmodified) run."""
    parts: list[Tensor] = []
    values = run_metric(model, tokens, pairs, metric, _sender_saving_hooks(model, graph, parts))
    return torch.cat(parts, dim=2), values


def ablated_outputs(
    model: HookedTransformer, graph: Graph, pairs: PromptPairs, ablation: str = "resample", chunk: int | None = None
) -> Float[Tensor, "batch_or_1 pos n_fwd d_model"]:
    """What each sender writes when ablated: its output on the corrupted prompt ("resample"),
    its mean output over the clean prompts at each position ("mean"), or zero ("zero").

    ``chunk`` prompts per forward (default: all at once); the mean is accumulated over chunks."""
    device = model.cfg.device
    if ablation == "resample":
        return sender_outputs(model, graph, pairs.corrupted.to(device))
    if ablation == "mean":
        chunk = chunk or len(pairs)
        total = None
        for start in range(0, len(pairs), chunk):
            part = sender_outputs(model, graph, pairs.clean[start : start + chunk].to(device)).sum(0, keepdim=True)
            total = part if total is None else total.add_(part)
        return total / len(pairs)
    if ablation == "zero":
        shape = (1, pairs.clean.shape[1], graph.n_forward, model.cfg.d_model)
        return torch.zeros(shape, device=device, dtype=model.cfg.dtype)
    raise AblationError(f"unknown ablation {ablation!r}: use one of {', '.join(ABLATIONS)}")


def shared_ablation(
    model: HookedTransformer, graph: Graph, pairs: PromptPairs, ablation: str, chunk: int
) -> Float[Tensor, "1 pos n_fwd d_model"] | None:
    """The ablated outputs every prompt shares (mean, zero), or None for resample ablation, whose
    ablated outputs are per prompt and computed chunk by chunk (:func:`chunk_ablation`)."""
    return None if ablation == "resample" else ablated_outputs(model, graph, pairs, ablation, chunk)


def chunk_ablation(
    model: HookedTransformer, graph: Graph, part: PromptPairs, shared: Tensor | None
) -> Float[Tensor, "batch_or_1 pos n_fwd d_model"]:
    """A chunk's ablated outputs: ``shared`` when there is one, else the chunk's corrupted run."""
    return shared if shared is not None else sender_outputs(model, graph, part.corrupted.to(model.cfg.device))


def repeat_pairs(pairs: PromptPairs, times: int) -> PromptPairs:
    """The pairs repeated ``times`` times along the batch, block by block."""
    return pairs[torch.arange(len(pairs)).repeat(times)]


def _edge_hooks(model: HookedTransformer, graph: Graph, ablated: Tensor, keep: Float[Tensor, "c n_fwd n_bwd"]) -> list:
    n_circuits = keep.shape[0]
    drop = 1.0 - keep
    # ablated outputs sender-major, [1 or b, k, p, d] per group, so the receiver einsum is a bmm
    ablated_t = einops.rearrange(ablated, "b p f d -> b f p d")
    # Sender deltas [c, k, b, p, d] in forward order. Without gradients they are written into one
    # [c, n_fwd, b, p, d] buffer, so a receiver reads a view of it; re-concatenating the growing
    # list at every layer copied each delta once per later receiver group. With gradients the
    # list is concatenated instead: writing into a buffer that earlier receivers saved for
    # backward would invalidate their saved views.
    deltas: list[Tensor] = []
    buffer: Tensor | None = None
    filled = 0  # senders seen so far
    joined: dict[int, Tensor] = {}  # with gradients: the concatenation of the first ``filled``

    def on_sender(sender: SenderHook):
        def hook(act: Tensor, hook) -> None:
            nonlocal buffer, filled
            out = einops.rearrange(_sender_value(model, sender, act), "(c b) p k d -> c k b p d", c=n_circuits)
            abl = einops.rearrange(ablated_t[:, sender.fwd], "b k p d -> k b p d")
            delta = abl.unsqueeze(0) - out
            filled = sender.fwd.stop
            if torch.is_grad_enabled():
                deltas.append(delta)
                joined.clear()
                return
            if buffer is None:
                buffer = delta.new_empty((n_circuits, graph.n_forward, *delta.shape[2:]))
            buffer[:, sender.fwd] = delta

        return hook

    def seen() -> Tensor:
        if buffer is not None:
            return buffer[:, :filled]
        if filled not in joined:
            joined[filled] = torch.cat(deltas, dim=1)
        return joined[filled]

    def on_receiver(sl: slice, prefix: int):
        def hook(act: Tensor, hook) -> Tensor:
            # parallel blocks have run this layer's heads before its MLP reads, so keep the
            # receiver's prefix only
            delta = seen()[:, :prefix]
            if delta.shape[1] != prefix:  # a block order the graph does not describe
                raise AblationError(f"receiver {hook.name} saw {delta.shape[1]} senders, expected {prefix}")
            weights = drop[:, :prefix, sl]
            if not weights.requires_grad and not weights.any():
                return act  # every edge into these receivers is kept
            add = einops.einsum(weights, delta, "c f r, c f b p d -> c r b p d")
            add = einops.rearrange(add, "c r b p d -> (c b) p r d")
            return act + _ungrouped(add, act)

        return hook

    hooks = [(s.hook, on_sender(s)) for s in sender_hooks(graph)]
    hooks += [(name, on_receiver(sl, prefix)) for name, sl, prefix in receiver_hooks(graph)]
    return hooks


def _node_hooks(model: HookedTransformer, graph: Graph, ablated: Tensor, keep: Float[Tensor, "c n_fwd"]) -> list:
    """Replace each dropped node's output by its ablated output (heads: inside hook_attn_out)."""
    n_circuits = keep.shape[0]
    current: dict[int, Tensor] = {}

    def change(sender: SenderHook, out: Tensor) -> Tensor:
        a = einops.rearrange(out, "(c b) p k d -> c b p k d", c=n_circuits)
        drop = (1.0 - keep[:, sender.fwd])[:, None, None, :, None]
        return einops.rearrange(drop * (ablated[:, :, sender.fwd].unsqueeze(0) - a), "c b p k d -> (c b) p k d")

    def on_z(sender: SenderHook):
        def hook(act: Tensor, hook) -> None:
            current[sender.layer] = change(sender, _sender_value(model, sender, act)).sum(2)

        return hook

    def on_attn_out(sender: SenderHook):
        def hook(act: Tensor, hook) -> Tensor:
            return act + current.pop(sender.layer)

        return hook

    def on_output(sender: SenderHook):
        def hook(act: Tensor, hook) -> Tensor:
            return act + _ungrouped(change(sender, _grouped(act)), act)

        return hook

    hooks = []
    for s in sender_hooks(graph):
        if s.layer is None:
            hooks.append((s.hook, on_output(s)))
        else:
            hooks += [(s.hook, on_z(s)), (s.patch_hook, on_attn_out(s))]
    return hooks


def run_masked(
    model: HookedTransformer,
    graph: Graph,
    pairs: PromptPairs,
    ablated: Tensor,
    keep: Float[Tensor, "c n_fwd n_bwd"] | Float[Tensor, "c n_fwd"],
    metric: Metric,
) -> Float[Tensor, "c batch ..."]:
    """The metric per circuit and prompt, running all circuits in one forward.

    ``keep`` is a stack of dense edge masks [c, n_fwd, n_bwd] (1 = the edge carries this run's
    activation) or of node masks [c, n_fwd] (1 = the node's output is not ablated). Differentiable
    in ``keep``.
    """
    n_circuits, batch = keep.shape[0], len(pairs)
    device = model.cfg.device
    keep = keep.to(device=device, dtype=ablated.dtype)
    edges = keep.ndim == 3
    hooks = _edge_hooks(model, graph, ablated, keep) if edges else _node_hooks(model, graph, ablated, keep)
    tokens = pairs.clean.to(device).repeat(n_circuits, 1)
    # node masks patch outputs only: no per-head q/k/v inputs (each costs about a forward per head)
    with graph_hooks_enabled(model) if edges else nullcontext():
        values = run_metric(model, tokens, repeat_pairs(pairs, n_circuits), metric, hooks)
    return einops.rearrange(values, "(c b) ... -> c b ...", c=n_circuits)


def run_masked_chunked(
    model: HookedTransformer,
    graph: Graph,
    pairs: PromptPairs,
    ablated: Tensor,
    keep: Tensor,
    metric: Metric,
    max_batch: int = 512,
) -> Float[Tensor, "c batch"]:
    """:func:`run_masked` without gradients, in chunks of at most ``max_batch`` rows."""
    per = max(1, max_batch // max(1, len(pairs)))
    out = []
    with torch.no_grad():
        for start in range(0, keep.shape[0], per):
            out.append(run_masked(model, graph, pairs, ablated, keep[start : start + per], metric).float())
    return torch.cat(out)


def receiver_grads(
    model: HookedTransformer,
    graph: Graph,
    pairs: PromptPairs,
    metric: Metric,
    embed: Float[Tensor, "batch pos d_model"] | None = None,
) -> Float[Tensor, "batch pos n_bwd d_model"]:
    """Gradient of ``metric(...).sum()`` with respect to every receiver's input, on the clean
    prompts; ``embed`` replaces the embedding output (``blocks.0.hook_resid_pre``) when given.

    The reference computation, through TransformerLens's split q/k/v inputs; the scoring methods
    use :func:`mechkit.discovery.grads.receiver_grads_plain`, tested equal to it.
    Model parameters' ``.grad`` are left untouched."""
    device = model.cfg.device
    saved: list[tuple[slice, Tensor]] = []

    def on_embed(act: Tensor, hook) -> Tensor:
        start = act.detach() if embed is None else embed.detach().to(act.dtype)
        return start.requires_grad_(True)

    def on_receiver(sl: slice):
        def hook(act: Tensor, hook) -> Tensor:
            saved.append((sl, act))
            return act

        return hook

    hooks = [("blocks.0.hook_resid_pre", on_embed)]
    hooks += [(name, on_receiver(sl)) for name, sl, _ in receiver_hooks(graph)]
    with torch.enable_grad(), graph_hooks_enabled(model):
        logits = model.run_with_hooks(pairs.clean.to(device), fwd_hooks=hooks)
        value = metric(logits, pairs).sum()
        grads = torch.autograd.grad(value, [t for _, t in saved], allow_unused=True)
    batch, pos = pairs.clean.shape
    out = torch.zeros(batch, pos, graph.n_backward, model.cfg.d_model, device=device, dtype=logits.dtype)
    for (sl, act), grad in zip(saved, grads):
        if grad is not None:
            out[:, :, sl] = _grouped(grad)
    return out



def receiver_grads_replaced(
    model: HookedTransformer,
    graph: Graph,
    pairs: PromptPairs,
    hook_name: str,
    values: Float[Tensor, "c batch pos d_model"],
    metric: Metric,
) -> Float[Tensor, "batch pos n_bwd d_model"]:
    """Gradient of ``metric(...).sum()`` with respect to every receiver's input, on the clean
    prompts with the activation at ``hook_name`` replaced by the constant ``values[i]`` (one run
    per ``i``, batched), summed over the runs. The replacement is a leaf: no gradient flows through
    it to what computed it, so receivers that feed only into the replaced activation get zero. Parameters' ``.grad`` are left untouched."""
    device = model.cfg.device
    n_runs = values.shape[0]
    saved: list[tuple[slice, Tensor]] = []

    def on_embed(act: Tensor, hook) -> Tensor:
        return act.detach().requires_grad_(True)

    def on_replaced(act: Tensor, hook) -> Tensor:
        new = einops.rearrange(values, "c b p d -> (c b) p d").to(device=device, dtype=act.dtype)
        return new.detach().requires_grad_(True)

    def on_receiver(sl: slice):
        def hook(act: Tensor, hook) -> Tensor:
            saved.append((sl, act))
            return act

        return hook

    hooks = [("blocks.0.hook_resid_pre", on_embed), (hook_name, on_replaced)]
    hooks += [(name, on_receiver(sl)) for name, sl, _ in receiver_hooks(graph)]
    tokens = pairs.clean.to(device).repeat(n_runs, 1)
    with torch.enable_grad(), graph_hooks_enabled(model):
        logits = model.run_with_hooks(tokens, fwd_hooks=hooks)
        value = metric(logits, repeat_pairs(pairs, n_runs)).sum()
        needs = [(sl, t) for sl, t in saved if t.requires_grad]
        grads = torch.autograd.grad(value, [t for _, t in needs], allow_unused=True)
    batch, pos = pairs.clean.shape
    out = torch.zeros(n_runs * batch, pos, graph.n_backward, model.cfg.d_model, device=device, dtype=logits.dtype)
    for (sl, _), grad in zip(needs, grads):
        if grad is not None:
            out[:, :, sl] = _grouped(grad)
    return einops.reduce(out, "(c b) p r d -> b p r d", "sum", c=n_runs)
