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
