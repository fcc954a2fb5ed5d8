"""Smoke test on the real model: activations at the last token, a fitted probe, the generic
contrast-pair direction (a few prompts; no claim about accuracy)."""

import torch

from mechkit.probes import GENERIC_PAIRS, Labelled, collect, contrast_probe, evaluate_probe, fit_probe


def test_probe_pipeline_runs_on_smollm2(smollm2):
    torch.set_num_threads(1)
    hook = "blocks.15.hook_resid_post"
    texts = ["Human: Is this a test? Assistant: yes", "Human: Is this a test? Assistant: no",
             "The sky is blue.", "Paris is in France.", "Water is dry.", "Fire is cold.", "Snow is white.", "Ice is hot."]
    data = Labelled.from_texts(smollm2, texts, [1, 0, 1, 1, 0, 0, 1, 0])
    assert data.positions.tolist() == [smollm2.to_tokens(t).shape[1] - 1 for t in texts]  # each row's last token
    acts = collect(smollm2, data, [hook], max_memory="256MiB")[hook]
    assert acts.shape == (8, smollm2.cfg.d_model) and torch.isfinite(acts).all()
    probe = fit_probe(acts, data.labels, hook, method="logreg", steps=50)
    assert evaluate_probe(probe, acts, data.labels, n_boot=50).auroc > 0.9  # training fit only
    generic = contrast_probe(smollm2, hook, GENERIC_PAIRS[:2])
    assert generic.method == "contrast" and generic.direction.shape == (smollm2.cfg.d_model,)
    assert torch.isfinite(generic.direction).all() and generic.direction.norm() > 0
