"""``components``: the named parts of a model that patching and circuit discovery work on.

Names (one canonical string form each):

============  ==========================================  ===============================
name          output hook (read its output)               input hooks (write its input)
============  ==========================================  ===============================
``embed``     ``hook_embed``                              —
``pos_embed`` ``hook_pos_embed`` (absolute positions only) —
``L3H7``      ``blocks.3.attn.hook_z`` [.., head=7, ..]    q/k/v: ``blocks.3.hook_{q,k,v}_input``
``M3``        ``blocks.3.hook_mlp_out``                   in: ``blocks.3.hook_mlp_in``
``logits``    —                                           in: ``blocks.{n-1}.hook_resid_post``
============  ==========================================  ===============================

The q/k/v and MLP input hooks exist only while TransformerLens's ``use_split_qkv_input`` and
``use_hook_mlp_in`` are on: wrap code that needs them in ``with input_hooks_enabled(model):``.
"""

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from transformer_lens import HookedTransformer

from mechkit.errors import HookNameError, did_you_mean

_HEAD = re.compile(r"L(\d+)H(\d+)")
_MLP = re.compile(r"M(\d+)")


@dataclass(frozen=True)
class Component:
    """One named part of a model.

    ``head`` indexes the head axis of ``output_hook`` (``hook_z``: [batch, pos, head, d_head]);
    ``kv_head`` the head axis of the k/v input hooks, which differ under grouped-query attention.
    """

    name: str
    kind: str  # "embed" | "pos_embed" | "head" | "mlp" | "logits"
    layer: int | None = None
    head: int | None = None
    kv_head: int | None = None
    output_hook: str | None = None
    input_hooks: dict[str, str] = field(default_factory=dict)

    @property
    def hooks(self) -> list[str]:
        """Every hook name this component reads or writes."""
        out = [self.output_hook] if self.output_hook else []
        return out + list(self.input_hooks.values())


def components(model: HookedTransformer) -> list[Component]:
    """Every component of ``model``, in forward order (embeddings, then per layer heads
    and MLP, then logits).

    >>> [c.name for c in components(model)][:4]  # doctest: +SKIP
    ['embed', 'pos_embed', 'L0H0', 'L0H1']
    """
    cfg = model.cfg
    out = [Component("embed", "embed", output_hook="hook_embed")]
    if cfg.positional_embedding_type in ("standard", "shortformer"):
        out.append(Component("pos_embed", "pos_embed", output_hook="hook_pos_embed"))
    n_kv = cfg.n_key_value_heads or cfg.n_heads
    group = cfg.n_heads // n_kv
    for layer in range(cfg.n_layers):
        for head in range(cfg.n_heads):
            out.append(
                Component(
                    f"L{layer}H{head}",
                    "head",
                    layer=layer,
                    head=head,
                    kv_head=head // group,
                    output_hook=f"blocks.{layer}.attn.hook_z",
                    input_hooks={x: f"blocks.{layer}.hook_{x}_input" for x in "qkv"},
                )
            )
        if not cfg.attn_only:
            out.append(
                Component(
                    f"M{layer}",
                    "mlp",
                    layer=layer,
                    output_hook=f"blocks.{layer}.hook_mlp_out",
                    input_hooks={"in": f"blocks.{layer}.hook_mlp_in"},
                )
            )
    out.append(
        Component("logits", "logits", input_hooks={"in": f"blocks.{cfg.n_layers - 1}.hook_resid_post"})
    )
    return out


def component(model: HookedTransformer, name: str) -> Component:
    """Look up one component by name; an unknown name raises with the closest valid ones."""
    table = {c.name: c for c in components(model)}
    if name in table:
        return table[name]
    cfg = model.cfg
    reason = "no such component"
    if m := _HEAD.fullmatch(name):
        layer, head = map(int, m.groups())
        reason = f"the model has {cfg.n_layers} layers x {cfg.n_heads} heads (L0H0..L{cfg.n_layers - 1}H{cfg.n_heads - 1})"
    elif m := _MLP.fullmatch(name):
        reason = (
            "the model is attention-only"
            if cfg.attn_only
            else f"the model has {cfg.n_layers} MLPs (M0..M{cfg.n_layers - 1})"
        )
    raise HookNameError(f"unknown component {name!r} ({reason}); {did_you_mean(name, table)}")


def check_hook_name(model: HookedTransformer, hook_name: str) -> str:
    """Return ``hook_name`` if the model has that hook point, else raise with close matches."""
    if hook_name in model.hook_dict:
        return hook_name
    raise HookNameError(f"unknown hook {hook_name!r}; {did_you_mean(hook_name, model.hook_dict)}")


@contextmanager
def input_hooks_enabled(model: HookedTransformer) -> Iterator[HookedTransformer]:
    """Turn on the per-head q/k/v input hooks and the MLP input hook, and restore on exit.

    They cost memory ([batch, pos, head, d_model] per layer), so they are off by default.
    """
    cfg = model.cfg
    old = (cfg.use_split_qkv_input, cfg.use_hook_mlp_in)
    model.set_use_split_qkv_input(True)
    if not cfg.attn_only:
        model.set_use_hook_mlp_in(True)
    try:
        yield model
    finally:
        model.set_use_split_qkv_input(old[0])
        if not cfg.attn_only:
            model.set_use_hook_mlp_in(old[1])
