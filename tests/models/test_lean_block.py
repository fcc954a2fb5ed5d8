"""run_block: the lean block equals TransformerLens's block, hooks included, and falls back where it must."""

import pytest
import torch
from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry as KVEntry

from mechkit.models import _tl_block
from mechkit.models._tl_block import LEAN_HOOKS, lean_supported, run_block
from tests.conftest import tiny_hooked

CONFIGS = {
    "ln-gelu": {},
    "ln-pre": {"normalization_type": "LNPre"},
    "rms-relu": {"normalization_type": "RMS", "act_fn": "relu"},
    "rms-pre": {"normalization_type": "RMSPre", "act_fn": "silu"},
    "no-norm": {"normalization_type": None},
    "attn-only": {"attn_only": True},
    "shortformer": {"positional_embedding_type": "shortformer"},
    "rotary": {"positional_embedding_type": "rotary", "rotary_dim": 8},
    "rotary-partial-gptj": {"positional_embedding_type": "rotary", "rotary_dim": 4, "rotary_adjacent_pairs": True},
    # the Llama family (SmolLM2): rotary, grouped-query attention, RMSNorm, gated MLP
    "llama": {"positional_embedding_type": "rotary", "rotary_dim": 4, "n_heads": 4, "d_head": 4,
              "n_key_value_heads": 2, "normalization_type": "RMS", "act_fn": "silu", "gated_mlp": True,
              "final_rms": True},
    "gqa-ungrouped": {"positional_embedding_type": "rotary", "rotary_dim": 4, "n_heads": 4, "d_head": 4,
                      "n_key_value_heads": 2, "ungroup_grouped_query_attention": True},
}


def kv_shape(cfg, batch: int, pos: int) -> tuple[int, ...]:
    return batch, pos, _tl_block.kv_heads(cfg), cfg.d_head


def randomized(**kwargs):
    """A tiny model with every weight random (biases and norm scales included)."""
    model = tiny_hooked(**kwargs).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5 + (1.0 if p.dim() == 1 and p.shape[0] == 16 else 0.0))
    return model


def call(model, layer, lean: bool, with_mask: bool, frozen: bool, names=LEAN_HOOKS):
    """(output, {hook: act seen}, keys, values) of one block call with a hook at each of ``names``."""
    g = torch.Generator().manual_seed(2)
    cfg = model.cfg
    resid = torch.randn(3, 5, cfg.d_model, generator=g)
    past = (torch.randn(kv_shape(cfg, 3, 4), generator=g), torch.randn(kv_shape(cfg, 3, 4), generator=g))
    entry = KVEntry(past[0].clone(), past[1].clone(), frozen=frozen)
    mask = None
    if with_mask:  # the first row's first two cached positions are padding
        mask = torch.ones(3, 9, dtype=torch.long)
        mask[0, :2] = 0
    pos_embed = torch.randn(3, 5, cfg.d_model, generator=g) if cfg.positional_embedding_type == "shortformer" else None
    seen = {}

    def hook(act, hook):
        seen[hook.name] = act.clone()
        return act * 1.01

    hooks = [(f"blocks.{layer}.{h}", hook) for h in names if f"blocks.{layer}.{h}" in model.hook_dict]
    _tl_block._plain[model] = lean  # force one path
    with torch.no_grad():
        out = run_block(model, layer, resid, entry, hooks, pos_embed, mask)
    _tl_block._plain.pop(model)
    return out, seen, entry.past_keys, entry.past_values


