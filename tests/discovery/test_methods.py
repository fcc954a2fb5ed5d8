"""Scoring methods against independent computations of their formulas."""

import pytest
import torch

from mechkit.discovery import attribute
from mechkit.discovery.forward import ablated_outputs, run_masked
from mechkit.discovery.graph import Graph
from mechkit.discovery.methods import MethodError, register
from mechkit.metrics import logit_diff
from tests.conftest import tiny_hooked
from tests.discovery.conftest import random_pairs


def mask_gradient_eap(model, pairs, ablation="resample"):
    """auto-circuit's route: EAP = -d metric / d edge-mask at mask = 1 (mean over prompts)."""
    graph = Graph.from_model(model)
    ablated = ablated_outputs(model, graph, pairs, ablation)
    keep = graph.real.float()[None].clone().requires_grad_(True)
    value = run_masked(model, graph, pairs, ablated, keep, logit_diff).sum()
    (grad,) = torch.autograd.grad(value, keep)
    return -graph.from_matrix(grad[0]) / len(pairs)


def sender_values(cache, n_layers, n_heads):
    """Each sender node's output, by node name, from a cache run with attention results on."""
    out = {"embed": cache["blocks.0.hook_resid_pre"]}
    for layer in range(n_layers):
        for h in range(n_heads):
            out[f"L{layer}H{h}"] = cache[f"blocks.{layer}.attn.hook_result"][:, :, h]
        out[f"M{layer}"] = cache[f"blocks.{layer}.hook_mlp_out"]
    return out


def receiver_inputs(n_layers, n_heads):
    """Receiver node name -> (the hook holding its input, its head or None)."""
    receivers = {}
    for layer in range(n_layers):
        for x in "qkv":
            for h in range(n_heads):
                receivers[f"L{layer}H{h}<{x}>"] = (f"blocks.{layer}.hook_{x}_input", h)
        receivers[f"M{layer}"] = (f"blocks.{layer}.hook_mlp_in", None)
    receivers["logits"] = (f"blocks.{n_layers - 1}.hook_resid_post", None)
    return receivers


def hand_eap_ig(model, pairs, steps):
    """EAP-IG-inputs written out with plain TransformerLens hooks, one receiver hook per name."""
    graph = Graph.from_model(model)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    model.set_use_attn_result(True)
    model.set_use_split_qkv_input(True)
    model.set_use_hook_mlp_in(True)
    try:
        def outputs(tokens):
            return sender_values(model.run_with_cache(tokens)[1], n_layers, n_heads)

        clean, corrupted = outputs(pairs.clean), outputs(pairs.corrupted)
        receivers = receiver_inputs(n_layers, n_heads)
        grads = {name: 0.0 for name in receivers}
        for k in range(steps):
            alpha = k / steps
            start = (corrupted["embed"] + alpha * (clean["embed"] - corrupted["embed"])).detach().requires_grad_(True)
            acts = {}

            def save(act, hook):
                acts[hook.name] = act
                return act

            hooks = [("blocks.0.hook_resid_pre", lambda act, hook: start)]
            hooks += [(hook_name, save) for hook_name in {h for h, _ in receivers.values()}]
            logits = model.run_with_hooks(pairs.clean, fwd_hooks=hooks)
            names = sorted(acts)
            g = dict(zip(names, torch.autograd.grad(logit_diff(logits, pairs).sum(), [acts[n] for n in names])))
            for name, (hook_name, h) in receivers.items():
                grads[name] = grads[name] + (g[hook_name][:, :, h] if h is not None else g[hook_name])
        scores = []
        for name in graph.edge_names:
            src, dst = name.split("->")
            diff = corrupted[src] - clean[src]
            scores.append((diff * grads[dst] / steps).sum() / len(pairs))
        return torch.stack(scores).detach()
    finally:
        model.set_use_attn_result(False)
        model.set_use_split_qkv_input(False)
        model.set_use_hook_mlp_in(False)


