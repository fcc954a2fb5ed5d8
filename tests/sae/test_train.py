"""Training: every architecture trains through SAELens's SAETrainer and round-trips with SAELens."""

import pytest
import sae_lens
import torch
from sae_lens.saes import StandardSAE, StandardSAEConfig

from mechkit.errors import ArtifactError, DataError
from mechkit.sae import ActivationCache, TrainConfig, load_sae, train_sae, write_cache
from tests.conftest import tiny_hooked

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("cache")
    tokens = torch.randint(4, 64, (64, 16), generator=torch.Generator().manual_seed(0))
    write_cache(tiny_hooked(), tokens, path, [HOOK], batch_size=16, shard_tokens=256, progress=False)
    return ActivationCache(path)


def _mse(sae, acts):
    with torch.no_grad():
        return (sae(acts) - acts).pow(2).sum(-1).mean().item()


@pytest.mark.parametrize("arch", ["standard", "topk", "batchtopk", "jumprelu"])
def test_architecture_trains_and_reloads_with_sae_lens(cache, tmp_path, arch):
    cfg = TrainConfig(architecture=arch, expansion=4, k=4, steps=30, batch_size=64, lr=1e-2,
                      sparsity_coefficient={"standard": 1e-3, "jumprelu": 1e-3}.get(arch))
    acts = cache.load(HOOK)
    sae = train_sae(cache, HOOK, tmp_path, cfg)
    loaded = sae_lens.SAE.load_from_disk(str(tmp_path))
    assert loaded.cfg.d_sae == 64 and loaded.cfg.metadata.hook_name == HOOK
    assert loaded.cfg.metadata.mechkit_model_fingerprint == cache.model_fingerprint
    assert loaded.cfg.architecture() == ("jumprelu" if arch == "batchtopk" else arch)
    assert (tmp_path / "sparsity.safetensors").is_file()
    if arch == "batchtopk":  # saved as JumpReLU with the learned global threshold
        assert torch.allclose(loaded.threshold, sae.topk_threshold.float().expand(64))
    else:
        with torch.no_grad():  # the saved inference SAE computes what the trained one does
            torch.testing.assert_close(loaded(acts[:200]), sae.decode(sae.encode(acts[:200])), rtol=1e-4, atol=1e-4)
    untrained = TrainConfig(**{**cfg.__dict__, "steps": 0})
    from mechkit.sae import build_training_sae

    init = build_training_sae(untrained, 16)
    assert _mse(loaded, acts) < 0.8 * _mse(init, acts)  # it learned something
    if arch == "topk":
        assert (loaded.encode(acts) > 0).sum(-1).max() <= 4


def test_mechkit_loads_sae_lens_saved_sae(tmp_path):
    torch.manual_seed(0)
    theirs = StandardSAE(StandardSAEConfig(d_in=16, d_sae=32))
    theirs.cfg.metadata.hook_name = HOOK
    theirs.save_model(tmp_path)
    ours = load_sae(tmp_path)
    x = torch.randn(5, 16)
    assert torch.equal(ours.encode(x), theirs.encode(x))
    with pytest.raises(ArtifactError, match="no cfg.json"):
        load_sae(tmp_path / "missing")


def test_bad_options_are_refused(cache, tmp_path):
    with pytest.raises(DataError, match="did you mean 'topk'"):
        train_sae(cache, HOOK, tmp_path, TrainConfig(architecture="topkk", steps=1, batch_size=8))
    with pytest.raises(DataError, match="no option"):
        train_sae(cache, HOOK, tmp_path, TrainConfig(steps=1, batch_size=8, options={"kk": 3}))


def test_dead_feature_window_scales_with_the_run():
    from mechkit.sae.train import _trainer_config, dead_window

    assert dead_window(500) == 50 and dead_window(5) == 1 and dead_window(10 ** 6) == 1000
    assert _trainer_config(TrainConfig(steps=500)).dead_feature_window == 50
    assert _trainer_config(TrainConfig(steps=500, dead_feature_window=7)).dead_feature_window == 7


def test_short_runs_switch_on_the_auxiliary_loss(cache, tmp_path, monkeypatch):
    """With the default window, SAELens's TopK auxiliary loss (which trains dead features) is
    active within a short run; with SAELens's fixed 1000-step window it never is."""
    from sae_lens.saes.topk_sae import TopKTrainingSAE

    seen: list[float] = []
    original = TopKTrainingSAE.calculate_topk_aux_loss

    def spy(self, *args, **kwargs):
        loss = original(self, *args, **kwargs)
        seen.append(float(loss))
        return loss

    monkeypatch.setattr(TopKTrainingSAE, "calculate_topk_aux_loss", spy)
    active = {}
    for window in (None, 1000):
        seen.clear()
        cfg = TrainConfig(architecture="topk", expansion=8, k=2, steps=40, batch_size=64, lr=1e-2,
                          dead_feature_window=window)
        train_sae(cache, HOOK, tmp_path / str(window), cfg)
        active[window] = sum(v > 0 for v in seen)
    assert len(seen) == 40 and active[1000] == 0 and active[None] > 20


def _dead(sae, acts):
    with torch.no_grad():
        return int(((sae.encode(acts) > 0).sum(0) == 0).sum())


