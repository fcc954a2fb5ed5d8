"""Node-level patching checks for organisms with a known circuit.

>>> from mechkit.organisms.checks import patched_logit_diff  # doctest: +SKIP
>>> patched_logit_diff(model, pairs, ["L0H1", "M0"], source="corrupted")  # doctest: +SKIP

A node is a head (``L1H0``: its ``hook_z`` slice) or an MLP (``M0``: ``hook_mlp_out``). Patching
replaces the node's output on the clean run with its value on the corrupted run
(``source="corrupted"``) or with zeros (``source="zero"``).
"""

from typing import Any

import torch
from transformer_lens import HookedTransformer

from mechkit._types import Node, PromptPairs
from mechkit.errors import HookNameError
from mechkit.metrics import logit_diff


def _hook(node: Node) -> str:
    if node.kind == "head":
        return f"blocks.{node.layer}.attn.hook_z"
    if node.kind == "mlp":
        return f"blocks.{node.layer}.hook_mlp_out"
    raise HookNameError(f"cannot patch node {node.name!r}: patch heads (L<l>H<h>) or MLPs (M<l>)")


def model_nodes(model: HookedTransformer) -> list[str]:
    """Every head and MLP of ``model`` as node names."""
    cfg = model.cfg
    heads = [f"L{layer}H{h}" for layer in range(cfg.n_layers) for h in range(cfg.n_heads)]
    mlps = [] if cfg.attn_only else [f"M{layer}" for layer in range(cfg.n_layers)]
    return heads + mlps


@torch.no_grad()
def patched_logit_diff(model: HookedTransformer, pairs: PromptPairs, nodes: list[str],
                       source: str = "corrupted") -> float:
    """Mean clean-run logit difference with ``nodes`` patched from ``source`` (corrupted | zero)."""
    parsed = [Node.parse(n) for n in nodes]
    hooks = sorted({_hook(n) for n in parsed})
    cache: dict[str, torch.Tensor] = {}
    if source == "corrupted" and hooks:
        _, run = model.run_with_cache(pairs.corrupted, names_filter=lambda name: name in hooks)
        cache = {h: run[h] for h in hooks}

    def make(node: Node):
        def fn(act, hook):
            new = cache[hook.name] if source == "corrupted" else torch.zeros_like(act)
            if node.kind == "head":
                act[:, :, node.head] = new[:, :, node.head]
            else:
                act[:] = new
            return act
        return fn

    logits = model.run_with_hooks(pairs.clean, fwd_hooks=[(_hook(n), make(n)) for n in parsed])
    return float(logit_diff(logits, pairs).mean())


@torch.no_grad()
def circuit_checks(model: HookedTransformer, pairs: PromptPairs, circuit_nodes: list[str]) -> dict[str, Any]:
    """Clean/corrupted logit differences, the fraction kept when every node outside the circuit is
    patched from the corrupted run, and each circuit head's drop when patched alone (corrupted
    value and zero ablation). Drops are fractions of the clean logit difference."""
    clean = patched_logit_diff(model, pairs, [])
    corrupted = float(logit_diff(model(pairs.corrupted), pairs).mean())
    outside = [n for n in model_nodes(model) if n not in circuit_nodes]
    kept = patched_logit_diff(model, pairs, outside) / clean
    heads = [n for n in circuit_nodes if Node.parse(n).kind in ("head", "mlp")]
    drop = {h: 1 - patched_logit_diff(model, pairs, [h]) / clean for h in heads}
    zero = {h: 1 - patched_logit_diff(model, pairs, [h], source="zero") / clean for h in heads}
    r = lambda x: round(float(x), 4)  # noqa: E731
    return {
        "clean_logit_diff": r(clean), "corrupted_logit_diff": r(corrupted),
        "complement_patched_fraction_kept": r(kept), "complement": outside,
        "single_head_corrupted_patch_drop": {k: r(v) for k, v in drop.items()},
        "single_head_zero_ablation_drop": {k: r(v) for k, v in zero.items()},
        "n": len(pairs), "seed": pairs.task.get("seed"), "split": pairs.task.get("split"),
    }
