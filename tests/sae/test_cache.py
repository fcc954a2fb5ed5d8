"""Activation cache: stored activations equal a direct forward pass; resume; ranks; batch stream."""

import json
from collections import Counter

import pytest
import torch

from mechkit._types import PromptPairs
from mechkit.errors import ArtifactError, HookNameError
from mechkit.sae import ActivationCache, write_cache
from tests.conftest import tiny_hooked

HOOKS = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]


def _tokens(n=24, pos=12, seed=0):
    return torch.randint(4, 64, (n, pos), generator=torch.Generator().manual_seed(seed))


def test_round_trip_equals_forward_pass(tmp_path):
    model, tokens = tiny_hooked(), _tokens()
    write_cache(model, tokens, tmp_path, HOOKS, batch_size=5, shard_tokens=40, progress=False)
    cache = ActivationCache(tmp_path)
    _, direct = model.run_with_cache(tokens, names_filter=HOOKS)
    for hook in HOOKS:
        assert len(cache.shards(hook)) > 2  # flushes bounded the buffer
        assert cache.n_tokens(hook) == tokens.numel()
        torch.testing.assert_close(cache.load(hook), direct[hook].reshape(-1, 16), rtol=1e-5, atol=1e-5)


def test_prompt_pairs_drop_padding(tmp_path):
    model = tiny_hooked()
    clean, corrupted = _tokens(6, 8, 1), _tokens(6, 8, 2)
    answer_pos = torch.tensor([7, 3, 5, 7, 2, 6])
    pairs = PromptPairs(clean, corrupted, torch.zeros(6, dtype=torch.long), torch.ones(6, dtype=torch.long), answer_pos)
    write_cache(model, pairs, tmp_path, HOOKS[:1], batch_size=4, progress=False)
    stored = ActivationCache(tmp_path).load(HOOKS[0])
    assert stored.shape == (2 * int((answer_pos + 1).sum()), 16)
    _, direct = model.run_with_cache(torch.cat([clean, corrupted]), names_filter=HOOKS[:1])
    keep = torch.arange(8)[None] <= torch.cat([answer_pos, answer_pos])[:, None]
    torch.testing.assert_close(stored, direct[HOOKS[0]][keep], rtol=1e-5, atol=1e-5)


def test_resume_skips_complete_shards_and_rewrites_partial(tmp_path):
    model, tokens = tiny_hooked(), _tokens()
    write_cache(model, tokens, tmp_path / "full", HOOKS, batch_size=4, shard_tokens=48, progress=False)
    write_cache(model, tokens, tmp_path / "cut", HOOKS, batch_size=4, shard_tokens=48, progress=False)
    # simulate a kill after shard 1 completed and during shard 2: manifest shows 2 shards, files are garbage
    manifest_path = tmp_path / "cut" / "manifest-rank000.json"
    manifest = json.loads(manifest_path.read_text())
    kept = manifest["shards"][:2]
    n_kept_batches = sum(s["n_tokens"] for s in kept) // (4 * 12)
    manifest.update(shards=kept, next_batch=n_kept_batches, complete=False)
    manifest_path.write_text(json.dumps(manifest))
    (tmp_path / "cut" / HOOKS[0] / "rank000-shard00002.safetensors").write_bytes(b"partial")
    first = (tmp_path / "cut" / HOOKS[0] / "rank000-shard00000.safetensors").stat().st_mtime_ns
    write_cache(model, tokens, tmp_path / "cut", HOOKS, batch_size=4, shard_tokens=48, progress=False)
    assert (tmp_path / "cut" / HOOKS[0] / "rank000-shard00000.safetensors").stat().st_mtime_ns == first
    full, cut = ActivationCache(tmp_path / "full"), ActivationCache(tmp_path / "cut")
    for hook in HOOKS:
        assert torch.equal(full.load(hook), cut.load(hook))


def test_ranks_write_disjoint_shards(tmp_path, monkeypatch):
    model, tokens = tiny_hooked(), _tokens()
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        write_cache(model, tokens, tmp_path, HOOKS[:1], batch_size=4, progress=False)
    cache = ActivationCache(tmp_path)
    files = sorted(p.name for p in (tmp_path / HOOKS[0]).iterdir())
    assert files == ["rank000-shard00000.safetensors", "rank001-shard00000.safetensors"]
    assert cache.n_tokens(HOOKS[0]) == tokens.numel()
    _, direct = model.run_with_cache(tokens, names_filter=HOOKS[:1])
    want = direct[HOOKS[0]].reshape(-1, 16)
    got = cache.load(HOOKS[0])
    assert torch.allclose(got.sum(0), want.sum(0), atol=1e-4)


def test_changed_settings_refuse_to_resume(tmp_path):
    model, tokens = tiny_hooked(), _tokens()
    write_cache(model, tokens, tmp_path, HOOKS[:1], progress=False)
    with pytest.raises(ArtifactError, match="different data_hash"):
        write_cache(model, _tokens(seed=5), tmp_path, HOOKS[:1], progress=False)
    with pytest.raises(HookNameError, match="did you mean"):
        write_cache(model, tokens, tmp_path / "x", ["blocks.0.hook_resid_pst"], progress=False)


def test_batch_stream_is_seeded_and_covers_each_epoch(tmp_path):
    model, tokens = tiny_hooked(), _tokens()
    write_cache(model, tokens, tmp_path, HOOKS[:1], batch_size=4, shard_tokens=30, progress=False)
    cache = ActivationCache(tmp_path)
    n = cache.n_tokens(HOOKS[0])

    def take(seed, k, start=0):
        it = cache.batches(HOOKS[0], 16, seed=seed, buffer_tokens=64, start=start)
        return [next(it) for _ in range(k)]

    a, b, c = take(0, 6), take(0, 6), take(1, 6)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])
    assert all(torch.equal(x, y) for x, y in zip(a[3:], take(0, 3, start=3)))
    epoch = torch.cat(take(0, n // 16 - 3))  # an epoch drops under a batch of leftovers per buffer
    stored = Counter(tuple(r.tolist()) for r in cache.load(HOOKS[0]))
    seen = Counter(tuple(r.tolist()) for r in epoch)
    assert all(count <= stored[row] for row, count in seen.items())  # no token twice within an epoch