def test_data_init_is_seeded_and_starts_from_the_data(cache):
    from mechkit.sae import build_training_sae
    from mechkit.sae.train import _init_sample, data_init

    cfg = TrainConfig(architecture="topk", expansion=8, k=4, batch_size=64, init="data")
    sample = _init_sample(cache, HOOK, cfg, 128)
    assert torch.equal(sample, _init_sample(cache, HOOK, cfg, 128))  # a seeded draw from the cache
    saes = []
    for seed in (0, 0, 1):
        sae = build_training_sae(cfg, 16)
        data_init(sae, sample, seed=seed)
        saes.append(sae)
    a, b, c = saes
    assert all(torch.equal(pa, pb) for pa, pb in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.W_dec, c.W_dec)
    torch.testing.assert_close(a.b_dec, sample.mean(0))
    assert torch.equal(a.W_enc, a.W_dec.T) and torch.equal(a.b_enc, torch.zeros(128))
    norms = a.W_dec.norm(dim=-1)
    torch.testing.assert_close(norms, norms[0].expand(128))  # one common, fitted norm
    # decoder rows lie near the centred data directions, unlike SAELens's random init
    unit = sample - sample.mean(0)
    unit = unit / unit.norm(dim=-1, keepdim=True)
    cos = (a.W_dec / norms[:, None]) @ unit.T
    rand = build_training_sae(TrainConfig(architecture="topk", expansion=8, k=4), 16)
    cos_rand = (rand.W_dec / rand.W_dec.norm(dim=-1, keepdim=True)) @ unit.T
    assert cos.max(1).values.min() > 0.8 > cos_rand.max(1).values.median()
    acts = cache.load(HOOK)
    assert _dead(a, acts) == 0 and _dead(rand, acts) > 0  # every feature fires from the start
    with torch.no_grad():
        x = acts[:500]
        assert (a(x) - x).pow(2).sum() < (x - x.mean(0)).pow(2).sum()  # the fitted scale helps


def test_data_init_shares_features_over_repeated_activations():
    """Few distinct activations (token embeddings): each one gets an equal share of features, so
    every feature is among some activation's top k; drawing rows by frequency would not do that."""
    from mechkit.sae import build_training_sae
    from mechkit.sae.train import data_init

    g = torch.Generator().manual_seed(0)
    vectors = torch.randn(10, 16, generator=g)
    counts = torch.tensor([1000, 500, 200, 100, 50, 20, 10, 5, 2, 1])  # very uneven frequencies
    acts = vectors.repeat_interleave(counts, dim=0)
    sae = build_training_sae(TrainConfig(architecture="topk", d_sae=64, k=8), 16)
    data_init(sae, acts, seed=0, noise=0.0)  # rows = the centred activations' directions exactly
    centred = vectors - acts.mean(0)
    cos = (sae.W_dec / sae.W_dec.norm(dim=-1, keepdim=True)) @ (centred / centred.norm(dim=-1, keepdim=True)).T
    assert torch.allclose(cos.max(1).values, torch.ones(64), atol=1e-5)
    share = torch.bincount(cos.argmax(1), minlength=10)
    assert sorted(share.tolist()) == [6] * 6 + [7] * 4  # by frequency: about 34 for the first vector
    data_init(sae, acts, seed=0)  # with the default blend of random directions
    assert _dead(sae, vectors) == 0


def test_data_init_draws_uniformly_when_seeding_would_be_too_slow(monkeypatch):
    from mechkit.sae import build_training_sae
    from mechkit.sae import train as train_module

    acts = torch.randn(400, 16, generator=torch.Generator().manual_seed(0))
    rows = []
    for budget in (1e12, 0.0, 0.0):  # k-means++, then the uniform draw twice
        monkeypatch.setattr(train_module, "KMEANS_PP_MACS", budget)
        sae = build_training_sae(TrainConfig(architecture="topk", d_sae=64, k=8), 16)
        train_module.data_init(sae, acts, seed=0, noise=0.0)
        rows.append(sae.W_dec / sae.W_dec.norm(dim=-1, keepdim=True))
    centred = acts - acts.mean(0)
    unit = centred / centred.norm(dim=-1, keepdim=True)
    match = (rows[1] @ unit.T).max(1)
    assert torch.allclose(match.values, torch.ones(64), atol=1e-5)  # rows are data directions
    assert len(set(match.indices.tolist())) == 64  # 64 distinct activations
    assert torch.equal(rows[1], rows[2]) and not torch.equal(rows[0], rows[1])  # seeded, and another rule


def test_data_init_trains_and_resumes_identically(cache, tmp_path):
    cfg = TrainConfig(architecture="topk", expansion=8, k=4, steps=30, batch_size=64, lr=1e-2, init="data",
                      checkpoint_every=10)
    sae = train_sae(cache, HOOK, tmp_path / "a", cfg)
    assert _mse(load_sae(tmp_path / "a"), cache.load(HOOK)) < _mse(build_init(cfg), cache.load(HOOK))
    again = train_sae(cache, HOOK, tmp_path / "b", cfg)
    assert all(torch.equal(p, q) for p, q in zip(sae.parameters(), again.parameters()))
    assert load_sae(tmp_path / "a").cfg.metadata.mechkit_train_config["init"] == "data"
    with pytest.raises(DataError, match="unknown init 'date'; did you mean 'data'"):
        train_sae(cache, HOOK, tmp_path / "c", TrainConfig(steps=1, batch_size=8, init="date"))
    from mechkit.sae.train import resolved_init

    assert [resolved_init(TrainConfig(architecture=a)) for a in ("topk", "batchtopk", "standard", "jumprelu")] == [
        "data", "data", "sae_lens", "sae_lens"]
    assert resolved_init(TrainConfig(architecture="standard", init="data")) == "data"
    default = train_sae(cache, HOOK, tmp_path / "d", TrainConfig(**{**cfg.__dict__, "init": "auto"}))
    assert all(torch.equal(p, q) for p, q in zip(sae.parameters(), default.parameters()))  # auto = data for TopK


def build_init(cfg):
    from mechkit.sae import build_training_sae

    return build_training_sae(TrainConfig(**{**cfg.__dict__, "init": "sae_lens"}), 16)
