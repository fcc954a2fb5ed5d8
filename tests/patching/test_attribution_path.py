"""Attribution patching against finite differences; path patching against hand-written hooks."""

import itertools

import pytest
import torch

from mechkit import metrics as M
from mechkit.patching import PathError, attribution_patch, path_patch, path_patch_heads
from mechkit.patching._sweeps import SWEEPS
from tests.conftest import tiny_hooked
from tests.patching.helpers import make_pairs


@pytest.mark.parametrize("sweep", ["resid-pre", "head-out-by-pos", "head-pattern-by-pos", "head-v-all-pos", "mlp-out"])
@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_attribution_is_the_directional_derivative(sweep, direction):
    model = tiny_hooked(seed=4, dtype=torch.float64)
    pairs = make_pairs(batch=2, n_pos=4)
    spec = SWEEPS[sweep]
    result = attribution_patch(model, pairs, sweep, direction=direction)
    base, source = (pairs.corrupted, pairs.clean) if direction == "denoising" else (pairs.clean, pairs.corrupted)
    _, cache = model.run_with_cache(source)
    h = 1e-4
    for layer in range(model.cfg.n_layers):
        name = spec.hook_name(layer)
        sizes = dict(zip(spec.mask_axes, cache[name].shape[1:]))
        for idx in itertools.product(*(range(sizes[a]) for a in spec.index)):
            where = [slice(None)] * (1 + len(spec.act_axes))
            for a, i in zip(spec.index, idx):
                where[1 + spec.act_axes.index(a)] = i

            def f(eps):
                def hook(act, hook):
                    out = act.clone()
                    out[tuple(where)] += eps * (cache[name][tuple(where)] - act[tuple(where)])
                    return out

                logits = model.run_with_hooks(base, fwd_hooks=[(name, hook)])
                return M.logit_diff(logits, pairs).mean().item()

            numeric = (f(h) - f(-h)) / (2 * h)
            got = result.values[(layer, *idx)].item()
            assert abs(got - numeric) <= 1e-6 + 1e-5 * abs(numeric), (layer, idx)


def _reference_path(model, pairs, sender, receiver, qkv, freeze_mlps):
    """Wang et al.'s three runs, one hook at a time (noising)."""
    _, clean = model.run_with_cache(pairs.clean)
    _, corrupt = model.run_with_cache(pairs.corrupted)
    (sl, sh), (rl, rh) = sender, receiver
    hooks = []
    for layer in range(model.cfg.n_layers):
        def z_hook(act, hook, layer=layer):
            out = clean[hook.name].clone()
            if layer == sl:
                out[:, :, sh] = corrupt[hook.name][:, :, sh]
            return out
        hooks.append((f"blocks.{layer}.attn.hook_z", z_hook))
        if freeze_mlps:
            hooks.append((f"blocks.{layer}.hook_mlp_out", lambda act, hook: clean[hook.name]))
    recv_name = f"blocks.{rl}.hook_{qkv}_input"
    saved = {}

    def save(act, hook):
        saved["x"] = act.clone()

    model.set_use_split_qkv_input(True)
    try:
        model.run_with_hooks(pairs.clean, fwd_hooks=hooks + [(recv_name, save)])

        def patch(act, hook):
            out = act.clone()
            out[:, :, rh] = saved["x"][:, :, rh]
            return out

        logits = model.run_with_hooks(pairs.clean, fwd_hooks=[(recv_name, patch)])
    finally:
        model.set_use_split_qkv_input(False)
    return M.logit_diff(logits, pairs).mean().item()


@pytest.mark.parametrize("freeze_mlps", [False, True])
@pytest.mark.parametrize("qkv", ["q", "k", "v"])
def test_path_patching_matches_hand_written_hooks(qkv, freeze_mlps):
    model = tiny_hooked(seed=5, n_layers=3)
    pairs = make_pairs(batch=3, n_pos=5)
    for sender, receiver in [((0, 1), (2, 0)), ((1, 0), (2, 1))]:
        ours = path_patch(model, pairs, f"L{sender[0]}H{sender[1]}", f"L{receiver[0]}H{receiver[1]}",
                          receiver_input=qkv, freeze_mlps=freeze_mlps)
        ref = _reference_path(model, pairs, sender, receiver, qkv, freeze_mlps)
        assert abs(ours - ref) <= 1e-5


def test_path_patching_sweep_to_logits_and_to_a_head():
    model = tiny_hooked(seed=5, n_layers=3)
    pairs = make_pairs(batch=3, n_pos=5)
    to_head = path_patch_heads(model, pairs, ["L2H0"], receiver_input="v", progress=False)
    assert to_head.dims == ("layer", "head") and to_head.values.shape == (3, 2)
    assert abs(to_head.values[0, 1].item() - _reference_path(model, pairs, (0, 1), (2, 0), "v", False)) <= 1e-5
    assert torch.all(to_head.values[2] == to_head.clean_value)  # same layer as the receiver: not upstream
    to_logits = path_patch_heads(model, pairs, "logits", progress=False)
    single = path_patch(model, pairs, "L2H1", "logits")
    assert abs(to_logits.values[2, 1].item() - single) <= 1e-5
    # with every head frozen but the sender, logits see the sender's direct effect only
    assert not torch.allclose(to_logits.values, torch.full_like(to_logits.values, to_logits.clean_value))


def test_path_patching_rejects_bad_paths():
    model = tiny_hooked(seed=5, n_layers=3)
    pairs = make_pairs()
    with pytest.raises(PathError, match="not upstream"):
        path_patch(model, pairs, "L2H0", "L1H0")
    with pytest.raises(PathError, match="receiver_input"):
        path_patch(model, pairs, "L0H0", "L1H0", receiver_input="x")
    from mechkit.errors import HookNameError

    with pytest.raises(HookNameError, match="L9H0"):
        path_patch(model, pairs, "L9H0", "logits")
