"""Train a SAELens SAE on cached activations with SAELens's ``SAETrainer``.

>>> cfg = TrainConfig(architecture="topk", expansion=8, k=32, steps=2000, batch_size=4096)  # doctest: +SKIP
>>> sae = train_sae("cache/", "blocks.1.hook_resid_post", "saes/L1", cfg)                  # doctest: +SKIP
>>> sae_lens.SAE.load_from_disk("saes/L1")                                                  # doctest: +SKIP

The output directory is SAELens's on-disk format (``cfg.json``, ``sae_weights.safetensors``,
``sparsity.safetensors``), written with SAELens's ``save_inference_model``: ``batchtopk``
SAEs are saved as ``jumprelu`` SAEs, as SAELens does. With ``checkpoint_every`` set,
checkpoints go to ``<out>/checkpoints`` and a rerun resumes from the latest one; on CPU the
resumed run ends with bitwise the same weights as an uninterrupted one.
"""

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from sae_lens.config import LoggingConfig, SAETrainerConfig
from sae_lens.constants import SPARSITY_FILENAME
from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY
from sae_lens.saes.sae import TrainingSAE
from sae_lens.training.sae_trainer import SAETrainer

from mechkit.errors import DataError, did_you_mean
from mechkit.sae import checkpoint as ckpt
from mechkit.sae.cache import ActivationCache

# Which SAELens config field each mechkit knob sets, per architecture.
_SPARSITY_FIELD = {"standard": "l1_coefficient", "jumprelu": "l0_coefficient", "gated": "l1_coefficient"}
_K_ARCHS = ("topk", "batchtopk", "abstopk", "matryoshka_batchtopk")


@dataclass(frozen=True)
class TrainConfig:
    """What to train and how. ``options`` passes any other SAELens config field through."""

    architecture: str = "topk"  # any SAELens training architecture: standard, topk, batchtopk, jumprelu, ...
    expansion: int = 8  # d_sae = expansion * d_in, unless d_sae is given
    d_sae: int | None = None
    k: int = 32  # active features per token (topk family)
    sparsity_coefficient: float | None = None  # l1 (standard, gated) or l0 (jumprelu) coefficient
    steps: int = 1000
    batch_size: int = 4096
    lr: float = 3e-4
    seed: int = 0
    device: str = "cpu"
    autocast: bool | None = None  # bf16 autocast of the SAE forward pass; None: on for CUDA
    tf32: bool = True  # TF32 matmuls on CUDA (no effect on CPU)
    normalize_activations: str = "none"  # or "expected_average_only_in"
    checkpoint_every: int = 0  # steps between checkpoints; 0 = none
    # steps without firing after which a feature counts as dead (and TopK/BatchTopK's auxiliary
    # loss, or JumpReLU's pre-activation loss, starts reviving it); None: dead_window(steps)
    dead_feature_window: int | None = None
    options: dict[str, Any] = field(default_factory=dict)


