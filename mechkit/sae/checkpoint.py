"""Training checkpoints as safetensors + JSON (no pickle): SAE, optimizer, schedulers, statistics.

Layout under ``<out>/checkpoints/``::

    step-00000040/state.safetensors   sae.*, optim.<param>.<key>, trainer.*, rng.torch
    step-00000040/state.json          counters, scheduler states, optimizer param groups, config
    latest.json                       {"step": 40, "dir": "step-00000040"}   (atomic)

A checkpoint directory is written under a temporary name and renamed when complete, and
``latest.json`` is replaced atomically after that, so a process killed at any instant leaves
the previous checkpoint readable.
"""

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from mechkit.errors import ArtifactError

LATEST = "latest.json"
KEEP = 2


def save_checkpoint(trainer: Any, root: Path, step: int, config: dict[str, Any]) -> Path:
    """Write ``trainer`` (a SAELens ``SAETrainer``) after ``step`` completed steps."""
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:08d}"
    tmp, final = root / (name + ".tmp"), root / name
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    tensors = {f"sae.{k}": v.detach().cpu().contiguous() for k, v in trainer.sae.state_dict().items()}
    optim = trainer.optimizer.state_dict()
    for idx, state in optim["state"].items():
        for key, value in state.items():
            tensors[f"optim.{idx}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    tensors["trainer.act_freq_scores"] = trainer.act_freq_scores.detach().cpu().contiguous()
    tensors["trainer.n_forward_passes_since_fired"] = trainer.n_forward_passes_since_fired.detach().cpu().contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    save_file(tensors, str(tmp / "state.safetensors"))
    meta = {
        "step": step,
        "n_training_samples": trainer.n_training_samples,
        "n_frac_active_samples": trainer.n_frac_active_samples,
        "started_fine_tuning": trainer.started_fine_tuning,
        "lr_scheduler": trainer.lr_scheduler.state_dict(),
        "coefficient_schedulers": {k: s.state_dict() for k, s in trainer.coefficient_schedulers.items()},
        "optimizer_param_groups": optim["param_groups"],
        "scaling_factor": trainer.activation_scaler.scaling_factor,
        "config": config,
    }
    (tmp / "state.json").write_text(json.dumps(meta, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    latest = root / LATEST
    latest_tmp = root / (LATEST + ".tmp")
    latest_tmp.write_text(json.dumps({"step": step, "dir": name}))
    os.replace(latest_tmp, latest)
    old = sorted(p for p in root.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))
    for p in old[:-KEEP]:
        shutil.rmtree(p, ignore_errors=True)
    return final


def latest_checkpoint(root: Path) -> Path | None:
    latest = root / LATEST
    if not latest.exists():
        return None
    return root / json.loads(latest.read_text())["dir"]


def load_checkpoint(trainer: Any, path: Path, config: dict[str, Any]) -> int:
    """Restore ``trainer`` from ``path`` and return the number of completed steps."""
    meta = json.loads((path / "state.json").read_text())
    if meta["config"] != config:
        diff = sorted(k for k in set(meta["config"]) | set(config) if meta["config"].get(k) != config.get(k))
        raise ArtifactError(
            f"checkpoint {path} was trained with different {', '.join(diff)}: "
            "use the same settings to resume, or a new output directory"
        )
    tensors = load_file(str(path / "state.safetensors"))
    device = trainer.cfg.device
    sae_state = {k[4:]: v for k, v in tensors.items() if k.startswith("sae.")}
    trainer.sae.load_state_dict(sae_state)
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value if name == "step" else value.to(device)
    groups = meta["optimizer_param_groups"]
    for g in groups:
        g["betas"] = tuple(g["betas"])
    trainer.optimizer.load_state_dict({"state": state, "param_groups": groups})
    trainer.lr_scheduler.load_state_dict(meta["lr_scheduler"])
    for k, s in meta["coefficient_schedulers"].items():
        trainer.coefficient_schedulers[k].load_state_dict(s)
    trainer.act_freq_scores = tensors["trainer.act_freq_scores"].to(device)
    trainer.n_forward_passes_since_fired = tensors["trainer.n_forward_passes_since_fired"].to(device)
    trainer.n_frac_active_samples = meta["n_frac_active_samples"]
    trainer.started_fine_tuning = meta["started_fine_tuning"]
    trainer.n_training_samples = meta["n_training_samples"]
    trainer.n_training_steps = meta["step"]
    trainer.activation_scaler.scaling_factor = meta["scaling_factor"]
    torch.set_rng_state(tensors["rng.torch"])
    return meta["step"]
