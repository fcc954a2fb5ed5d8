"""Train a SAELens SAE on cached activations with SAELens's ``SAETrainer``.

>>> cfg = TrainConfig(architecture="topk", expansion=8, k=32, steps=2000, batch_size=4096)  # doctest: +SKIP
>>> sae = train_sae("cache/", "blocks.1.hook_resid_post", "saes/L1", cfg)                  # doctest: +SKIP
>>> sae_lens.SAE.load_from_disk("saes/L1")                                                  # doctest: +SKIP

The output directory is SAELens's on-disk format (``cfg.json``, ``sae_weights.safetensors``,
``sparsity.safetensors``), written with SAELens's ``save_inference_model``: ``batchtopk``
SAEs are saved as ``jumprelu`` SAEs, as SAELens does. By default TopK-family
SAEs start from the data (``init="data"``, see ``data_init``): on the organisms' residual
streams this leaves fewer dead features at equal or better explained variance. With ``checkpoint_every`` set,
checkpoints go to ``<out>/checkpoints`` and a rerun resumes from the latest one; on CPU the
resumed run ends with bitwise the same weights as an uninterrupted one.
"""

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from safetensors.torch import save_file
from sae_lens.config import LoggingConfig, SAETrainerConfig
from sae_lens.constants import SPARSITY_FILENAME
from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY
from sae_lens.saes.sae import TrainingSAE, TrainStepInput, TrainStepOutput
from sae_lens.training.sae_trainer import SAETrainer
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

from mechkit import distributed
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
    # "data": decoder directions from cached training activations (see data_init), set on the
    # SAELens training SAE after it is built; "sae_lens": SAELens's own initialisation; "auto":
    # "data" for the TopK family (where it was measured to help), else "sae_lens"
    init: str = "auto"
    options: dict[str, Any] = field(default_factory=dict)


def check_config(cfg: TrainConfig) -> TrainConfig:
    """Refuse (one line) counts and rates no training run can use, before any work."""
    import math

    def whole(name: str, value: Any, low: int, high: int = 1 << 40) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise DataError(f"{name} {str(value)[:40]} is not a whole number in {low}..{high:,}")

    whole("expansion", cfg.expansion, 1, 1 << 16)
    if cfg.d_sae is not None:
        whole("d_sae", cfg.d_sae, 1, 1 << 24)
    whole("k", cfg.k, 1, 1 << 24)
    whole("steps", cfg.steps, 1)
    whole("batch_size", cfg.batch_size, 1, 1 << 30)
    whole("checkpoint_every", cfg.checkpoint_every, 0)
    if cfg.dead_feature_window is not None:
        whole("dead_feature_window", cfg.dead_feature_window, 1)
    for name in ("lr", "sparsity_coefficient"):
        value = getattr(cfg, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value) or value < 0 or (name == "lr" and value == 0)):
            raise DataError(f"{name} {value} is not a finite positive number")
    resolved_init(cfg)
    return cfg


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
        if cfg.k > kwargs["d_sae"]:
            raise DataError(f"k {cfg.k} is more than the SAE's {kwargs['d_sae']} features: lower k or raise d_sae")
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
    try:
        sae_cfg = cfg_cls(**kwargs)
    except (TypeError, ValueError, KeyError, AssertionError) as err:
        from mechkit.sae.io import one_line

        raise DataError(f"SAELens refuses this {cfg.architecture} config: {one_line(err, 200)}") from None
    for key, value in (metadata or {}).items():
        sae_cfg.metadata[key] = value
    torch.manual_seed(cfg.seed)
    return sae_cls(sae_cfg)


INITS = ("auto", "data", "sae_lens")
# k-means++ seeding makes one pass over the sample per feature; above this many multiply-adds
# (about ten seconds of CPU: a GPT-2-sized SAE would need thousands of times more) the rows are
# distinct activations drawn uniformly instead
KMEANS_PP_MACS = 2e10


