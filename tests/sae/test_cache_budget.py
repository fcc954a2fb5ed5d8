"""Activation caching within a memory budget: fewer sequences per forward, the same stored values."""

import pytest
import torch

from mechkit.memory import MemoryBudgetError
from mechkit.sae import ActivationCache, write_cache
from mechkit.sae.cache import sequence_bytes
from tests.conftest import tiny_hooked
from tests.console import mechkit

HOOKS = ["blocks.0.hook_resid_post", "blocks.1.hook_mlp_out"]


def test_small_budget_runs_fewer_sequences_and_stores_the_same(tmp_path):
    model = tiny_hooked()
    tokens = torch.randint(4, 64, (11, 12), generator=torch.Generator().manual_seed(0))
    rows: list[int] = []
    handle = model.embed.register_forward_hook(lambda module, args, out: rows.append(out.shape[0]))
    try:
        write_cache(model, tokens, tmp_path / "whole", HOOKS, batch_size=5, progress=False, max_memory="64GB")
        assert rows == [5, 5, 1]
        rows.clear()
        two = 2 * sequence_bytes(model, HOOKS, 12, logits=True) + 1  # room for two sequences per forward
        write_cache(model, tokens, tmp_path / "small", HOOKS, batch_size=5, progress=False, max_memory=two)
        assert rows == [2, 2, 1, 2, 2, 1, 1]
    finally:
        handle.remove()
    whole, small = ActivationCache(tmp_path / "whole"), ActivationCache(tmp_path / "small")
    for hook in HOOKS:
        assert [s.n_tokens for s in small.shards(hook)] == [s.n_tokens for s in whole.shards(hook)]
        torch.testing.assert_close(small.load(hook), whole.load(hook), rtol=1e-6, atol=1e-6)


def test_budget_too_small_for_one_sequence_says_what_it_needs(tmp_path):
    model = tiny_hooked()
    tokens = torch.randint(4, 64, (3, 12))
    with pytest.raises(MemoryBudgetError, match=r"^caching activations needs about .* for one sequence of 12 tokens "
                                                r"but the memory budget is .*raise max_memory \(--max-memory\)"):
        write_cache(model, tokens, tmp_path / "c", HOOKS, progress=False, max_memory=1000)
    assert not (tmp_path / "c").exists()  # refused before anything was written


def test_cli_max_memory_reaches_write_cache(tmp_path):
    run = mechkit("sae", "cache", "organism:chekhov", tmp_path / "c", "--hook", "blocks.0.hook_resid_post",
                  "--n", "4", "--device", "cpu", "--max-memory", "10KB")
    assert "caching activations needs about" in run.assert_one_line_error(2)
