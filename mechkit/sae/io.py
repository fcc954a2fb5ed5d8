"""Load SAEs: mechkit writes SAELens's on-disk format, so any SAELens SAE directory loads too.

>>> sae = load_sae("saes/L1")   # doctest: +SKIP
>>> sae.cfg.metadata.hook_name  # doctest: +SKIP
'blocks.1.hook_resid_post'

Everything is checked before SAELens builds the SAE: ``cfg.json`` is a JSON object with
sane ``d_in``, ``d_sae``, ``k``, ``dtype`` and ``architecture``; the weights file is a
well-formed, complete safetensors file (never a pickle) whose tensors have the shapes the
config implies. Anything else is one :class:`~mechkit.errors.ArtifactError` line.
"""

import json
import math
import os
import stat
import struct
from pathlib import Path
from typing import Any

from mechkit.errors import ArtifactError, HookNameError, ShapeError, one_line  # one_line: also imported from here

SAE_CFG_FILENAME = "cfg.json"
SAE_WEIGHTS_FILENAME = "sae_weights.safetensors"
MAX_JSON_BYTES = 16 << 20  # a config or manifest larger than this is refused before parsing
MAX_HEADER_BYTES = 100 << 20  # safetensors' own limit on a header
MAX_D_IN = 1 << 20
MAX_D_SAE = 1 << 24
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
                "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}
_SHAPES = {"W_enc": ("d_in", "d_sae"), "W_dec": ("d_sae", "d_in"), "b_enc": ("d_sae",), "b_dec": ("d_in",),
           "threshold": ("d_sae",)}