def test_eap_equals_mask_gradient(model, pairs):
    scores = attribute(model, pairs, "eap")
    torch.testing.assert_close(scores.scores, mask_gradient_eap(model, pairs), atol=1e-5, rtol=1e-4)
    assert scores.scores.abs().max() > 1e-3  # not trivially zero


@pytest.mark.parametrize("ablation", ["mean", "zero"])
def test_eap_equals_mask_gradient_under_other_ablations(model, pairs, ablation):
    scores = attribute(model, pairs, "eap", ablation=ablation)
    torch.testing.assert_close(scores.scores, mask_gradient_eap(model, pairs, ablation), atol=1e-5, rtol=1e-4)


def test_eap_on_grouped_query_attention():
    model = tiny_hooked(n_heads=4, d_head=4, n_key_value_heads=2, normalization_type="RMS", positional_embedding_type="rotary")
    pairs = random_pairs()
    scores = attribute(model, pairs, "eap")
    assert "L0H3->L1H0<k>" in scores.edge_names
    torch.testing.assert_close(scores.scores, mask_gradient_eap(model, pairs), atol=1e-5, rtol=1e-4)
    assert not model.cfg.ungroup_grouped_query_attention


@pytest.mark.parametrize("steps", [1, 3])
def test_eap_ig_equals_hand_written_formula(model, pairs, steps):
    scores = attribute(model, pairs, "eap-ig", ig_steps=steps, max_batch=6)  # one step per forward
    torch.testing.assert_close(scores.scores, hand_eap_ig(model, pairs, steps), atol=1e-5, rtol=1e-4)


def test_eap_ig_batches_steps_without_changing_scores(model, pairs):
    one = attribute(model, pairs, "eap-ig", ig_steps=4, max_batch=6).scores
    many = attribute(model, pairs, "eap-ig", ig_steps=4, max_batch=24).scores
    torch.testing.assert_close(one, many, atol=1e-5, rtol=1e-4)


def test_gradient_node_scores_are_node_output_attribution(model, pairs):
    """(corrupted - clean) output of L0H1 . d metric / d its output, by autograd on hook_result."""
    scores = attribute(model, pairs, "eap")
    model.set_use_attn_result(True)
    try:
        _, corr = model.run_with_cache(pairs.corrupted, names_filter="blocks.0.attn.hook_result")
        saved = {}

        def keep(act, hook):
            saved["out"] = act
            return act

        logits = model.run_with_hooks(pairs.clean, fwd_hooks=[("blocks.0.attn.hook_result", keep)])
        (grad,) = torch.autograd.grad(logit_diff(logits, pairs).sum(), saved["out"])
        expected = ((corr["blocks.0.attn.hook_result"] - saved["out"]) * grad)[:, :, 1].sum() / len(pairs)
    finally:
        model.set_use_attn_result(False)
    assert scores.node_dict()["L0H1"] == pytest.approx(float(expected.detach()), abs=1e-5)


def hand_patch(model, pairs, edge):
    """Metric change when one edge carries its corrupted value, with hand-written hooks."""
    model.set_use_attn_result(True)
    model.set_use_split_qkv_input(True)
    model.set_use_hook_mlp_in(True)
    try:
        _, corr = model.run_with_cache(pairs.corrupted)
        _, clean = model.run_with_cache(pairs.clean)
        src, dst = edge
        if src.startswith("L"):
            layer, head = int(src[1]), int(src[3])
            diff = corr[f"blocks.{layer}.attn.hook_result"][:, :, head] - clean[f"blocks.{layer}.attn.hook_result"][:, :, head]
        elif src.startswith("M"):
            diff = corr[f"blocks.{src[1]}.hook_mlp_out"] - clean[f"blocks.{src[1]}.hook_mlp_out"]
        else:
            diff = corr["blocks.0.hook_resid_pre"] - clean["blocks.0.hook_resid_pre"]
        hook_name, head = dst

        def patch(act, hook):
            act = act.clone()
            if head is None:
                act += diff
            else:
                act[:, :, head] += diff
            return act

        with torch.no_grad():
            patched = logit_diff(model.run_with_hooks(pairs.clean, fwd_hooks=[(hook_name, patch)]), pairs).mean()
            base = logit_diff(model(pairs.clean), pairs).mean()
        return float(patched - base)
    finally:
        model.set_use_attn_result(False)
        model.set_use_split_qkv_input(False)
        model.set_use_hook_mlp_in(False)