@pytest.fixture(params=[False, True], ids=["exact-ops", "fused"])
def fused(request, monkeypatch):
    """Both lean variants: TransformerLens's operations (CPUs) and fused kernels (accelerators)."""
    monkeypatch.setattr(_tl_block, "fused_kernels", lambda device: request.param)
    return request.param


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("with_mask", [False, True], ids=["no-mask", "mask"])
def test_lean_equals_transformer_lens(name, with_mask, fused):
    model = randomized(**CONFIGS[name])
    assert lean_supported(model)
    # fused attention is used only where no hook reads the scores or the pattern
    names = [h for h in LEAN_HOOKS if not (fused and h in ("attn.hook_attn_scores", "attn.hook_pattern"))]
    for layer in range(model.cfg.n_layers):
        for frozen in (True, False):
            tl_out, tl_seen, tl_k, tl_v = call(model, layer, False, with_mask, frozen, names)
            out, seen, k, v = call(model, layer, True, with_mask, frozen, names)
            assert seen.keys() == tl_seen.keys() and len(seen) >= 6
            for h in seen:
                assert seen[h].shape == tl_seen[h].shape, h
                # float rounding relative to the activations' scale (the gated MLP's reach ~40)
                scale = max(1.0, tl_seen[h].nan_to_num(posinf=0, neginf=0).abs().max().item())
                torch.testing.assert_close(seen[h], tl_seen[h], atol=1e-6 * scale, rtol=1e-5, msg=h)
            torch.testing.assert_close(out, tl_out, atol=1e-6 * max(1.0, tl_out.abs().max().item()), rtol=1e-5)
            torch.testing.assert_close(k, tl_k, atol=1e-5, rtol=1e-5)  # a non-frozen entry grows
            assert k.shape[1] == (4 if frozen else 9)
            # TransformerLens's own operations: the same bits (grouped-query keys and values come
            # out of one matrix multiply with the queries', whose kernel may round them differently)
            if not fused and model.cfg.n_key_value_heads is None:
                assert torch.equal(out, tl_out)


def test_weight_edits_are_seen():
    """The fused weights are rebuilt after an in-place edit of the model."""
    model = randomized()
    before, *_ = call(model, 0, True, False, True)
    with torch.no_grad():
        model.blocks[0].attn.W_V[1] *= -2
    after, *_ = call(model, 0, True, False, True)
    expected, *_ = call(model, 0, False, False, True)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, expected, atol=1e-6, rtol=1e-5)


def test_falls_back_where_it_must():
    assert not lean_supported(tiny_hooked(positional_embedding_type="alibi"))
    assert not lean_supported(tiny_hooked(positional_embedding_type="rotary", rotary_dim=8, use_qk_norm=True))
    assert not lean_supported(tiny_hooked(act_fn="solu_ln"))
    model = randomized()
    assert lean_supported(model)
    resid = torch.randn(2, 3, 16)
    fired = []
    # a hook point the lean path does not emulate, and a hook a user left on the model
    with torch.no_grad():
        run_block(model, 0, resid, None, [("blocks.0.ln1.hook_scale", lambda a, hook: fired.append("scale"))])
        model.add_hook("blocks.0.hook_attn_out", lambda a, hook: fired.append("user"))
        run_block(model, 0, resid, None)
    model.reset_hooks()
    assert "scale" in fired and fired[-1] == "user"  # (TransformerLens normalises q, k, v inputs apart)
    out = run_block(model, 0, resid.requires_grad_(), None)  # gradients: TransformerLens's block
    assert out.requires_grad


@pytest.mark.parametrize("name", ["ln-gelu", "shortformer", "attn-only", "llama"])
def test_own_keys_and_values_already_cached(name, fused):
    """One query position whose keys and values are the cache's last: the same as computing them,
    with the cache in attention layout (read without a copy) or not."""
    model = randomized(**CONFIGS[name])
    cfg = model.cfg
    g = torch.Generator().manual_seed(3)
    tokens_resid = torch.randn(3, 6, cfg.d_model, generator=g)
    pos_embed = torch.randn(3, 6, cfg.d_model, generator=g) if cfg.positional_embedding_type == "shortformer" else None
    with torch.no_grad():
        entry = KVEntry.init_cache_entry(cfg, "cpu", 3)
        full = run_block(model, 1, tokens_resid, entry, [], pos_embed)  # caches keys/values of all 6 positions
        keys_t = entry.past_keys.permute(0, 2, 3, 1).contiguous()  # [batch, head, d_head, pos]
        values_t = entry.past_values.transpose(1, 2).contiguous()
        last_pe = pos_embed[:, -1:] if pos_embed is not None else None
        for lean in (True, False):
            _tl_block._plain[model] = lean
            cached = KVEntry(keys_t.permute(0, 3, 1, 2), values_t.transpose(1, 2), frozen=True)
            out = run_block(model, 1, tokens_resid[:, -1:], cached, [], last_pe, own_kv_cached=True)
            torch.testing.assert_close(out, full[:, -1:], atol=1e-5, rtol=1e-5)
        _tl_block._plain.pop(model)