def regular_file(path: Path, what: str, hint: str) -> os.stat_result:
    """``path``'s stat when it is a regular file (never a FIFO, device or folder: opening those can hang)."""
    try:
        st = path.stat()
    except OSError:
        raise ArtifactError(f"{what} {path} does not exist: {hint}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ArtifactError(f"{what} {path} is not a regular file: {hint}")
    return st


def read_json_file(path: Path, what: str, hint: str, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """Parse a small JSON file; anything unreadable, oversized or too deeply nested is one line."""
    st = regular_file(path, what, hint)
    if st.st_size > max_bytes:
        raise ArtifactError(f"{what} {path} is {st.st_size:,} bytes, more than {max_bytes:,}: {hint}")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except RecursionError:
        raise ArtifactError(f"{what} {path} nests too deeply: {hint}") from None
    except (ValueError, OSError) as err:  # JSONDecodeError, UnicodeDecodeError, unreadable
        raise ArtifactError(f"{what} {path} is not valid JSON ({one_line(err, 80)}): {hint}") from None


def safetensors_shapes(path: Path, what: str, hint: str) -> dict[str, tuple[str, list[int]]]:
    """Each tensor's (dtype, shape) from a safetensors header, after checking that the file is
    one (a pickle or other format is refused without being read further) and is complete."""
    size = regular_file(path, what, hint).st_size
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            if not 2 <= n <= min(MAX_HEADER_BYTES, size - 8):
                n = -1  # a pickle or any other format: its first bytes are no sane header length
            else:
                header = json.loads(f.read(n).decode("utf-8"))
    except (ValueError, RecursionError, OSError):
        raise ArtifactError(f"{what} {path} has a broken safetensors header: {hint}") from None
    if n < 0:
        raise ArtifactError(f"{what} {path} is not a safetensors file (or is truncated): {hint}")
    if not isinstance(header, dict):
        raise ArtifactError(f"{what} {path} has a broken safetensors header: {hint}")
    data = size - 8 - n
    shapes = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = entry["dtype"], list(entry["shape"]), entry["data_offsets"]
            ok = (all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
                  and isinstance(start, int) and isinstance(end, int) and 0 <= start <= end <= data
                  and end - start == math.prod(shape) * _DTYPE_BYTES[dtype])
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise ArtifactError(f"{what} {path}: tensor {name[:60]!r} is malformed or truncated: {hint}")
        shapes[name] = (dtype, shape)
    return shapes


def _positive_int(cfg: dict, key: str, limit: int, path: Path) -> int:
    value = cfg.get(key)
    if value is None:
        raise ArtifactError(f"{path / SAE_CFG_FILENAME} has no {key}: it needs d_in and d_sae (SAELens format)")
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise ArtifactError(f"{path / SAE_CFG_FILENAME}: {key} {shown} is not a whole number in 1..{limit:,}")
    return value


def check_sae_dir(path: str | os.PathLike) -> dict[str, Any]:
    """The checked ``cfg.json`` of an SAE directory (see the module docstring); raises ArtifactError."""
    from sae_lens.registry import SAE_CLASS_REGISTRY
    from sae_lens.util import DTYPE_MAP

    path = Path(path)
    hint = "pass a directory written by train_sae or SAE.save_model"
    if path.exists() and not path.is_dir():
        raise ArtifactError(f"SAE directory {path} is not a folder: {hint}")
    for name in (SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME):
        if not (path / name).exists():
            raise ArtifactError(f"{path} has no {name}: {hint}")
    cfg = read_json_file(path / SAE_CFG_FILENAME, "SAE config", hint)
    if not isinstance(cfg, dict):
        raise ArtifactError(f"{path / SAE_CFG_FILENAME} is a JSON {type(cfg).__name__}, not an object: {hint}")
    dims = {"d_in": _positive_int(cfg, "d_in", MAX_D_IN, path), "d_sae": _positive_int(cfg, "d_sae", MAX_D_SAE, path)}
    arch = cfg.get("architecture", "standard")
    if not isinstance(arch, str) or arch not in SAE_CLASS_REGISTRY:
        raise ArtifactError(f"{path / SAE_CFG_FILENAME}: unknown architecture {str(arch)[:40]!r}; "
                            f"SAELens knows {', '.join(sorted(SAE_CLASS_REGISTRY))}")
    if "k" in cfg:
        k = cfg["k"]
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= dims["d_sae"]:
            raise ArtifactError(f"{path / SAE_CFG_FILENAME}: k {str(k)[:40]} is not a whole number in 1..d_sae "
                                f"({dims['d_sae']})")
    dtype = cfg.get("dtype", "float32")
    if not isinstance(dtype, str) or dtype not in DTYPE_MAP:
        raise ArtifactError(f"{path / SAE_CFG_FILENAME}: unknown dtype {str(dtype)[:40]!r}; use one of "
                            f"{', '.join(DTYPE_MAP)}")
    metadata = cfg.get("metadata", {})
    if not isinstance(metadata, dict) or not isinstance(metadata.get("hook_name", ""), (str, type(None))):
        raise ArtifactError(f"{path / SAE_CFG_FILENAME}: metadata must be an object with a string hook_name")
    shapes = safetensors_shapes(path / SAE_WEIGHTS_FILENAME, "SAE weights", hint)
    for name, dim_names in _SHAPES.items():
        if name in shapes:
            want = [dims[d] for d in dim_names]
            if shapes[name][1] != want:
                raise ArtifactError(f"{path / SAE_WEIGHTS_FILENAME}: {name} has shape {shapes[name][1]}, but cfg.json "
                                    f"(d_in {dims['d_in']}, d_sae {dims['d_sae']}) implies {want}")
    return cfg


def load_sae(path: str | os.PathLike, device: str = "cpu"):
    """An inference SAE (SAELens class) from a directory with ``cfg.json`` + ``sae_weights.safetensors``."""
    from sae_lens import SAE

    path = Path(path)
    check_sae_dir(path)
    try:
        return SAE.load_from_disk(str(path), device=device)
    except Exception as err:  # whatever SAELens or torch raise on a config or weights they cannot use
        raise ArtifactError(f"cannot load SAE from {path}: {one_line(err)}") from None


def sae_hook(sae, hook: str | None = None) -> str:
    """The hook an SAE reads: ``hook`` if given, else the one recorded in its metadata."""
    hook = hook or sae.cfg.metadata.hook_name
    if not hook:
        raise HookNameError("this SAE records no hook_name: pass the hook it was trained on")
    return hook


def check_sae_fits(model, sae, hook: str) -> None:
    """Refuse (one line) an SAE whose input width differs from the activations at ``hook``."""
    import torch

    captured = {}

    def grab(act, hook):  # noqa: ARG001
        captured["shape"] = tuple(act.shape)

    with torch.no_grad():
        model.run_with_hooks(torch.zeros(1, 1, dtype=torch.long, device=model.cfg.device), fwd_hooks=[(hook, grab)])
    shape = captured.get("shape")
    if shape is None:
        return
    width = math.prod(shape[2:]) if getattr(sae.cfg, "reshape_activations", "none") == "hook_z" else shape[-1]
    if width != sae.cfg.d_in:
        raise ShapeError(f"the SAE reads {sae.cfg.d_in} values per token but {hook} has {width}: "
                         "use an SAE trained on this model and hook")
