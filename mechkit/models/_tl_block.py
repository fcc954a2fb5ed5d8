"""One TransformerLens block, run with fewer operations when nothing needs its other hook points.

A ``TransformerBlock`` call on a few positions costs far more than its arithmetic: a dozen
hook-point modules, einops rearranges, and ``ln1`` computed three times (once each for the
query, key and value inputs). The patching engine runs hundreds of such calls per sweep, so
``run_block`` computes the same block with the same operations in the same order (on a CPU the
results equal TransformerLens's bit for bit on the shipped organisms; on accelerators the layer
norms and attention are single fused kernels, equal up to float rounding), calling the given hooks
at the same places, and falls back to the block itself for anything it does not cover (ALiBi or
dynamically rescaled rotary positions, split-input attention, QK norms, hooks it does not emulate,
hooks a user left on the model, or gradients). It covers the Llama family: rotary positions,
grouped-query attention, RMSNorm and gated MLPs.

TransformerLens-specific, like ``mechkit.models._tl``: the move to 4.x changes these two modules.
"""

import weakref
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from transformer_lens import HookedTransformer
from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry as KVEntry
from transformer_lens.hook_points import HookPoint
from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

from mechkit.models._tl import fwd_hooks

Hook = tuple[str, Callable]

# Hook points the lean path calls, in TransformerLens's order within a block.
LEAN_HOOKS = ("hook_resid_pre", "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_rot_q", "attn.hook_rot_k",
              "attn.hook_attn_scores", "attn.hook_pattern", "attn.hook_z", "hook_attn_out", "hook_resid_mid",
              "mlp.hook_pre", "mlp.hook_pre_linear", "mlp.hook_post", "hook_mlp_out", "hook_resid_post")
_NORMS = ("LayerNorm", "LayerNormPre", "RMSNorm", "RMSNormPre", "Identity")
_FLAGS_OFF = ("use_attn_in", "use_split_qkv_input", "use_attn_result", "use_hook_mlp_in", "parallel_attn_mlp",
              "use_normalization_before_and_after", "use_qk_norm", "use_attention_sinks", "use_logn_attn",
              "scale_attn_by_inverse_layer_idx", "load_in_4bit", "use_dynamic_ntk_rope")
# architectures whose attention normalises queries and keys whatever the flags say
_QK_NORM_ARCHITECTURES = ("OlmoeForCausalLM", "Olmo2ForCausalLM", "Olmo3ForCausalLM")

_KV_HOOKS = ("attn.hook_k", "attn.hook_v")
_SCORE_HOOKS = ("attn.hook_attn_scores", "attn.hook_pattern")
_BEFORE_QUERIES = ("hook_resid_pre", *_KV_HOOKS, "attn.hook_rot_k")  # hook points whose every position a query_at call computes

_plain: "weakref.WeakKeyDictionary[HookedTransformer, bool]" = weakref.WeakKeyDictionary()
_points: "weakref.WeakKeyDictionary[torch.nn.Module, list[HookPoint]]" = weakref.WeakKeyDictionary()
_weights: "weakref.WeakKeyDictionary[torch.nn.Module, tuple]" = weakref.WeakKeyDictionary()
_mlp_weights: "weakref.WeakKeyDictionary[torch.nn.Module, tuple]" = weakref.WeakKeyDictionary()


def lean_supported(model: HookedTransformer) -> bool:
    """Whether every block of ``model`` is a plain pre-norm block the lean path computes.
    (The switchable flags, such as ``use_attn_result``, are read on every call.)"""
    cfg = model.cfg
    if any(getattr(cfg, f, False) for f in _FLAGS_OFF):
        return False
    if model not in _plain:
        _plain[model] = (
            cfg.positional_embedding_type in ("standard", "shortformer", "rotary")
            and cfg.attention_dir == "causal"
            and cfg.original_architecture not in _QK_NORM_ARCHITECTURES
            and (cfg.attn_scores_soft_cap or -1) <= 0
            and getattr(cfg, "clip_qkv", None) is None
            and not cfg.is_layer_norm_activation()
            and cfg.dtype in (torch.float32, torch.float64)
            and all(_plain_block(b) for b in model.blocks)
        )
    return _plain[model]


