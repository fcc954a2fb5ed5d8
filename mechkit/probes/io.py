"""Probes as fingerprinted artifacts: ``NAME.probe.json`` plus a safetensors file for the direction.

>>> save_probe(probe, "cue.probe.json", model, metrics={"test": auroc.as_dict()})   # doctest: +SKIP
>>> saved = load_probe("cue.probe.json")                                          # doctest: +SKIP
>>> saved.probe.hook, saved.model_fingerprint[:7]                                 # doctest: +SKIP
('blocks.0.hook_resid_post', 'sha256:')

The same rules as circuit artifacts (:mod:`mechkit.artifacts.io`, whose file helpers this
reuses): JSON with a strict schema (``mechkit.probe/1``: unknown keys are an error, numbers
finite, strings bounded); the direction in a safetensors file next to it, named after the
artifact and the file's sha256 (``cue.probe.json.<16 hex>.probe.safetensors``), whose sha256
the JSON records; the JSON's own sha256 (over its canonical form without ``digest``) in
``digest``, so an edited bias or hook is caught; atomic saves (direction, then JSON, each
written to a temporary file, fsynced and renamed; old directions removed last); loading never
executes code and refuses FIFOs, devices, oversized files and references out of the folder.

Document layout (keys in this order)::

    schema, mechkit_version, created, model{spec, fingerprint}, hook, position,
    method{name, hyperparameters}, width, bias, direction{file, sha256}, task, metrics, digest
"""

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

import torch
from pydantic import ConfigDict, Field

from mechkit.artifacts.io import (
    _check_depth,
    _decode,
    _file_mode,
    _fsync_dir,
    _no_duplicates,
    _read_bounded,
    _reject_constant,
    _remove_leftovers,
    _sidecar_stem,
    _temp_prefix,
    _write_temp,
    beside,
)
from mechkit.artifacts.schema import MAX_TEXT, FiniteFloat, ModelInfo, Params, _Strict, first_error
from mechkit.errors import ArtifactError
from mechkit.probes.fit import LinearProbe

SCHEMA_VERSION = "mechkit.probe/1"
MAX_WIDTH = 1 << 24  # values in one direction


class MethodInfo(_Strict):
    name: Annotated[str, Field(pattern=r"^(logreg|diff-means|contrast)$")]
    hyperparameters: Params = Field(default_factory=dict)


class DirectionFile(_Strict):
    """A safetensors file next to the JSON holding ``direction`` (F32, ``[width]``)."""

    file: Annotated[str, Field(pattern=r"^[\w.-]{1,200}\.probe\.safetensors$")]
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class ProbeDocument(_Strict):
    """A probe artifact, ``mechkit.probe/1``."""

    model_config = ConfigDict(title="mechkit probe artifact", json_schema_extra={"$id": SCHEMA_VERSION})

    schema_: Annotated[str, Field(alias="schema", pattern=r"^mechkit\.probe/1$")] = SCHEMA_VERSION
    mechkit_version: Annotated[str, Field(max_length=64)]
    created: Annotated[str, Field(max_length=64)]
    model: ModelInfo
    hook: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.]{1,200}$")]
    position: Annotated[str, Field(pattern=r"^(answer|last|-?[0-9]{1,9})$")]
    method: MethodInfo
    width: Annotated[int, Field(ge=1, le=MAX_WIDTH)]
    bias: FiniteFloat
    direction: DirectionFile
    task: Params = Field(default_factory=dict, description="how the training prompts were made")
    metrics: Params = Field(default_factory=dict, description='e.g. {"test": {"auroc": ..., "ci_low": ...}}')
    digest: Annotated[str, Field(pattern=r"^sha256:[0-9a-f]{64}$", max_length=MAX_TEXT)]


@dataclass(frozen=True)
class SavedProbe:
    """A loaded probe artifact: the probe and what it was fitted on."""

    probe: LinearProbe
    model_spec: str
    model_fingerprint: str
    task: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    mechkit_version: str = ""


