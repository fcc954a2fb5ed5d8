"""components: every listed hook resolves; names parse; bad names say what is valid."""

import pytest
import torch

from mechkit import component, components, input_hooks_enabled
from mechkit.errors import HookNameError
from tests.conftest import tiny_hooked


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"attn_only": True}, {"positional_embedding_type": "rotary", "rotary_dim": 8, "n_key_value_heads": 1,
                                "normalization_type": "RMS"}],
    ids=["gpt2-like", "attn-only", "llama-like-gqa"],
)
def test_every_hook_resolves_and_fires(kwargs):
    model = tiny_hooked(**kwargs)
    comps = components(model)
    cfg = model.cfg
    assert sum(c.kind == "head" for c in comps) == cfg.n_layers * cfg.n_heads
    assert sum(c.kind == "mlp" for c in comps) == (0 if cfg.attn_only else cfg.n_layers)
    assert comps[0].name == "embed" and comps[-1].name == "logits"
    hooks = {h for c in comps for h in c.hooks}
    seen = set()
    with input_hooks_enabled(model):
        for h in hooks:
            assert h in model.hook_dict, h
        _, cache = model.run_with_cache(torch.randint(0, cfg.d_vocab, (1, 5)), names_filter=lambda n: n in hooks)
        seen = set(cache.keys())
    assert seen == hooks
    # input hooks are temporary: flags restored
    assert not model.cfg.use_split_qkv_input and not model.cfg.use_hook_mlp_in


def test_gqa_kv_head_index():
    model = tiny_hooked(n_heads=4, d_head=4, n_key_value_heads=2, positional_embedding_type="rotary",
                        rotary_dim=4, normalization_type="RMS")
    assert [component(model, f"L0H{h}").kv_head for h in range(4)] == [0, 0, 1, 1]


def test_lookup_and_errors():
    model = tiny_hooked()
    c = component(model, "L1H0")
    assert (c.layer, c.head, c.output_hook) == (1, 0, "blocks.1.attn.hook_z")
    assert c.input_hooks["k"] == "blocks.1.hook_k_input"
    assert component(model, "M1").input_hooks == {"in": "blocks.1.hook_mlp_in"}
    with pytest.raises(HookNameError, match=r"L0H0\.\.L1H1.*did you mean"):
        component(model, "L1H7")
    with pytest.raises(HookNameError, match="M0..M1"):
        component(model, "M5")
    with pytest.raises(HookNameError, match="attention-only"):
        component(tiny_hooked(attn_only=True), "M0")
    with pytest.raises(HookNameError, match="did you mean 'logits'"):
        component(model, "logit")