@pytest.mark.parametrize(("name", "hook_at"), [
    (name, hook) for name in ("ln-gelu", "rms-relu", "shortformer", "llama")
    for hook in (None, "hook_resid_pre", "attn.hook_z", *(["attn.hook_rot_k"] if name == "llama" else []))
])
def test_query_at_one_position_per_row(name, hook_at, fused):
    """``query_at``: the output at one position per row, with every position's keys and values
    cached and hooks before the queries (or, computed everywhere, after them) seeing every position."""
    model = randomized(**CONFIGS[name])
    cfg = model.cfg
    g = torch.Generator().manual_seed(4)
    resid = torch.randn(3, 5, cfg.d_model, generator=g)
    pos_embed = torch.randn(3, 5, cfg.d_model, generator=g) if cfg.positional_embedding_type == "shortformer" else None
    query_at = torch.tensor([4, 1, 2])
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[2, 0] = 0
    results = []
    for lean in (True, False):
        seen = []
        hooks = [(f"blocks.1.{hook_at}", lambda a, hook: seen.append(a.clone()))] if hook_at else []
        _tl_block._plain[model] = lean
        with torch.no_grad():
            entry = KVEntry(torch.randn(kv_shape(cfg, 3, 2), generator=torch.Generator().manual_seed(5)),
                            entry_values(cfg))
            out = run_block(model, 1, resid, entry, hooks, pos_embed, mask, query_at=query_at)
        _tl_block._plain.pop(model)
        results.append((out, seen, entry.past_keys))
    (out, seen, keys), (tl_out, tl_seen, tl_keys) = results
    assert out.shape == (3, 1, cfg.d_model)
    torch.testing.assert_close(out, tl_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(keys, tl_keys, atol=1e-6, rtol=1e-5)
    assert keys.shape[1] == 7  # every position's keys cached
    assert [s.shape for s in seen] == [s.shape for s in tl_seen]
    with torch.no_grad():  # and the output is the full block's at those positions
        past = KVEntry(keys[:, :2].clone(), entry_values(cfg), frozen=True)
        full = run_block(model, 1, resid, past, [], pos_embed, mask)
    torch.testing.assert_close(out[:, 0], full[torch.arange(3), query_at], atol=1e-5, rtol=1e-5)


def entry_values(cfg):
    return torch.randn(kv_shape(cfg, 3, 2), generator=torch.Generator().manual_seed(6))


def test_weights_of_large_models_are_not_kept(monkeypatch):
    """Above the cache budget the rearranged weights are rebuilt per call (same results)."""
    model = randomized()
    kept, *_ = call(model, 0, True, False, True)
    assert model.blocks[0].attn in _tl_block._weights
    _tl_block._weights.clear()
    monkeypatch.setattr(_tl_block, "CACHE_BYTES", 0)
    rebuilt, *_ = call(model, 0, True, False, True)
    assert model.blocks[0].attn not in _tl_block._weights
    assert torch.equal(kept, rebuilt)


def test_switched_flags_are_read_on_every_call():
    model = randomized()
    assert lean_supported(model)
    model.set_use_attn_result(True)  # TransformerLens's block then fills hook_result: it must run
    assert not lean_supported(model)
    model.set_use_attn_result(False)
    assert lean_supported(model)
