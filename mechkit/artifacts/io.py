"""Save and load circuits as ``mechkit.circuit/1`` JSON (+ a safetensors sidecar for big graphs).

>>> save_circuit(circuit, "chekhov.circuit.json")       # doctest: +SKIP
>>> load_circuit("chekhov.circuit.json").edges[:2]      # doctest: +SKIP
[Edge(src='L0H1', dst='L1H0', qkv='k'), Edge(src='L1H0', dst='logits', qkv=None)]

The JSON is indented with a stable key order and one edge per line, so two artifacts diff
line by line. Graphs with more than 5,000 edges keep their names in the JSON and their scores
and in-circuit flags in ``<base>.scores.safetensors`` next to it (``base`` is the file name
without ``.circuit.json`` / ``.json``); the sidecar's sha256 is recorded in the JSON.

Saving is atomic: everything is serialised in memory, written to temporary files in the
target directory, fsynced, then moved over the old files with ``os.replace``; a failed save
leaves the old artifact as it was. Loading never executes code (JSON and safetensors only)
and turns any corrupted or hostile input into an :class:`~mechkit.errors.ArtifactError`
naming the field and what is wrong.
"""

import hashlib
import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mechkit._types import Circuit, Edge, Faithfulness, _node_order
from mechkit.artifacts.schema import (
    SCHEMA_VERSION,
    SIDECAR_THRESHOLD,
    CircuitDocument,
    first_error,
)
from mechkit.errors import ArtifactError, HookNameError, MechkitError

MAX_FILE_BYTES = 512 * 1024 * 1024
MAX_RAW_DEPTH = 32


# ---------------------------------------------------------------- Circuit -> document


def _f32(x: float) -> float:
    """The shortest decimal that reads back as the same float32."""
    return float(str(np.float32(x)))


def _plain_json(value: Any, where: str) -> Any:
    """Tuples become lists; anything JSON cannot hold is an error naming the field."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as err:
        raise ArtifactError(f"{where}: cannot be written as JSON ({err}); use plain numbers, strings, lists and dicts") from None


def graph_nodes(circuit: Circuit) -> list[str]:
    """Every node of the circuit's graph: edge endpoints and scored nodes, in layer order."""
    names = set(circuit.node_scores)
    for e in circuit.edge_names:
        edge = Edge.parse(e)
        names.update((edge.src, edge.dst))
    return sorted(names, key=_node_order)


def sidecar_name(path: str | os.PathLike) -> str:
    name = Path(path).name
    for suffix in (".circuit.json", ".json"):
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)] + ".scores.safetensors"
    return name + ".scores.safetensors"


def to_document(circuit: Circuit, sidecar: str | None = None) -> tuple[dict[str, Any], bytes | None]:
    """The artifact as a plain dict (validated), plus the sidecar bytes when ``sidecar`` names one."""
    from mechkit import __version__

    scores = circuit.edge_scores.detach().to("cpu", torch.float32)
    keep = circuit.in_circuit.detach().to("cpu").bool()
    if not torch.isfinite(scores).all():
        bad = circuit.edge_names[int((~torch.isfinite(scores)).nonzero()[0])]
        raise ArtifactError(f"edge_scores: edge {bad!r} has a NaN or infinite score; scores must be finite")
    try:
        nodes_in = set(circuit.nodes)
        all_nodes = graph_nodes(circuit)
    except HookNameError as err:
        raise ArtifactError(f"edge_names: {err}") from None
    task = _plain_json(dict(circuit.task), "task")
    doc: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "mechkit_version": circuit.mechkit_version or __version__,
        "created": circuit.created or datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {"spec": circuit.model_spec, "fingerprint": circuit.model_fingerprint},
        "task": task,
        "method": {
            "name": circuit.method,
            "hyperparameters": _plain_json(dict(circuit.hyperparameters), "hyperparameters"),
        },
        "selection": _plain_json(dict(circuit.selection), "selection"),
        "faithfulness": [
            {k: getattr(f, k) for k in ("ablation", "value", "ci_low", "ci_high", "n_prompts") if getattr(f, k) is not None}
            for f in circuit.faithfulness
        ],
        "nodes": [
            {"name": n, "in_circuit": n in nodes_in}
            | ({"score": float(circuit.node_scores[n])} if n in circuit.node_scores else {})
            for n in all_nodes
        ],
    }
    n = len(circuit.edge_names)
    edges: dict[str, Any] = {"count": n, "n_in_circuit": int(keep.sum())}
    blob = None
    if sidecar is None:
        edges["items"] = [
            {"name": name, "score": _f32(s), "in_circuit": bool(k)}
            for name, s, k in zip(circuit.edge_names, scores.tolist(), keep.tolist())
        ]
    else:
        from safetensors.torch import save

        blob = save({"scores": scores.contiguous(), "in_circuit": keep.to(torch.uint8).contiguous()})
        edges["names"] = list(circuit.edge_names)
        edges["sidecar"] = {"file": sidecar, "sha256": hashlib.sha256(blob).hexdigest()}
    doc["edges"] = edges
    try:
        CircuitDocument.model_validate(doc)
    except ValueError as err:
        raise ArtifactError(f"cannot save circuit: {first_error(err)}") from None
    return doc, blob