def _plain_block(block: torch.nn.Module) -> bool:
    mlp_ok = not hasattr(block, "mlp") or type(block.mlp).__name__ in ("MLP", "GatedMLP")
    norms = [type(getattr(block, n)).__name__ for n in ("ln1", "ln2") if hasattr(block, n)]
    window = getattr(block.attn, "attn_type", "global") == "global"  # local attention masks a window
    post_norm = block.cfg.original_architecture in POST_NORM_ARCHITECTURES
    return (type(block).__name__ == "TransformerBlock" and type(block.attn).__name__ in ("Attention", "GroupedQueryAttention")
            and mlp_ok
            and all(n in _NORMS for n in norms) and window and not post_norm)


def run_block(
    model: HookedTransformer,
    layer: int,
    resid: Tensor,
    entry: KVEntry | None,
    hooks: list[Hook] = (),
    shortformer_pos_embed: Tensor | None = None,
    attention_mask: Tensor | None = None,
    own_kv_cached: bool = False,
    query_at: Tensor | None = None,
) -> Tensor:
    """``model.blocks[layer](resid, ...)`` with ``hooks`` (full hook names; other blocks' hooks
    are ignored) attached for this call. ``entry``: the block's key-value cache entry, used and
    updated exactly as the block would.

    ``own_kv_cached``: ``resid`` is one position whose own keys and values are already the
    entry's last (unchanged from the run the entry comes from), so only its query is computed
    and nothing is appended. The entry's tensors may then be permuted views of attention-layout
    storage, read without a copy: values [batch, head, pos, d_head]; keys [batch, head, d_head, pos]
    (or [batch, head, pos, d_head] where ``fused_kernels``).

    ``query_at`` [batch]: only the output at that position of ``resid`` (one per row) is wanted,
    [batch, 1, d_model]. Every position's keys and values are still computed (and cached); hooks
    see what the block computes at every position up to ``hook_resid_mid``. Not for blocks
    without a separate MLP step (attention-only, parallel attention and MLP).
    """
    prefix = f"blocks.{layer}."
    mine = [(name[len(prefix):], fn) for name, fn in hooks if name.startswith(prefix)]
    block = model.blocks[layer]
    lean = not (torch.is_grad_enabled() or not lean_supported(model) or any(n not in LEAN_HOOKS for n, _ in mine)
                or _has_user_hooks(block) or (own_kv_cached and any(n in _KV_HOOKS for n, _ in mine))
                or not _rotary_table_covers(block.attn, resid, entry, own_kv_cached))
    if query_at is not None and not (lean and all(n in _BEFORE_QUERIES for n, _ in mine)):
        # every query is computed (a hook reads them, or TransformerLens's block runs): cut the
        # residual to the wanted positions before the MLP instead
        rows, at = torch.arange(len(query_at), device=query_at.device), query_at
        mine, query_at = [*mine, ("hook_resid_mid", lambda act, hook: act[rows, at][:, None])], None
    if not lean:
        if own_kv_cached:  # the block recomputes this position's keys and values itself
            entry = KVEntry(entry.past_keys[:, :-1], entry.past_values[:, :-1], frozen=True)
        with fwd_hooks(model, [(prefix + n, fn) for n, fn in mine]):
            return block(resid, shortformer_pos_embed=shortformer_pos_embed, past_kv_cache_entry=entry,
                         attention_mask=attention_mask)
    return _lean(model, block, prefix, resid, entry, _by_name(mine), shortformer_pos_embed, attention_mask,
                 own_kv_cached, query_at)


def _by_name(hooks: list[Hook]) -> dict[str, list[Callable]]:
    out: dict[str, list[Callable]] = {}
    for name, fn in hooks:
        out.setdefault(name, []).append(fn)
    return out


def _has_user_hooks(block: torch.nn.Module) -> bool:
    if block not in _points:
        _points[block] = [m for m in block.modules() if isinstance(m, HookPoint)]
    return any(p._forward_hooks or p._forward_pre_hooks for p in _points[block])


def kv_heads(cfg) -> int:
    """How many key/value heads the attention computes (and caches): fewer than query heads
    under grouped-query attention, unless TransformerLens is told to ungroup them."""
    if cfg.n_key_value_heads is None or cfg.ungroup_grouped_query_attention:
        return cfg.n_heads
    return cfg.n_key_value_heads


