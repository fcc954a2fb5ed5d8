"""Head-role evidence (mechkit.discovery.roles) against hand computations on a tiny model, and on
SmolLM2, whose IOI heads attend where the IOI paper says such heads attend."""

import torch

from mechkit.discovery.roles import attention_between, ov_copy_scores, repeated_token_scores
from tests.conftest import tiny_hooked


def _pattern(model, tokens, layer):
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    return cache[f"blocks.{layer}.attn.hook_pattern"]  # [batch, head, q, k]


def test_attention_between_picks_each_prompts_own_positions():
    model = tiny_hooked(seed=1)
    tokens = torch.randint(4, 60, (3, 7), generator=torch.Generator().manual_seed(0))
    dest, src = torch.tensor([6, 3, 5]), torch.tensor([2, 3, 0])
    got = attention_between(model, tokens, dest, src)
    pattern = _pattern(model, tokens, 1)
    want = torch.stack([pattern[b, :, dest[b], src[b]] for b in range(3)]).mean(0)
    assert got.shape == (2, 2) and torch.allclose(got[1], want)
    # the last position's attention over every position sums to one
    seen = sum(attention_between(model, tokens, torch.full((3,), 6), torch.full((3,), s)) for s in range(7))
    assert torch.allclose(seen, torch.ones(2, 2), atol=1e-5)


def test_repeated_token_scores_match_the_pattern():
    model = tiny_hooked(seed=2, n_ctx=32)
    scores = repeated_token_scores(model, seq_len=8, n=4, seed=0, low=4)
    first = torch.randint(4, model.cfg.d_vocab, (4, 8), generator=torch.Generator().manual_seed(0))
    pattern = _pattern(model, torch.cat([first, first], 1), 0)
    induction = torch.stack([pattern[:, :, i, i - 7] for i in range(9, 16)], -1).mean((0, -1))
    duplicate = torch.stack([pattern[:, :, i, i - 8] for i in range(8, 16)], -1).mean((0, -1))
    previous = torch.stack([pattern[:, :, i, i - 1] for i in range(1, 16)], -1).mean((0, -1))
    for got, want in ((scores.induction, induction), (scores.duplicate, duplicate), (scores.previous, previous)):
        assert torch.allclose(got[0], want, atol=1e-6)


def test_ov_copy_scores_count_the_token_in_the_heads_top_k():
    model = tiny_hooked(seed=3)
    tokens = torch.randint(4, 60, (5, 6), generator=torch.Generator().manual_seed(1))
    positions = torch.tensor([0, 2, 5, 1, 3])
    assert torch.equal(ov_copy_scores(model, tokens, positions, k=model.cfg.d_vocab), torch.ones(2, 2))
    got = ov_copy_scores(model, tokens, positions, k=3, negative=True)
    _, cache = model.run_with_cache(tokens)
    resid = cache["blocks.0.hook_resid_post"][torch.arange(5), positions]
    block = model.blocks[1]
    out = -(block.ln1(resid[:, None])[:, 0] @ block.attn.W_V[1] @ block.attn.W_O[1])
    top = model.unembed(model.ln_final(out[:, None]))[:, 0].topk(3, -1).indices
    want = (top == tokens[torch.arange(5), positions][:, None]).any(-1).float().mean()
    assert got[1, 1] == want


def test_ioi_name_positions():
    from mechkit._types import PromptPairs
    from mechkit.tasks.ioi import name_positions

    clean = torch.tensor([[9, 5, 3, 7, 3, 8, 0], [9, 3, 5, 3, 8, 1, 0]])  # 5 = IO, 3 = S; row 2 padded
    pairs = PromptPairs(clean, clean, torch.tensor([5, 5]), torch.tensor([3, 3]), torch.tensor([5, 4]))
    pos = name_positions(pairs)
    assert pos["IO"].tolist() == [1, 2] and pos["S1"].tolist() == [2, 1]
    assert pos["S2"].tolist() == [4, 3] and pos["END"].tolist() == [5, 4]


def test_smollm2_has_heads_that_attend_as_ioi_heads_do(smollm2):
    from mechkit.tasks import task
    from mechkit.tasks.ioi import name_positions

    pairs = task("ioi").generate(8, seed=0, split="test", model=smollm2)
    pos = name_positions(pairs)
    to_io = attention_between(smollm2, pairs.clean, pos["END"], pos["IO"])
    to_s = attention_between(smollm2, pairs.clean, pos["END"], pos["S2"])
    assert (to_io - to_s).max() > 0.5  # a name mover: END reads IO, not S
    rep = repeated_token_scores(smollm2, seq_len=16, n=4)
    assert rep.induction.max() > 0.5 and rep.previous.max() > 0.5