@pytest.mark.parametrize(
    "name, src, dst",
    [
        ("L0H1->L1H0<k>", "L0H1", ("blocks.1.hook_k_input", 0)),
        ("M0->logits", "M0", ("blocks.1.hook_resid_post", None)),
        ("embed->M1", "embed", ("blocks.1.hook_mlp_in", None)),
        ("L0H0->L1H1<q>", "L0H0", ("blocks.1.hook_q_input", 1)),
    ],
)
def test_exact_patching_matches_hand_written_hooks(model, pairs, name, src, dst):
    scores = attribute(model, pairs, "exact", max_batch=30)  # several edges per forward
    got = float(scores.scores[scores.graph.edge_position(name)])
    assert got == pytest.approx(hand_patch(model, pairs, (src, dst)), abs=1e-5)


def test_exact_node_score_patches_the_node_output(model, pairs):
    scores = attribute(model, pairs, "exact")
    _, corr = model.run_with_cache(pairs.corrupted, names_filter="blocks.1.hook_mlp_out")
    with torch.no_grad():
        patched = model.run_with_hooks(
            pairs.clean, fwd_hooks=[("blocks.1.hook_mlp_out", lambda a, hook: corr["blocks.1.hook_mlp_out"])]
        )
        expected = logit_diff(patched, pairs).mean() - logit_diff(model(pairs.clean), pairs).mean()
    assert scores.node_dict()["M1"] == pytest.approx(float(expected), abs=1e-5)


def test_dead_head_scores_exactly_zero():
    model = tiny_hooked(seed=1)
    with torch.no_grad():
        model.blocks[0].attn.W_O[1] = 0.0
        model.blocks[0].attn.b_O.zero_()
    pairs = random_pairs(seed=1)
    for method in ("eap", "eap-ig", "eap-ig-activations", "exact"):
        scores = attribute(model, pairs, method)
        dead = [i for i, n in enumerate(scores.edge_names) if n.startswith("L0H1->")]
        assert scores.scores[dead].abs().max() < 1e-6, method
        assert scores.scores.abs().max() > 1e-3, method


def test_attribute_records_provenance(model, pairs):
    scores = attribute(model, pairs, "eap-ig", ig_steps=2, model_spec="tiny")
    assert scores.hyperparameters["ig_steps"] == 2 and scores.hyperparameters["ablation"] == "resample"
    assert scores.model_fingerprint.startswith("sha256:") and scores.task["name"] == "random"
    assert scores.scores.shape == (scores.graph.n_edges,)
    assert scores.node_scores.shape == (len(scores.graph.node_names),)


def test_unknown_method_and_hyperparameter_raise(model, pairs):
    with pytest.raises(MethodError, match="did you mean 'eap-ig'"):
        attribute(model, pairs, "eap_ig")
    with pytest.raises(MethodError, match="ig_steps"):
        attribute(model, pairs, "eap", ig_steps=3)
    with pytest.raises(MethodError, match="already registered"):
        register("eap")(lambda *a, **k: None)


def test_user_metric_is_used(model, pairs):
    def answer_logit(logits, p):
        return logits[torch.arange(len(p)), p.answer_pos, p.answer]

    a = attribute(model, pairs, "eap", metric=answer_logit)
    b = attribute(model, pairs, "eap")
    assert a.hyperparameters["metric"] == "answer_logit"
    assert not torch.allclose(a.scores, b.scores)