def _kv_params(attn: torch.nn.Module) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(W_K, W_V, b_K, b_V) as the attention applies them: grouped-query attention keeps one
    per key/value head (``_W_K``), its public ``W_K`` repeats them per query head."""
    if kv_heads(attn.cfg) != attn.cfg.n_heads:
        return attn._W_K, attn._W_V, attn._b_K, attn._b_V
    return attn.W_K, attn.W_V, attn.b_K, attn.b_V


def _fused(model: HookedTransformer, block: torch.nn.Module) -> tuple[Tensor, Tensor, Tensor]:
    """(W_QKV [(heads + 2 * kv_heads) * d_head, d_model], b_QKV, W_O [d_model, heads * d_head]),
    kept between calls (while they fit ``CACHE_BYTES`` for the whole model) and rebuilt whenever
    a weight changes (a tensor's version counter moves on every in-place write)."""
    a = block.attn
    w_k, w_v, b_k, b_v = _kv_params(a)
    params = (a.W_Q, w_k, w_v, a.b_Q, b_k, b_v, a.W_O)
    key = tuple((p.data_ptr(), p._version) for p in params)
    cached = _weights.get(a)
    if cached is None or cached[0] != key:
        d_model = a.W_Q.shape[1]
        w_qkv = torch.cat([a.W_Q, w_k, w_v]).transpose(1, 2).reshape(-1, d_model).contiguous()
        b_qkv = torch.cat([a.b_Q, b_k, b_v]).reshape(-1)
        w_o = a.W_O.reshape(-1, d_model).T.contiguous()
        cached = (key, w_qkv.detach(), b_qkv.detach(), w_o.detach())
        if _kept_bytes(model) <= CACHE_BYTES:
            _weights[a] = cached
    return cached[1:]


def _gated(model: HookedTransformer, mlp: torch.nn.Module) -> tuple[Tensor, Tensor, Tensor]:
    """A gated MLP's (W_gate^T, W_in^T, W_out^T), contiguous as TransformerLens makes them on
    every call (``F.linear`` on them is its arithmetic), kept like ``_fused``'s."""
    params = (mlp.W_gate, mlp.W_in, mlp.W_out)
    key = tuple((p.data_ptr(), p._version) for p in params)
    cached = _mlp_weights.get(mlp)
    if cached is None or cached[0] != key:
        cached = (key, *(p.detach().T.contiguous() for p in params))
        if _kept_bytes(model) <= CACHE_BYTES:
            _mlp_weights[mlp] = cached
    return cached[1:]


def _kept_bytes(model: HookedTransformer) -> int:
    """Bytes of the rearranged weights kept for the whole model (roughly its attention and gated
    MLP weights once more)."""
    cfg = model.cfg
    attn = (cfg.n_heads * 2 + 2 * kv_heads(cfg)) * cfg.d_head * cfg.d_model
    mlp = 3 * cfg.d_model * (cfg.d_mlp or 0) if cfg.gated_mlp else 0
    return cfg.n_layers * (attn + mlp) * (torch.finfo(cfg.dtype).bits // 8)


CACHE_BYTES = 512 << 20  # rearranged weights kept for a whole model; larger ones are rebuilt per call


def _rotary_table_covers(attn: torch.nn.Module, resid: Tensor, entry: KVEntry | None, own_kv_cached: bool) -> bool:
    """Whether TransformerLens's rotary tables already hold every position this call rotates
    (it extends them on demand; the lean path leaves that to it), on the residual's device."""
    if attn.cfg.positional_embedding_type != "rotary":
        return True
    n_keys = (entry.past_keys.shape[1] if entry is not None else 0) + (0 if own_kv_cached else resid.shape[1])
    return n_keys <= attn.rotary_cos.shape[0] and attn.rotary_cos.device == resid.device


def position_ids(attention_mask: Tensor) -> Tensor:
    """[batch, pos] rotary positions of left-padded rows, as TransformerLens counts them: from
    each row's first attended token, padding at 0 (``get_offset_position_ids``)."""
    ids = attention_mask.cumsum(dim=1) - 1
    return ids.masked_fill(ids < 0, 0)


def _rotate(attn: torch.nn.Module, x: Tensor, positions: Tensor) -> Tensor:
    """``attn.apply_rotary``'s arithmetic at explicit positions ([pos], or [batch, pos] per row).

    x: [batch, pos, heads, d_head]; only the first ``rotary_dim`` features rotate."""
    cfg = attn.cfg
    rot, keep = x[..., : cfg.rotary_dim], x[..., cfg.rotary_dim :]
    if cfg.rotary_adjacent_pairs:  # GPT-J: pairs (0, 1), (2, 3), ...
        flip = torch.stack([-rot[..., 1::2], rot[..., ::2]], dim=-1).flatten(-2)
    else:  # GPT-NeoX and Llama: the first half pairs with the second
        half = rot.shape[-1] // 2
        flip = torch.cat([-rot[..., half:], rot[..., :half]], dim=-1)
    cos, sin = attn.rotary_cos[positions], attn.rotary_sin[positions]  # [(batch,) pos, rotary_dim]
    cos, sin = (cos[None, :, None], sin[None, :, None]) if positions.dim() == 1 else (cos[:, :, None], sin[:, :, None])
    return torch.cat([rot * cos + flip * sin, keep], dim=-1)


def final_norm(model: HookedTransformer, x: Tensor) -> Tensor:
    """``model.ln_final(x)`` (identity without normalisation), by the lean path where it can."""
    if model.cfg.normalization_type is None:
        return x
    ln = model.ln_final
    if torch.is_grad_enabled() or type(ln).__name__ not in _NORMS or _has_user_hooks(ln):
        return ln(x)
    return _norm(ln, x, fused_kernels(x.device))


def fused_kernels(device: torch.device) -> bool:
    """Whether to run normalisation and attention as single fused kernels (equal up to float
    rounding, not bitwise) instead of TransformerLens's operations. On accelerators a small
    forward pass costs kernel launches, not arithmetic; on a CPU the exact sequence costs little."""
    return device.type != "cpu"


def _norm(module: torch.nn.Module, x: Tensor, fused: bool = False) -> Tensor:
    """TransformerLens's normalisation layers, operation for operation (or one fused kernel)."""
    kind = type(module).__name__
    if kind == "Identity":
        return x
    if fused:
        shape, w = (x.shape[-1],), getattr(module, "w", None)
        if kind.startswith("LayerNorm"):
            return F.layer_norm(x, shape, w, getattr(module, "b", None), module.eps)
        return F.rms_norm(x, shape, w, module.eps)
    if kind.startswith("LayerNorm"):
        x = x - x.mean(-1, keepdim=True)
    x = x / (x.pow(2).mean(-1, keepdim=True) + module.eps).sqrt()
    if kind == "LayerNorm":
        return x * module.w + module.b
    return x * module.w if kind == "RMSNorm" else x


def _lean(
    model: HookedTransformer,
    block: torch.nn.Module,
    prefix: str,
    resid: Tensor,
    entry: KVEntry | None,
    hooks: dict[str, list[Callable]],
    pos_embed: Tensor | None,
    attention_mask: Tensor | None,
    own_kv_cached: bool = False,
    query_at: Tensor | None = None,
) -> Tensor:
    """The block's forward pass, as TransformerLens computes it, with ``hooks`` called in place."""

    def at(name: str, act: Tensor) -> Tensor:
        for fn in hooks.get(name, ()):
            out = fn(act, hook=model.hook_dict[prefix + name])
            act = act if out is None else out
        return act

    cfg, attn = model.cfg, block.attn
    w_qkv, b_qkv, w_o = _fused(model, block)
    resid = at("hook_resid_pre", resid)
    batch, n, _ = resid.shape
    heads, kv, d_head = cfg.n_heads, kv_heads(cfg), cfg.d_head
    hd, kvd = heads * d_head, kv * d_head
    w_q, b_q, w_kv, b_kv = w_qkv[:hd], b_qkv[:hd], w_qkv[hd:], b_qkv[hd:]
    fused = fused_kernels(resid.device)
    x = _norm(block.ln1, resid, fused)
    query_pos = None  # [batch, 1]: each query's position among the keys, where queries are cut
    if own_kv_cached:
        qk_in = x if pos_embed is None else x + pos_embed
        q = at("attn.hook_q", F.linear(qk_in, w_q, b_q).unflatten(-1, (heads, d_head)))
        k, v = entry.past_keys, entry.past_values
        offset = k.shape[1] - n
    else:
        if query_at is not None:  # keys and values everywhere, the query at one position per row
            rows = torch.arange(batch, device=resid.device)
            x_q = x[rows, query_at][:, None]
            if pos_embed is None:
                k, v = F.linear(x, w_kv, b_kv).split(kvd, -1)
            else:
                k = F.linear(x + pos_embed, w_kv[:kvd], b_kv[:kvd])
                v = F.linear(x, w_kv[kvd:], b_kv[kvd:])
                x_q = x_q + pos_embed[rows, query_at][:, None]
            q = F.linear(x_q, w_q, b_q)
        elif pos_embed is None:
            q, k, v = F.linear(x, w_qkv, b_qkv).split([hd, kvd, kvd], -1)
        else:  # shortformer: positions enter queries and keys only
            q, k = F.linear(x + pos_embed, w_qkv[: hd + kvd], b_qkv[: hd + kvd]).split([hd, kvd], -1)
            v = F.linear(x, w_kv[kvd:], b_kv[kvd:])
        q, k, v = q.unflatten(-1, (heads, d_head)), k.unflatten(-1, (kv, d_head)), v.unflatten(-1, (kv, d_head))
        if query_at is None:  # (run_block passes query_at only when no hook reads the queries)
            q = at("attn.hook_q", q)
        k, v = at("attn.hook_k", k), at("attn.hook_v", v)
        offset = 0
        if entry is not None:
            offset = entry.past_keys.size(1)
            k, v = entry.append(k, v)
        if query_at is not None:
            query_pos = (offset + query_at)[:, None]
            resid, n = resid[rows, query_at][:, None], 1
    n_keys = k.shape[1]
    cut_queries = query_pos is not None
    if cfg.positional_embedding_type == "rotary":  # keys are cached unrotated: rotate them all
        key_ids = query_ids = None
        if attention_mask is not None:
            ids = position_ids(attention_mask)
            key_ids = ids[:, :n_keys]
            query_ids = ids.gather(1, query_pos) if cut_queries else ids[:, offset : offset + n]
        elif cut_queries:
            query_ids = query_pos
        q = _rotate(attn, q, torch.arange(offset, offset + n, device=q.device) if query_ids is None else query_ids)
        k = _rotate(attn, k, torch.arange(n_keys, device=k.device) if key_ids is None else key_ids)
        q, k = at("attn.hook_rot_q", q), at("attn.hook_rot_k", k)
    causal = None  # [(batch, 1,) query, key], where a query may not see every key
    if n > 1 or attention_mask is not None or cut_queries:
        if not cut_queries:
            query_pos = torch.arange(offset, offset + n, device=q.device)
        causal = query_pos[..., None] >= torch.arange(n_keys, device=q.device)
        if cut_queries:
            causal = causal[:, None]  # [batch, 1, query, key]
        if attention_mask is not None:
            causal = causal & attention_mask[:, None, None, :].bool()
    if fused and attention_mask is None and not any(h in hooks for h in _SCORE_HOOKS):
        z = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=causal,
                                           scale=1 / attn.attn_scale, enable_gqa=kv != heads)
        z = at("attn.hook_z", z.transpose(1, 2))  # [batch, query, head, d_head]
    else:
        if kv != heads:  # each key/value head serves a group of query heads, as TransformerLens repeats them
            k, v = k.repeat_interleave(heads // kv, dim=2), v.repeat_interleave(heads // kv, dim=2)
        scores = q.transpose(1, 2) @ k.permute(0, 2, 3, 1) / attn.attn_scale  # [batch, head, query, key]
        if causal is not None:
            scores = torch.where(causal, scores, attn.IGNORE)
        scores = at("attn.hook_attn_scores", scores)
        pattern = F.softmax(scores, dim=-1)
        if attention_mask is not None:  # fully masked rows (padding) give NaN: TransformerLens zeroes them
            pattern = torch.where(torch.isnan(pattern), torch.zeros_like(pattern), pattern)
        pattern = at("attn.hook_pattern", pattern)
        z = at("attn.hook_z", (pattern @ v.transpose(1, 2)).transpose(1, 2))  # [batch, query, head, d_head]
    attn_out = at("hook_attn_out", F.linear(z.reshape(z.shape[0], z.shape[1], hd), w_o, attn.b_O))
    if cfg.attn_only:
        return at("hook_resid_post", resid + attn_out)
    resid_mid = at("hook_resid_mid", resid + attn_out)
    mlp = block.mlp
    x = _norm(block.ln2, resid_mid, fused)
    if cfg.gated_mlp:  # act(x W_gate) * (x W_in) + b_in, as TransformerLens's GatedMLP
        w_gate_t, w_in_t, w_out_t = _gated(model, mlp)
        pre = at("mlp.hook_pre", F.linear(x, w_gate_t))
        pre_linear = at("mlp.hook_pre_linear", F.linear(x, w_in_t))
        post = at("mlp.hook_post", mlp.act_fn(pre) * pre_linear + mlp.b_in)
        return at("hook_resid_post", resid_mid + at("hook_mlp_out", F.linear(post, w_out_t, mlp.b_out)))
    pre = at("mlp.hook_pre", torch.addmm(mlp.b_in, x.reshape(-1, x.shape[-1]), mlp.W_in).view(*x.shape[:-1], -1))
    post = at("mlp.hook_post", mlp.act_fn(pre))
    mlp_out = torch.addmm(mlp.b_out, post.reshape(-1, post.shape[-1]), mlp.W_out).view(*post.shape[:-1], -1)
    return at("hook_resid_post", resid_mid + at("hook_mlp_out", mlp_out))
