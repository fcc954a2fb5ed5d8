"""Receiver gradients from one plain forward and backward, without per-head input copies.

The gradient methods (EAP, EAP-IG) need ``dM / d input_r`` for every receiver ``r``: each
head's query, key and value input, each MLP's input and the logits' residual. TransformerLens
exposes the per-head inputs only with ``use_split_qkv_input``, which copies the residual stream
once per head and q/k/v and normalises every copy (27 layer norms per layer on SmolLM2), in the
forward pass and again in the backward.

Those copies are all equal in a gradient run (nothing is patched at receivers), so the same
gradients follow from a plain run: with ``x`` the block's ``resid_pre``, ``n = ln1(x)`` and head
``h``'s query ``q_h = n W_Q[h]``,

    dM/d(q input of h) = J_ln1(x)^T (W_Q[h] dM/dq_h)

and likewise for keys and values (per query head: grouped k/v heads are ungrouped, as the edge
graph is). ``dM/dq_h`` is the gradient at ``hook_q``; the layer norm's vector-Jacobian product is
computed in closed form for TransformerLens's LN, LNPre, RMS and RMSPre (identity for none),
broadcast over the 3 x n_heads receivers of a layer. Equal to the split-input gradients up to
float rounding (tested against them).
"""

import einops
import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedTransformer

from mechkit._types import PromptPairs
from mechkit.discovery.forward import QKV, Metric, config_flags, repeat_pairs, run_metric
from mechkit.discovery.graph import Graph


def norm_vjp(ln: torch.nn.Module, kind: str | None, x: Float[Tensor, "batch pos d"], grad: Float[Tensor, "batch pos r d"]) -> Float[Tensor, "batch pos r d"]:
    """``J_ln(x)^T grad[..., r, :]`` for every ``r``: the gradient at a normalisation's input,
    given gradients at its output, all at the same input ``x``."""
    if kind is None:
        return grad
    x = x.unsqueeze(2).to(grad.dtype)  # [b, p, 1, d]: one Jacobian per position, shared by r
    if kind in ("LN", "LNPre"):
        x = x - x.mean(-1, keepdim=True)
    scale = (x.pow(2).mean(-1, keepdim=True) + ln.eps).sqrt()
    normalized = x / scale
    g = grad * ln.w if kind in ("LN", "RMS") else grad
    if kind in ("LN", "LNPre"):
        g = g - g.mean(-1, keepdim=True)
    return (g - normalized * (g * normalized).mean(-1, keepdim=True)) / scale


def receiver_grads_plain(
    model: HookedTransformer,
    graph: Graph,
    pairs: PromptPairs,
    metric: Metric,
    *,
    embed: Float[Tensor, "batch pos d_model"] | None = None,
    replace: tuple[str, Float[Tensor, "c batch pos d_model"]] | None = None,
) -> Float[Tensor, "rows pos n_bwd d_model"]:
    """Gradient of ``metric(...).sum()`` at every receiver's input, on the clean prompts.

    ``embed`` replaces the embedding output; ``replace = (hook, values)`` sets the activation at
    ``hook`` to the constant ``values[i]`` in run ``i`` (the runs batched, ``rows = c * batch``;
    no gradient flows through the replaced activation). Parameters' ``.grad`` are untouched.
    """
    cfg = model.cfg
    device = cfg.device
    n_runs = 1 if replace is None else replace[1].shape[0]
    resid_pre: dict[int, Tensor] = {}
    at: dict[tuple[int, str], Tensor] = {}  # (layer, "q"|"k"|"v"|"mlp") -> activation, and (-1, "logits")

    def on_embed(act: Tensor, hook) -> Tensor:
        start = act if embed is None else embed.to(device=act.device, dtype=act.dtype)
        return start.detach().requires_grad_(True)

    def on_replaced(act: Tensor, hook) -> Tensor:
        values = einops.rearrange(replace[1], "c b p d -> (c b) p d").to(device=act.device, dtype=act.dtype)
        return values.detach().requires_grad_(True)

    def save_resid(layer: int):
        def hook(act: Tensor, hook) -> None:
            resid_pre[layer] = act.detach()

        return hook

    def keep(key: tuple[int, str]):
        def hook(act: Tensor, hook) -> None:
            at[key] = act

        return hook

    hooks = [("blocks.0.hook_resid_pre", on_embed)]
    if replace is not None:
        hooks.append((replace[0], on_replaced))
    for layer in range(graph.n_layers):
        hooks.append((f"blocks.{layer}.hook_resid_pre", save_resid(layer)))
        hooks += [(f"blocks.{layer}.attn.hook_{x}", keep((layer, x))) for x in QKV]
        if graph.has_mlp:
            hooks.append((f"blocks.{layer}.hook_mlp_in", keep((layer, "mlp"))))
    hooks.append((f"blocks.{graph.n_layers - 1}.hook_resid_post", keep((-1, "logits"))))

    flags = {"use_split_qkv_input": False, "ungroup_grouped_query_attention": True, "use_attn_result": False,
             "use_hook_mlp_in": graph.has_mlp}
    tokens = pairs.clean.to(device).repeat(n_runs, 1)
    run_pairs = repeat_pairs(pairs, n_runs) if n_runs > 1 else pairs
    with torch.enable_grad(), config_flags(model, **flags):
        value = run_metric(model, tokens, run_pairs, metric, hooks).sum()
        keys = [k for k, t in at.items() if t.requires_grad]
        grads = dict(zip(keys, torch.autograd.grad(value, [at[k] for k in keys], allow_unused=True)))

    rows, pos = tokens.shape
    # the conversion reads parameters (W_Q/K/V, the norm weight): keep it out of autograd, so the
    # result holds no graph (a graph here kept every earlier chunk alive through the callers' sums)
    with torch.no_grad():
        out = torch.zeros(rows, pos, graph.n_backward, cfg.d_model, device=device, dtype=resid_pre[0].dtype)
        for layer in range(graph.n_layers):
            block = model.blocks[layer]
            weights = {"q": block.attn.W_Q, "k": block.attn.W_K, "v": block.attn.W_V}  # [head, d_model, d_head], k/v ungrouped
            parts = []
            for x in QKV:
                g = grads.get((layer, x))
                if g is None:
                    parts.append(out.new_zeros(rows, pos, graph.n_heads, cfg.d_model))
                else:
                    parts.append(einops.einsum(g, weights[x].to(g.dtype), "b p h e, h d e -> b p h d"))
            if any(grads.get((layer, x)) is not None for x in QKV):
                start = graph.qkv_bwd(layer, "q")  # a layer's q, k, v receivers are contiguous
                out[:, :, start : start + 3 * graph.n_heads] = norm_vjp(
                    block.ln1, cfg.normalization_type, resid_pre[layer], torch.cat(parts, dim=2)
                )
            if graph.has_mlp and grads.get((layer, "mlp")) is not None:
                out[:, :, graph.mlp_bwd(layer)] = grads[(layer, "mlp")]
        if grads.get((-1, "logits")) is not None:
            out[:, :, graph.logits_bwd] = grads[(-1, "logits")]
        return out
