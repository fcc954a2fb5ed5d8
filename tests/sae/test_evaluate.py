"""evaluate_sae: exact values for an identity and a zero SAE; EV/L0 match a direct computation."""

import torch
from sae_lens.saes import StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig

from mechkit.sae import eval_table, evaluate_sae
from tests.conftest import tiny_hooked

HOOK = "blocks.0.hook_resid_post"


def _identity_sae():
    """relu(x) - relu(-x) = x: a lossless SAE with 2 * d_in features."""
    sae = StandardSAE(StandardSAEConfig(d_in=16, d_sae=32))
    eye = torch.eye(16)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    sae.cfg.metadata.hook_name = HOOK
    return sae


def _tokens():
    return torch.randint(4, 64, (10, 12), generator=torch.Generator().manual_seed(0))


def test_identity_sae_is_lossless():
    model = tiny_hooked()
    r = evaluate_sae(model, _identity_sae(), _tokens(), batch_size=4)
    assert abs(r.explained_variance - 1) < 1e-5 and abs(r.ce_recovered - 1) < 1e-4 and r.kl_spliced < 1e-6
    assert r.l0 == 16.0 and r.n_tokens == 120
    assert abs(r.ce_clean - r.ce_spliced) < 1e-5 and r.ce_zero != r.ce_clean


def test_zero_sae_recovers_nothing_and_matches_direct_computation():
    model, tokens = tiny_hooked(), _tokens()
    sae = _identity_sae()
    with torch.no_grad():
        sae.W_dec.zero_()
    r = evaluate_sae(model, sae, tokens, hook=HOOK)
    assert abs(r.ce_recovered) < 1e-5 and r.explained_variance < 0
    # a random TopK SAE: EV, L0 and dead features from the cached activations by hand
    torch.manual_seed(1)
    topk = TopKSAE(TopKSAEConfig(d_in=16, d_sae=64, k=3))
    r = evaluate_sae(model, topk, tokens, hook=HOOK)
    _, cache = model.run_with_cache(tokens, names_filter=[HOOK])
    x = cache[HOOK].reshape(-1, 16)
    with torch.no_grad():
        feats = topk.encode(x)
        recon = topk.decode(feats)
    ev = 1 - (x - recon).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert abs(r.explained_variance - ev.item()) < 1e-4
    assert r.l0 == 3.0
    assert r.dead_features == int(((feats > 0).sum(0) == 0).sum())
    logits = model(tokens)
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
    assert abs(r.ce_clean - ce.item()) < 1e-5
    assert "CE loss recovered" in str([c._cells for c in eval_table(r).columns])


def test_prompt_pairs_score_the_answer_position():
    from mechkit._types import PromptPairs

    model, tokens = tiny_hooked(), _tokens()
    pos = torch.tensor([11, 5, 8, 11, 3, 7, 9, 11, 6, 10])
    pairs = PromptPairs(tokens[:5], tokens[5:], tokens[:5, 0], tokens[5:, 0], pos[:5])
    r = evaluate_sae(model, _identity_sae(), pairs, batch_size=3)
    assert abs(r.ce_recovered - 1) < 1e-4 and r.n_tokens == 2 * int((pos[:5] + 1).sum())
    logits = model(torch.cat([pairs.clean, pairs.corrupted]))
    at = logits[torch.arange(10), torch.cat([pairs.answer_pos, pairs.answer_pos])]
    want = torch.nn.functional.cross_entropy(at, torch.cat([pairs.answer, pairs.wrong]))
    assert abs(r.ce_clean - want.item()) < 1e-5