def resolved_init(cfg: TrainConfig) -> str:
    """The initialisation ``cfg`` asks for, with "auto" resolved by architecture."""
    if cfg.init not in INITS:
        raise DataError(f"unknown init {cfg.init!r}; {did_you_mean(cfg.init, INITS)}")
    if cfg.init == "auto":
        return "data" if cfg.architecture in _K_ARCHS else "sae_lens"
    return cfg.init


@torch.no_grad()
def data_init(sae: TrainingSAE, acts: Float[Tensor, "n d_in"], seed: int = 0, noise: float = 0.5,
              decoder_norm: float | None = None) -> None:
    """Initialise ``sae``'s parameters from activations ``acts`` (in place, deterministic in ``seed``).

    ``b_dec`` is the activations' mean and ``b_enc`` zero; the decoder rows are directions of
    centred activations, spread over the data: every distinct activation gets an equal share
    of the features when there are fewer distinct activations than features (token embeddings),
    else they are drawn k-means++ style (each next one with probability growing with its angular
    distance from those already drawn), so frequent activations do not take most features; for
    SAEs too large for that (``KMEANS_PP_MACS``), distinct activations drawn uniformly. Each
    direction is blended with a random one (weight ``noise``) so that features drawn from the
    same activation differ. The encoder is the decoder's transpose; the common norm of the rows
    is fitted so that the initial reconstruction of ``acts`` has the right scale (least squares)."""
    if acts.ndim != 2 or acts.shape[1] != sae.cfg.d_in or len(acts) < 2:
        raise DataError(f"data init needs activations [n >= 2, {sae.cfg.d_in}], got {list(acts.shape)}")
    if not all(isinstance(getattr(sae, name, None), torch.nn.Parameter) for name in ("W_enc", "W_dec", "b_enc", "b_dec")):
        raise DataError(f"{sae.cfg.architecture()} SAEs have no W_enc/W_dec/b_enc/b_dec to initialise from data")
    gen = torch.Generator().manual_seed(seed)
    acts = acts.detach().float().cpu()
    mean = acts.mean(0)
    d_sae = sae.cfg.d_sae
    points = torch.unique(acts - mean, dim=0)  # sorted: the same rows give the same order
    points = points[points.norm(dim=-1) > 1e-6 * points.norm(dim=-1).max().clamp(min=1e-30)]
    if len(points) == 0:
        raise DataError("data init needs activations that are not all equal")
    unit = points / points.norm(dim=-1, keepdim=True)
    if len(points) <= d_sae:  # an equal share of the features for each distinct activation
        idx = torch.cat([torch.randperm(len(points), generator=gen) for _ in range(-(-d_sae // len(points)))])[:d_sae]
    elif len(points) * d_sae * points.shape[1] > KMEANS_PP_MACS:  # large SAEs: one pass per feature is too slow
        idx = torch.randperm(len(points), generator=gen)[:d_sae]
    else:  # k-means++ seeding on directions
        idx = torch.empty(d_sae, dtype=torch.long)
        idx[0] = int(torch.randint(len(points), (1,), generator=gen))
        dist = 1 - unit @ unit[idx[0]]
        for i in range(1, d_sae):
            w = dist.clamp(min=0) ** 2
            idx[i] = int(torch.multinomial(w if w.sum() > 0 else torch.ones_like(w), 1, generator=gen))
            dist = torch.minimum(dist, 1 - unit @ unit[idx[i]])
    rand = torch.randn(d_sae, sae.cfg.d_in, generator=gen)
    dirs = unit[idx] + noise * rand / rand.norm(dim=-1, keepdim=True)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    dtype, device = sae.W_dec.dtype, sae.W_dec.device
    sae.b_dec.data.copy_(mean.to(device, dtype))
    sae.b_enc.data.zero_()
    sae.W_dec.data.copy_(dirs.to(device, dtype))
    sae.W_enc.data.copy_(dirs.T.to(device, dtype))
    x = acts[:8192].to(device, dtype)
    recon = sae.decode(sae.encode(x)) - sae.b_dec  # the reconstruction with rows of norm 1
    target = x - sae.b_dec
    scale = float((recon * target).sum() / (recon * recon).sum().clamp(min=1e-12))
    # with tied weights the reconstruction scales as (row norm)^2: sqrt(scale) on each side
    s = max(scale, 1e-6) ** 0.5
    dec = s if decoder_norm is None else decoder_norm
    sae.W_dec.data.mul_(dec)
    sae.W_enc.data.mul_(s * s / dec)


def _init_sample(cache: ActivationCache, hook: str, cfg: TrainConfig, d_sae: int) -> Tensor:
    """The activations data_init draws from: a seeded sample of the cache (a separate stream
    from the training batches), so a rerun or a resumed run starts from the same SAE."""
    n = min(cache.n_tokens(hook), max(8 * d_sae, 8192))
    return next(cache.batches(hook, n, seed=cfg.seed + 2))


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
    local = cfg.batch_size // distributed.world_size()  # SAELens counts the samples of its own process
    return SAETrainerConfig(
        total_training_samples=cfg.steps * local,
        train_batch_size_samples=local,
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
    """Train on ``hook``'s cached activations; write the SAE to ``out_dir`` and return it.

    Inside a torchrun process group (:mod:`mechkit.distributed`) the SAE trains with
    ``DistributedDataParallel``: each step's global batch of ``cfg.batch_size`` activations (the
    same batches a single process reads) is split evenly among the ranks, gradients are averaged
    and firing statistics added across ranks, so N ranks take the same steps as one process up
    to float summation order. Rank 0 writes checkpoints and the SAE; a restarted group resumes
    from the last checkpoint."""
    check_config(cfg)
    world = distributed.world_size()
    if cfg.batch_size % world:
        raise DataError(f"batch size {cfg.batch_size} does not divide among {world} ranks: "
                        f"use a multiple of {world} so every rank takes an equal share of each batch")
    cache = cache if isinstance(cache, ActivationCache) else ActivationCache(cache)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"output {out} exists and is not a folder: pass a folder (new or existing)")
    out.mkdir(parents=True, exist_ok=True)
    d_in = cache.d(hook)
    metadata = {
        "hook_name": hook,
        "model_name": cache.manifests[0].get("model_name"),
        "mechkit_model_fingerprint": cache.model_fingerprint,
        "mechkit_train_config": asdict(cfg),
    }
    init = resolved_init(cfg)
    config_key = {"train": json.loads(json.dumps(asdict(cfg))), "hook": hook, "cache": cache.model_fingerprint}
    distributed.agree("the SAE training configuration and cache", json.dumps(config_key, sort_keys=True))
    cfg = replace(cfg, device=distributed.device_for_rank(cfg.device))  # cuda -> cuda:LOCAL_RANK in a group
    sae = build_training_sae(cfg, d_in, metadata)
    root = out / "checkpoints"
    latest = ckpt.latest_checkpoint(root) if resume else None
    distributed.agree("the checkpoint to resume from", str(latest))
    if init == "data" and latest is None:  # a resumed run loads its weights from the checkpoint
        data_init(sae, _init_sample(cache, hook, cfg, sae.cfg.d_sae), seed=cfg.seed)
    trainer: SAETrainer | None = None

    def on_checkpoint(checkpoint_path: Path | None) -> None:  # noqa: ARG001 (SAELens passes None here)
        # SAELens calls this before it counts the step that was just taken
        if distributed.is_main():
            ckpt.save_checkpoint(trainer, root, trainer.n_training_steps + 1, config_key)

    start = 0
    data = _Provider(cache, hook, cfg)
    trainer_cls = _DataParallelTrainer if distributed.active() else SAETrainer
    trainer = trainer_cls(cfg=_trainer_config(cfg), sae=sae, data_provider=data, save_checkpoint_fn=on_checkpoint)
    if latest is not None:
        start = ckpt.load_checkpoint(trainer, latest, config_key)
    elif cfg.normalize_activations == "expected_average_only_in":
        # estimated from a separate stream, so the training stream is the same on resume
        trainer.activation_scaler.estimate_scaling_factor(
            d_in, iter(cache.batches(hook, cfg.batch_size, seed=cfg.seed + 1)), n_batches_for_norm_estimate=20
        )
    data.start(start)
    local = cfg.batch_size // world  # each rank's rows of a step's batch; SAELens counts samples per rank
    if cfg.checkpoint_every:
        every = cfg.checkpoint_every * local
        trainer.checkpoint_thresholds = [
            s - 1 for s in range(every, cfg.steps * local, every) if s > trainer.n_training_samples
        ]
    with _matmul_precision(cfg):
        trainer.fit()
    if distributed.is_main():
        sae.save_inference_model(str(out))
        save_file({"sparsity": trainer.log_feature_sparsity}, str(out / SPARSITY_FILENAME))
    distributed.barrier()  # every rank returns once the SAE is on disk
    return sae


class _Provider:
    """The iterator SAETrainer pulls batches from: the cache's seeded stream from batch ``start``."""

    def __init__(self, cache: ActivationCache, hook: str, cfg: TrainConfig):
        self.cache, self.hook, self.cfg = cache, hook, cfg
        self._it = None

    def start(self, n: int) -> None:
        self._it = self.cache.batches(self.hook, self.cfg.batch_size, seed=self.cfg.seed, start=n)
        self._rows = distributed.shard(self.cfg.batch_size, "activations of a batch")

    def __iter__(self) -> "_Provider":
        return self

    def __next__(self) -> torch.Tensor:
        return next(self._it)[self._rows]  # in a process group, this rank's share of the batch


class _StepModule(torch.nn.Module):
    """The SAE's training forward pass as a module's ``forward``, for DistributedDataParallel."""

    def __init__(self, sae: TrainingSAE):
        super().__init__()
        self.sae = sae

    def forward(self, sae_in: Tensor, dead_neuron_mask: Tensor, coefficients: dict[str, float],
                n_training_steps: int, is_logging_step: bool) -> TrainStepOutput:
        return self.sae.training_forward_pass(step_input=TrainStepInput(
            sae_in=sae_in, dead_neuron_mask=dead_neuron_mask, coefficients=coefficients,
            n_training_steps=n_training_steps, is_logging_step=is_logging_step,
        ))


class _DataParallelTrainer(SAETrainer):
    """SAELens's trainer with its step run through ``DistributedDataParallel``.

    Each rank's loss is the mean over its equal share of the batch, and DDP averages the
    gradients, so the update is the single-process one on the whole batch. Which features fired
    is added across ranks, so dead-feature masks (and TopK's auxiliary loss, which reads them)
    and the sparsity statistics are the whole batch's too."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        cuda = torch.device(self.cfg.device).type == "cuda"
        self.ddp = DistributedDataParallel(_StepModule(self.sae), device_ids=[self.sae.device] if cuda else None)

    def _train_step(self, sae: TrainingSAE, sae_in: Tensor) -> TrainStepOutput:
        sae.train()
        with self.autocast_if_enabled:
            out = self.ddp(sae_in, self.dead_neurons, self.get_coefficients(), self.n_training_steps,
                           self._is_logging_step())
            with torch.no_grad():
                fired = distributed.all_sum(out.feature_acts.bool().float().sum(0)).to(self.act_freq_scores)
                self.n_forward_passes_since_fired += 1
                self.n_forward_passes_since_fired[fired > 0] = 0
                self.act_freq_scores += fired
                self.n_frac_active_samples += self.cfg.train_batch_size_samples * distributed.world_size()
        distributed.collective(out.loss.backward)  # DDP all-reduces (averages) the gradients here
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad()
        self.lr_scheduler.step()
        for scheduler in self.coefficient_schedulers.values():
            scheduler.step()
        return out