def _digest(doc: dict[str, Any]) -> str:
    body = {k: v for k, v in doc.items() if k != "digest"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _plain(value: Any, where: str) -> Any:
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as err:
        raise ArtifactError(f"{where}: cannot be written as JSON ({err}); use plain numbers, strings, lists and dicts") from None


def direction_name(path: str | os.PathLike, sha256: str) -> str:
    return f"{_sidecar_stem(path)}.{sha256[:16]}.probe.safetensors"


def save_probe(probe: LinearProbe, path: str | os.PathLike, model, *, task: dict[str, Any] | None = None,
               metrics: dict[str, Any] | None = None, model_spec: str | None = None) -> Path:
    """Write ``probe`` (fitted on ``model``, whose fingerprint is recorded) atomically.

    ``model_spec``: how to load the model again (default: the spec it was loaded with by
    :func:`mechkit.load_model`, else its ``cfg.model_name``); ``task`` and ``metrics``:
    free-form JSON recorded with it (``task.test`` and ``metrics.test.auroc`` are what
    :func:`verify_probe` re-measures)."""
    from safetensors.torch import save

    from mechkit import __version__
    from mechkit.models import fingerprint
    from mechkit.models.loading import spec_of

    path = Path(path)
    if not path.parent.is_dir():
        raise ArtifactError(f"cannot save to {path}: directory {path.parent} does not exist; create it first")
    if path.is_dir():
        raise ArtifactError(f"cannot save to {path}: it is a directory; give a file name such as NAME.probe.json")
    direction = probe.direction.detach().to("cpu", torch.float32).contiguous()
    if not torch.isfinite(direction).all():
        raise ArtifactError("the probe's direction holds NaN or infinity: refit it")
    blob = save({"direction": direction})
    sha = hashlib.sha256(blob).hexdigest()
    side = direction_name(path, sha)
    doc: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "mechkit_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {"spec": model_spec or spec_of(model) or model.cfg.model_name, "fingerprint": fingerprint(model)},
        "hook": probe.hook,
        "position": str(probe.position),
        "method": {"name": probe.method, "hyperparameters": _plain(dict(probe.hyperparameters), "hyperparameters")},
        "width": int(direction.shape[0]),
        "bias": float(probe.bias),
        "direction": {"file": side, "sha256": sha},
        "task": _plain(dict(task or {}), "task"),
        "metrics": _plain(dict(metrics or {}), "metrics"),
    }
    doc["digest"] = _digest(doc)
    try:
        ProbeDocument.model_validate(doc)
    except ValueError as err:
        raise ArtifactError(f"cannot save probe: {first_error(err)}") from None
    text = (json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode()
    directory, prefix, mode = path.parent, _temp_prefix(path), _file_mode(path)
    pending: list[Path] = []
    try:
        pending.append(_write_temp(directory, blob, prefix, mode))
        os.replace(pending[-1], directory / side)
        pending.pop()
        _fsync_dir(directory)  # the direction is in place before the JSON that names it
        pending.append(_write_temp(directory, text, prefix, mode))
        os.replace(pending[-1], path)
        pending.pop()
        _fsync_dir(directory)
    finally:
        for t in pending:
            t.unlink(missing_ok=True)
    own = re.compile(re.escape(_sidecar_stem(path)) + r"\.[0-9a-f]{16}\.probe\.safetensors")
    _remove_leftovers(path, side, own)
    _fsync_dir(directory)
    return path


def _parse(data: bytes | bytearray, where: str) -> ProbeDocument:
    try:
        raw = json.loads(_decode(data, where), parse_constant=_reject_constant, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{where}: invalid JSON at line {err.lineno} column {err.colno}: {err.msg}") from None
    except RecursionError:
        raise ArtifactError(f"{where}: JSON nested too deeply: not a mechkit probe artifact") from None
    except ValueError as err:
        raise ArtifactError(f"{where}: invalid JSON: {str(err).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ArtifactError(f"{where}: top level is a JSON {type(raw).__name__}, expected an object")
    if raw.get("schema") != SCHEMA_VERSION:
        raise ArtifactError(f"{where}: unknown schema {str(raw.get('schema'))[:80]!r}; this mechkit reads "
                            f"{SCHEMA_VERSION!r} probe artifacts")
    try:
        _check_depth(raw)
        doc = ProbeDocument.model_validate(raw)
    except ArtifactError as err:
        raise ArtifactError(f"{where}: {err}") from None
    except ValueError as err:
        raise ArtifactError(f"{where}: {first_error(err)}") from None
    if _digest(raw) != doc.digest:
        raise ArtifactError(f"{where}: digest does not match the content: the file was edited after it was saved")
    return doc


def load_probe(path: str | os.PathLike) -> SavedProbe:
    """Read a probe artifact written by :func:`save_probe`; every failure is an ArtifactError."""
    from safetensors.torch import load

    path = Path(path)
    where = path.name
    doc = _parse(_read_bounded(path, "probe artifact", json_text=True, limit=16 << 20), where)
    side = beside(path, doc.direction.file, f"{where}: direction.file")
    data = bytes(_read_bounded(side, "probe direction", limit=4 * MAX_WIDTH + (1 << 16)))
    if hashlib.sha256(data).hexdigest() != doc.direction.sha256:
        raise ArtifactError(f"{side.name}: sha256 differs from direction.sha256: the direction was changed or is "
                            "from another save")
    try:
        tensors = load(data)
    except Exception as err:  # safetensors raises its own errors on malformed headers
        raise ArtifactError(f"{side.name}: not a valid safetensors file ({str(err).splitlines()[0][:120]})") from None
    direction = tensors.get("direction")
    if set(tensors) != {"direction"} or direction.dtype != torch.float32 or direction.shape != (doc.width,):
        raise ArtifactError(f"{side.name}: expected exactly 'direction', float32 of shape ({doc.width},)")
    if not torch.isfinite(direction).all():
        raise ArtifactError(f"{side.name}: direction holds NaN or infinity")
    probe = LinearProbe(direction, doc.bias, doc.hook, doc.position, doc.method.name, dict(doc.method.hyperparameters))
    return SavedProbe(probe, doc.model.spec, doc.model.fingerprint, dict(doc.task), dict(doc.metrics), doc.created,
                      doc.mechkit_version)


def check_model(saved: SavedProbe, model, allow_mismatch: bool = False) -> str:
    """The model's fingerprint; an ArtifactError when it differs from the recorded one."""
    from mechkit.models import fingerprint

    actual = fingerprint(model)
    if actual != saved.model_fingerprint and not allow_mismatch:
        raise ArtifactError(f"the probe was fitted on weights {saved.model_fingerprint[:19]}..., this model is "
                            f"{actual[:19]}...: use the same model (or allow the mismatch explicitly)")
    return actual


@dataclass(frozen=True)
class ProbeCheck:
    """The outcome of :func:`verify_probe`; ``reason`` says why it failed."""

    path: str
    passed: bool
    fingerprint_ok: bool
    recorded: float | None = None
    measured: float | None = None
    tolerance: float = 0.02
    reason: str = ""

    def lines(self) -> list[str]:
        out = [f"{'PASS' if self.passed else 'FAIL'} {self.path}",
               f"  fingerprint: {'matches' if self.fingerprint_ok else 'MISMATCH'}"]
        if self.measured is not None:
            out.append(f"  held-out AUROC: recorded {self.recorded:.4f}, measured {self.measured:.4f}, "
                       f"tolerance ±{self.tolerance:g}")
        if self.reason:
            out.append(f"  {self.reason}")
        return out


def verify_probe(path: str | os.PathLike, model=None, *, device: str | None = None, tolerance: float = 0.02,
                 allow_fingerprint_mismatch: bool = False, n_boot: int = 200) -> ProbeCheck:
    """Load the probe and its model (from the recorded spec unless ``model`` is given), compare
    fingerprints, regenerate the held-out prompts the artifact records (``task.test``: a task's
    generator arguments, or a labelled file beside the artifact with its sha256 and split seed,
    see :func:`mechkit.probes.data.recorded_rows`) and re-measure the AUROC
    (``metrics.test.auroc``) within ``tolerance``."""
    from mechkit.models import fingerprint, load_model
    from mechkit.probes.activations import Labelled, collect
    from mechkit.probes.evaluate import evaluate_probe
    from mechkit.tasks import regenerate

    saved = load_probe(path)
    model = load_model(saved.model_spec, device=device) if model is None else model
    fp_ok = fingerprint(model) == saved.model_fingerprint
    if not fp_ok and not allow_fingerprint_mismatch:
        return ProbeCheck(str(path), False, False, reason="the model's weights differ from the probe's")
    test, recorded = saved.task.get("test"), (saved.metrics.get("test") or {}).get("auroc")
    if not isinstance(test, dict) or not isinstance(recorded, (int, float)):
        return ProbeCheck(str(path), False, fp_ok, reason="nothing to re-measure: the artifact records no task.test "
                          "and metrics.test.auroc")
    if "source" in test:  # labelled texts from a file copied beside the artifact
        from mechkit.errors import MechkitError
        from mechkit.probes.data import recorded_rows

        try:
            data = recorded_rows(Path(path), test, model, saved.probe.position)
        except MechkitError as err:
            return ProbeCheck(str(path), False, fp_ok, reason=f"cannot re-read the held-out prompts: {err}")
    else:
        data = Labelled.from_pairs(regenerate(test, model), position=saved.probe.position)
    acts = collect(model, data, [saved.probe.hook], progress=False)[saved.probe.hook]
    measured = evaluate_probe(saved.probe, acts, data.labels, n_boot=n_boot).auroc
    ok = abs(measured - recorded) <= tolerance
    return ProbeCheck(str(path), ok and (fp_ok or allow_fingerprint_mismatch), fp_ok, float(recorded), measured,
                      tolerance, "" if ok else "the held-out AUROC moved beyond the tolerance")
