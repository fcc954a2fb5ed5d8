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
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from mechkit.errors import ArtifactError
from mechkit.sae.io import one_line, read_json_file, safetensors_shapes

LATEST = "latest.json"
KEEP = 2
_DIR_NAME = re.compile(r"^step-\d{8,12}$")  # a checkpoint folder next to latest.json, never a path


def _hint(root: Path) -> str:
    return f"delete {root} to start over, or pass another output directory"


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
    """The checkpoint folder ``latest.json`` names, None when there is none; a damaged
    ``latest.json`` or one naming anything but a ``step-N`` folder next to it is refused."""
    latest = root / LATEST
    if not (latest.exists() or latest.is_symlink()):
        return None
    meta = read_json_file(latest, "checkpoint index", _hint(root))
    name = meta.get("dir") if isinstance(meta, dict) else None
    step = meta.get("step") if isinstance(meta, dict) else None
    if not isinstance(name, str) or not _DIR_NAME.match(name):
        raise ArtifactError(f"checkpoint index {latest} names {str(name)[:60]!r}, not a step-N folder next to it "
                            f"(a checkpoint may only reference its own folder): {_hint(root)}")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ArtifactError(f"checkpoint index {latest} has step {str(step)[:40]}, not a whole number: {_hint(root)}")
    path = root / name
    if not path.is_dir():
        raise ArtifactError(f"checkpoint index {latest} names {name}, which is not a folder in {root}: {_hint(root)}")
    return path


def load_checkpoint(trainer: Any, path: Path, config: dict[str, Any]) -> int:
    """Restore ``trainer`` from ``path`` and return the number of completed steps."""
    root = path.parent
    meta = read_json_file(path / "state.json", "checkpoint state", _hint(root))
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise ArtifactError(f"checkpoint state {path / 'state.json'} is not a mechkit checkpoint: {_hint(root)}")
    if meta["config"] != config:
        diff = sorted(str(k)[:40] for k in set(meta["config"]) | set(config) if meta["config"].get(k) != config.get(k))
        shown = ", ".join(diff[:5]) + (f" and {len(diff) - 5} more" if len(diff) > 5 else "")
        raise ArtifactError(
            f"checkpoint {path} was trained with different {shown}: "
            "use the same settings to resume, or a new output directory"
        )
    safetensors_shapes(path / "state.safetensors", "checkpoint tensors", _hint(root))
    try:
        return _restore(trainer, path, meta)
    except ArtifactError:
        raise
    except Exception as err:  # a state.json or tensors that do not fit this trainer
        raise ArtifactError(f"checkpoint {path} cannot be restored ({one_line(err, 200)}): {_hint(root)}") from None


def _restore(trainer: Any, path: Path, meta: dict[str, Any]) -> int:
    tensors = load_file(str(path / "state.safetensors"))
    step = meta["step"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step {str(step)[:40]} is not a whole number")
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
    # in this process's samples: a checkpoint of N ranks resumes on any number of ranks
    trainer.n_training_samples = step * trainer.cfg.train_batch_size_samples
    trainer.n_training_steps = step
    trainer.activation_scaler.scaling_factor = meta["scaling_factor"]
    torch.set_rng_state(tensors["rng.torch"])
    return step
