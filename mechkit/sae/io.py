"""Load SAEs: mechkit writes SAELens's on-disk format, so any SAELens SAE directory loads too.

>>> sae = load_sae("saes/L1")   # doctest: +SKIP
>>> sae.cfg.metadata.hook_name  # doctest: +SKIP
'blocks.1.hook_resid_post'
"""

import json
import os
from pathlib import Path

from sae_lens import SAE
from sae_lens.constants import SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME

from mechkit.errors import ArtifactError, HookNameError


def load_sae(path: str | os.PathLike, device: str = "cpu") -> SAE:
    """An inference SAE (SAELens class) from a directory with ``cfg.json`` + ``sae_weights.safetensors``."""
    path = Path(path)
    for name in (SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME):
        if not (path / name).is_file():
            raise ArtifactError(f"{path} has no {name}: pass a directory written by train_sae or SAE.save_model")
    try:
        json.loads((path / SAE_CFG_FILENAME).read_text())
        return SAE.load_from_disk(str(path), device=device)
    except (ValueError, KeyError, RuntimeError) as err:
        raise ArtifactError(f"cannot load SAE from {path}: {err}") from None


def sae_hook(sae: SAE, hook: str | None = None) -> str:
    """The hook an SAE reads: ``hook`` if given, else the one recorded in its metadata."""
    hook = hook or sae.cfg.metadata.hook_name
    if not hook:
        raise HookNameError("this SAE records no hook_name: pass the hook it was trained on")
    return hook