def hand_eap_ig_activations(model, pairs, steps):
    """EAP-IG-activations with plain TransformerLens hooks: for each layer node (embedding, a
    layer's attention output, an MLP) and k = 1..steps, replace that output by k/steps clean +
    (1 - k/steps) corrupted; average receiver-input gradients over all runs."""
    graph = Graph.from_model(model)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    model.set_use_attn_result(True)
    model.set_use_split_qkv_input(True)
    model.set_use_hook_mlp_in(True)
    try:
        _, clean_cache = model.run_with_cache(pairs.clean)
        _, corr_cache = model.run_with_cache(pairs.corrupted)

        clean, corrupted = sender_values(clean_cache, n_layers, n_heads), sender_values(corr_cache, n_layers, n_heads)
        layer_nodes = ["blocks.0.hook_resid_pre"]
        for layer in range(n_layers):
            layer_nodes += [f"blocks.{layer}.hook_attn_out", f"blocks.{layer}.hook_mlp_out"]
        receivers = receiver_inputs(n_layers, n_heads)
        grads = {name: 0.0 for name in receivers}
        runs = 0
        for node in layer_nodes:
            for k in range(1, steps + 1):
                alpha = k / steps
                mixed = (alpha * clean_cache[node] + (1 - alpha) * corr_cache[node]).detach()
                acts = {}

                def save(act, hook):
                    acts[hook.name] = act
                    return act

                def interpolate(act, hook, mixed=mixed):
                    return mixed.clone().requires_grad_(True)

                hooks = [(node, interpolate)]
                if node != "blocks.0.hook_resid_pre":  # keep every receiver input on the autograd graph
                    hooks.insert(0, ("blocks.0.hook_resid_pre", lambda act, hook: act.detach().requires_grad_(True)))
                hooks += [(hook_name, save) for hook_name in {h for h, _ in receivers.values()}]
                logits = model.run_with_hooks(pairs.clean, fwd_hooks=hooks)
                names = sorted(acts)
                g = torch.autograd.grad(logit_diff(logits, pairs).sum(), [acts[n] for n in names], allow_unused=True)
                g = dict(zip(names, g))
                for name, (hook_name, h) in receivers.items():
                    if g[hook_name] is not None:
                        grads[name] = grads[name] + (g[hook_name][:, :, h] if h is not None else g[hook_name])
                runs += 1
        scores = []
        for name in graph.edge_names:
            src, dst = name.split("->")
            scores.append(((corrupted[src] - clean[src]) * grads[dst] / runs).sum() / len(pairs))
        return torch.stack(scores).detach()
    finally:
        model.set_use_attn_result(False)
        model.set_use_split_qkv_input(False)
        model.set_use_hook_mlp_in(False)


@pytest.mark.parametrize("steps", [1, 3])
def test_eap_ig_activations_equals_hand_written_formula(model, pairs, steps):
    scores = attribute(model, pairs, "eap-ig-activations", ig_steps=steps, max_batch=12)  # two runs per forward
    expected = hand_eap_ig_activations(model, pairs, steps)
    torch.testing.assert_close(scores.scores, expected, atol=1e-5, rtol=1e-4)
    assert expected.abs().max() > 1e-3
    # a different method: at one step it is EAP-at-clean, not EAP-IG-inputs
    assert not torch.allclose(scores.scores, attribute(model, pairs, "eap-ig", ig_steps=steps).scores, atol=1e-4)


@pytest.mark.parametrize("ablation", ["mean", "zero"])
def test_eap_ig_activations_at_full_steps_under_other_ablations(model, pairs, ablation):
    """With one step every run is the clean run with one group's output cut from the autograd
    graph; the gradient at the logits receiver does not depend on that, so edges into the logits
    score as in EAP (and the mean/zero ablated values enter the same way)."""
    act = attribute(model, pairs, "eap-ig-activations", ig_steps=1, ablation=ablation)
    eap = attribute(model, pairs, "eap", ablation=ablation)
    to_logits = [i for i, n in enumerate(act.edge_names) if n.endswith("->logits")]
    torch.testing.assert_close(act.scores[to_logits], eap.scores[to_logits], atol=1e-5, rtol=1e-4)