def dead_window(steps: int) -> int:
    """The default dead-feature window for a run of ``steps`` steps: a tenth of the run (at least
    one step), capped at SAELens's default of 1000, so short runs revive dead features too."""
    return max(1, min(1000, steps // 10))


def architectures() -> list[str]:
    """The SAELens training architectures available."""
    return sorted(SAE_TRAINING_CLASS_REGISTRY)


def build_training_sae(cfg: TrainConfig, d_in: int, metadata: dict[str, Any] | None = None) -> TrainingSAE:
    """A freshly initialised SAELens training SAE (initialised under ``torch.manual_seed(cfg.seed)``)."""
    if cfg.architecture not in SAE_TRAINING_CLASS_REGISTRY:
        raise DataError(f"unknown SAE architecture {cfg.architecture!r}; {did_you_mean(cfg.architecture, architectures())}")
    sae_cls, cfg_cls = SAE_TRAINING_CLASS_REGISTRY[cfg.architecture]
    kwargs: dict[str, Any] = {
        "d_in": d_in,
        "d_sae": cfg.d_sae or cfg.expansion * d_in,
        "device": cfg.device,
        "normalize_activations": cfg.normalize_activations,
    }
    if cfg.architecture in _K_ARCHS:
        kwargs["k"] = cfg.k
    if cfg.sparsity_coefficient is not None:
        if cfg.architecture not in _SPARSITY_FIELD:
            raise DataError(f"{cfg.architecture} SAEs take no sparsity coefficient: set k, or use options")
        kwargs[_SPARSITY_FIELD[cfg.architecture]] = cfg.sparsity_coefficient
    kwargs.update(cfg.options)
    valid = set(cfg_cls.__dataclass_fields__)
    unknown = sorted(set(kwargs) - valid)
    if unknown:
        raise DataError(f"{cfg.architecture} SAEs have no option {unknown[0]!r}; {did_you_mean(unknown[0], valid)}")
    sae_cfg = cfg_cls(**kwargs)
    for key, value in (metadata or {}).items():
        sae_cfg.metadata[key] = value
    torch.manual_seed(cfg.seed)
    return sae_cls(sae_cfg)


def _autocast(cfg: TrainConfig) -> bool:
    return cfg.autocast if cfg.autocast is not None else torch.device(cfg.device).type == "cuda"


@contextmanager
def _matmul_precision(cfg: TrainConfig) -> Iterator[None]:
    """TF32 for float32 matmuls on CUDA while training; the previous setting comes back after."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = cfg.tf32 and torch.device(cfg.device).type == "cuda"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def _trainer_config(cfg: TrainConfig) -> SAETrainerConfig:
    return SAETrainerConfig(
        total_training_samples=cfg.steps * cfg.batch_size,
        train_batch_size_samples=cfg.batch_size,
        lr=cfg.lr,
        lr_end=cfg.lr / 10,
        device=cfg.device,
        autocast=_autocast(cfg),
        dead_feature_window=cfg.dead_feature_window if cfg.dead_feature_window is not None else dead_window(cfg.steps),
        feature_sampling_window=max(cfg.steps, 1),
        logger=LoggingConfig(log_to_wandb=False),
    )


def train_sae(
    cache: str | os.PathLike | ActivationCache,
    hook: str,
    out_dir: str | os.PathLike,
    cfg: TrainConfig = TrainConfig(),
    resume: bool = True,
) -> TrainingSAE:
    """Train on ``hook``'s cached activations; write the SAE to ``out_dir`` and return it."""
    cache = cache if isinstance(cache, ActivationCache) else ActivationCache(cache)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    d_in = cache.d(hook)
    metadata = {
        "hook_name": hook,
        "model_name": cache.manifests[0].get("model_name"),
        "mechkit_model_fingerprint": cache.model_fingerprint,
        "mechkit_train_config": asdict(cfg),
    }
    sae = build_training_sae(cfg, d_in, metadata)
    config_key = {"train": json.loads(json.dumps(asdict(cfg))), "hook": hook, "cache": cache.model_fingerprint}
    root = out / "checkpoints"
    trainer: SAETrainer | None = None

    def on_checkpoint(checkpoint_path: Path | None) -> None:  # noqa: ARG001 (SAELens passes None here)
        # SAELens calls this before it counts the step that was just taken
        ckpt.save_checkpoint(trainer, root, trainer.n_training_steps + 1, config_key)

    start = 0
    data = _Provider(cache, hook, cfg)
    trainer = SAETrainer(cfg=_trainer_config(cfg), sae=sae, data_provider=data, save_checkpoint_fn=on_checkpoint)
    latest = ckpt.latest_checkpoint(root) if resume else None
    if latest is not None:
        start = ckpt.load_checkpoint(trainer, latest, config_key)
    elif cfg.normalize_activations == "expected_average_only_in":
        # estimated from a separate stream, so the training stream is the same on resume
        trainer.activation_scaler.estimate_scaling_factor(
            d_in, iter(cache.batches(hook, cfg.batch_size, seed=cfg.seed + 1)), n_batches_for_norm_estimate=20
        )
    data.start(start)
    if cfg.checkpoint_every:
        every = cfg.checkpoint_every * cfg.batch_size
        trainer.checkpoint_thresholds = [
            s - 1 for s in range(every, cfg.steps * cfg.batch_size, every) if s > trainer.n_training_samples
        ]
    with _matmul_precision(cfg):
        trainer.fit()
    sae.save_inference_model(str(out))
    save_file({"sparsity": trainer.log_feature_sparsity}, str(out / SPARSITY_FILENAME))
    return sae


class _Provider:
    """The iterator SAETrainer pulls batches from: the cache's seeded stream from batch ``start``."""

    def __init__(self, cache: ActivationCache, hook: str, cfg: TrainConfig):
        self.cache, self.hook, self.cfg = cache, hook, cfg
        self._it = None

    def start(self, n: int) -> None:
        self._it = self.cache.batches(self.hook, self.cfg.batch_size, seed=self.cfg.seed, start=n)

    def __iter__(self) -> "_Provider":
        return self

    def __next__(self) -> torch.Tensor:
        return next(self._it)