_MARK = "\u0000rows\u0000"


def render(doc: dict[str, Any]) -> str:
    """Indented JSON, keys in schema order, one node and one edge per line."""
    rows = {}
    out = json.loads(json.dumps(doc))
    for key, parent in (("nodes", out), ("items", out["edges"]), ("names", out["edges"])):
        if parent.get(key):
            rows[key] = parent[key]
            parent[key] = [_MARK + key]
    text = json.dumps(out, indent=2, ensure_ascii=False, allow_nan=False)
    for key, items in rows.items():
        marker = json.dumps(_MARK + key)
        line = next(ln for ln in text.splitlines() if ln.strip() == marker)
        indent = line[: len(line) - len(line.lstrip())]
        body = (",\n" + indent).join(json.dumps(x, ensure_ascii=False, separators=(", ", ": ")) for x in items)
        text = text.replace(marker, body, 1)
    return text + "\n"


# ---------------------------------------------------------------- atomic writes


def _file_mode(target: Path) -> int:
    """The old file's permissions, or what a plain open() would give a new file (mkstemp uses 0600)."""
    try:
        return target.stat().st_mode & 0o777
    except OSError:
        umask = os.umask(0o022)
        os.umask(umask)
        return 0o666 & ~umask


def _write_temp(directory: Path, data: bytes, prefix: str, mode: int = 0o644) -> Path:
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=prefix, suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_circuit(circuit: Circuit, path: str | os.PathLike, *, sidecar: bool | None = None) -> Path:
    """Write ``circuit`` to ``path`` atomically; returns the path.

    ``sidecar``: None puts scores in a sidecar when the graph has more than 5,000 edges;
    True or False forces it on or off.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise ArtifactError(f"cannot save to {path}: directory {path.parent} does not exist; create it first")
    use_sidecar = len(circuit.edge_names) > SIDECAR_THRESHOLD if sidecar is None else sidecar
    side = path.parent / sidecar_name(path)
    doc, blob = to_document(circuit, side.name if use_sidecar else None)
    text = render(doc).encode()
    temps: list[Path] = []
    try:
        if blob is not None:
            temps.append(_write_temp(path.parent, blob, f".{side.name}.", _file_mode(side)))
        temps.append(_write_temp(path.parent, text, f".{path.name}.", _file_mode(path)))
        if blob is not None:
            os.replace(temps[0], side)
        os.replace(temps[-1], path)
    finally:
        for t in temps:
            t.unlink(missing_ok=True)
    if blob is None and side.exists():
        side.unlink()  # a stale sidecar from an earlier, bigger save of this file
    _fsync_dir(path.parent)
    return path


# ---------------------------------------------------------------- loading


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed: numbers must be finite")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"key {k!r} appears twice in one object")
        out[k] = v
    return out


def _check_depth(value: Any) -> None:
    stack = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        if depth > MAX_RAW_DEPTH:
            raise ArtifactError(f"nested deeper than {MAX_RAW_DEPTH} levels: not a mechkit circuit artifact")
        if isinstance(v, dict):
            stack.extend((x, depth + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, depth + 1) for x in v)


def parse_document(data: bytes, where: str = "artifact") -> CircuitDocument:
    """Bytes of a JSON artifact to a validated document; every failure is an ArtifactError."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ArtifactError(f"{where}: not UTF-8 text (byte {err.start}): a binary or corrupted file") from None
    try:
        raw = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{where}: invalid JSON at line {err.lineno} column {err.colno}: {err.msg}") from None
    except RecursionError:
        raise ArtifactError(f"{where}: JSON nested too deeply: not a mechkit circuit artifact") from None
    except ValueError as err:
        raise ArtifactError(f"{where}: invalid JSON: {str(err).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ArtifactError(f"{where}: top level is a JSON {type(raw).__name__}, expected an object")
    schema = raw.get("schema")
    if schema != SCHEMA_VERSION:
        raise ArtifactError(
            f"{where}: unknown schema {str(schema)[:80]!r}; this mechkit reads {SCHEMA_VERSION!r} (upgrade mechkit?)"
        )
    try:
        _check_depth(raw)
    except ArtifactError as err:
        raise ArtifactError(f"{where}: {err}") from None
    try:
        return CircuitDocument.model_validate(raw)
    except ValueError as err:
        raise ArtifactError(f"{where}: {first_error(err)}") from None
    except RecursionError:
        raise ArtifactError(f"{where}: nested too deeply") from None


def _read_bounded(path: Path, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ArtifactError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise ArtifactError(f"{what} {path} is a directory, not a file") from None
    except OSError as err:
        raise ArtifactError(f"cannot read {what} {path}: {err.strerror}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ArtifactError(f"{what} {path} is larger than {MAX_FILE_BYTES >> 20} MiB")
    return data


def _load_sidecar(path: Path, doc: CircuitDocument) -> tuple[torch.Tensor, torch.Tensor]:
    side = path.parent / doc.edges.sidecar.file
    data = _read_bounded(side, "sidecar")
    if hashlib.sha256(data).hexdigest() != doc.edges.sidecar.sha256:
        raise ArtifactError(f"{side.name}: sha256 differs from edges.sidecar.sha256: the sidecar was changed or is from another save")
    from safetensors.torch import load

    try:
        tensors = load(data)
    except Exception as err:  # safetensors raises its own errors on malformed headers
        raise ArtifactError(f"{side.name}: not a valid safetensors file ({str(err).splitlines()[0][:120]})") from None
    if set(tensors) != {"scores", "in_circuit"}:
        raise ArtifactError(f"{side.name}: holds {sorted(tensors)}, expected exactly 'scores' and 'in_circuit'")
    scores, keep = tensors["scores"], tensors["in_circuit"]
    n = doc.edges.count
    if scores.dtype != torch.float32 or scores.shape != (n,):
        raise ArtifactError(f"{side.name}: scores is {scores.dtype} {tuple(scores.shape)}, expected float32 ({n},)")
    if keep.dtype != torch.uint8 or keep.shape != (n,) or bool((keep > 1).any()):
        raise ArtifactError(f"{side.name}: in_circuit must be uint8 0/1 of shape ({n},)")
    if not torch.isfinite(scores).all():
        raise ArtifactError(f"{side.name}: scores holds NaN or infinity")
    if int(keep.sum()) != doc.edges.n_in_circuit:
        raise ArtifactError(f"{side.name}: {int(keep.sum())} edges in circuit, edges.n_in_circuit says {doc.edges.n_in_circuit}")
    return scores, keep.bool()


def from_document(doc: CircuitDocument, path: Path | None = None) -> Circuit:
    """A validated document (plus its sidecar, read next to ``path``) as a Circuit."""
    if doc.edges.items is not None:
        names = tuple(e.name for e in doc.edges.items)
        scores = torch.tensor([e.score for e in doc.edges.items], dtype=torch.float32)
        keep = torch.tensor([e.in_circuit for e in doc.edges.items], dtype=torch.bool)
    else:
        if path is None:
            raise ArtifactError("edges: scores are in a sidecar; load the artifact from its file")
        names = tuple(doc.edges.names)
        scores, keep = _load_sidecar(path, doc)
    circuit = Circuit(
        model_spec=doc.model.spec,
        model_fingerprint=doc.model.fingerprint,
        task=doc.task.model_dump(exclude_unset=True),
        method=doc.method.name,
        hyperparameters=dict(doc.method.hyperparameters),
        edge_names=names,
        edge_scores=scores.reshape(len(names)),
        in_circuit=keep.reshape(len(names)),
        selection=dict(doc.selection),
        node_scores={n.name: n.score for n in doc.nodes if n.score is not None},
        faithfulness=tuple(Faithfulness(**f.model_dump()) for f in doc.faithfulness),
        created=doc.created,
        mechkit_version=doc.mechkit_version,
    )
    flagged = {n.name for n in doc.nodes if n.in_circuit}
    if flagged != set(circuit.nodes):
        odd = sorted(flagged ^ set(circuit.nodes), key=_node_order)[0]
        raise ArtifactError(f"nodes: in_circuit of {odd!r} disagrees with the in-circuit edges")
    return circuit


def load_circuit(path: str | os.PathLike) -> Circuit:
    """Read a circuit artifact written by :func:`save_circuit` (or by hand, following the schema)."""
    path = Path(path)
    doc = parse_document(_read_bounded(path, "circuit artifact"), path.name)
    try:
        return from_document(doc, path)
    except ArtifactError as err:
        msg = str(err)
        raise ArtifactError(msg if msg.startswith(path.name) else f"{path.name}: {msg}") from None
    except MechkitError as err:  # ShapeError / HookNameError from the vocabulary
        raise ArtifactError(f"{path.name}: {err}") from None
