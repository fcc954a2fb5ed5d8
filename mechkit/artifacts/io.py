"""Save and load circuits as ``mechkit.circuit/1`` JSON (+ a safetensors sidecar for big graphs).

>>> save_circuit(circuit, "chekhov.circuit.json")       # doctest: +SKIP
>>> load_circuit("chekhov.circuit.json").edges[:2]      # doctest: +SKIP
[Edge(src='L0H1', dst='L1H0', qkv='k'), Edge(src='L1H0', dst='logits', qkv=None)]

The JSON is indented with a stable key order and one edge per line, so two artifacts diff
line by line. Graphs with more than 5,000 edges keep their names in the JSON and their scores
and in-circuit flags in a safetensors sidecar next to it, named after the artifact's full file
name and the sidecar's content (``x.circuit.json.<sha256 prefix>.scores.safetensors``), so two
artifacts never share one; the sidecar's sha256 is recorded in the JSON.

Saving is atomic, the JSON + sidecar pair included: everything is serialised in memory; the
new sidecar is written to a temporary file, fsynced and renamed to its own (new) name; then the
JSON is written the same way and renamed over the old one; only then is the old sidecar
removed. A save interrupted at any point (even SIGKILL) leaves either the old artifact or the
new one loadable; the next save removes what an interrupted one left behind.

Loading never executes code (JSON and safetensors only), refuses anything that is not a regular
file (a FIFO, a device) before opening it, checks the size while streaming the file in (no more
than 512 MiB, no run of over 1 MiB without a string quote, no more than 1 MiB of escapes) before
any JSON is parsed, and turns any corrupted or hostile input into an
:class:`~mechkit.errors.ArtifactError` naming the field and what is wrong. An artifact only
references files next to it: its sidecar and ``task.source`` are plain file names, and an
``organism:`` model spec names an organism, not a path.
"""

import hashlib
import json
import os
import re
import stat
import tempfile
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import compress, repeat
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mechkit._types import Circuit, Edge, Faithfulness, Node, _node_order
from mechkit.artifacts.schema import (
    FLOAT32_MAX,
    MAX_EDGES,
    MAX_NAME,
    SCHEMA_VERSION,
    SIDECAR_THRESHOLD,
    CircuitDocument,
    Sidecar,
    first_error,
    plain_file_name,
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


def _base_name(source: str) -> str:
    """The last component of a path written with / or \\ separators."""
    return re.split(r"[/\\]", source.rstrip("/\\"))[-1] or source


def graph_nodes(circuit: Circuit) -> list[str]:
    """Every node of the circuit's graph: edge endpoints and scored nodes, in layer order."""
    names = set(circuit.node_scores)
    for e in circuit.edge_names:
        edge = Edge.parse(e)
        names.update((edge.src, edge.dst))
    return sorted(names, key=_node_order)


def _sidecar_stem(path: str | os.PathLike) -> str:
    """The artifact's file name as the start of its sidecars' names (letters, digits, ``_.-``)."""
    name = Path(path).name
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    if stem != name or len(stem) > 120:  # keep two different names from mapping to one stem
        stem = stem[:100] + "-" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return stem


def sidecar_name(path: str | os.PathLike, sha256: str) -> str:
    """The sidecar of the artifact at ``path`` whose bytes have this sha256:
    ``<artifact file name>.<first 16 hex digits>.scores.safetensors``."""
    return f"{_sidecar_stem(path)}.{sha256[:16]}.scores.safetensors"


def _own_sidecars(path: Path) -> re.Pattern:
    return re.compile(re.escape(_sidecar_stem(path)) + r"\.[0-9a-f]{16}\.scores\.safetensors")


def to_document(
    circuit: Circuit, sidecar: str | Callable[[str], str] | None = None
) -> tuple[dict[str, Any], bytes | None]:
    """The artifact as a plain dict (validated), plus the sidecar bytes when ``sidecar`` names one
    (a file name, or a function of the sidecar's sha256 giving its name).

    A ``task.source`` prompt file is recorded by its file name only: a shared artifact can only
    reference files next to it."""
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
    if isinstance(task.get("source"), str) and task["source"]:
        task["source"] = _base_name(task["source"])
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
        digest = hashlib.sha256(blob).hexdigest()
        edges["names"] = list(circuit.edge_names)
        edges["sidecar"] = {"file": sidecar(digest) if callable(sidecar) else sidecar, "sha256": digest}
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


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.mechkit-"


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


def _checkpoint(stage: str) -> None:
    """Called between the steps of a save (tests interrupt a save here)."""


def _remove_leftovers(path: Path, keep: str | None, sidecars: re.Pattern | None = None) -> None:
    """This artifact's sidecars other than ``keep`` and temporary files of interrupted saves.
    ``sidecars``: what its sidecars are named (default: a circuit's score files)."""
    sidecars = sidecars or _own_sidecars(path)
    temps = re.compile(re.escape(_temp_prefix(path)) + r"[A-Za-z0-9_]+\.tmp")
    try:
        names = os.listdir(path.parent)
    except OSError:
        return
    for name in names:
        if name != keep and (sidecars.fullmatch(name) or temps.fullmatch(name)):
            try:
                (path.parent / name).unlink()
            except (FileNotFoundError, IsADirectoryError, PermissionError):
                pass


def save_circuit(circuit: Circuit, path: str | os.PathLike, *, sidecar: bool | None = None) -> Path:
    """Write ``circuit`` to ``path`` atomically; returns the path.

    ``sidecar``: None puts scores in a sidecar when the graph has more than 5,000 edges;
    True or False forces it on or off. Steps: new sidecar (temporary file, fsync, rename to its
    content-addressed name), then the JSON (temporary file, fsync, rename over ``path``), then
    the old sidecar and anything an interrupted save left behind is removed.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise ArtifactError(f"cannot save to {path}: directory {path.parent} does not exist; create it first")
    if path.is_dir():
        raise ArtifactError(f"cannot save to {path}: it is a directory; give a file name such as NAME.circuit.json")
    use_sidecar = len(circuit.edge_names) > SIDECAR_THRESHOLD if sidecar is None else sidecar
    doc, blob = to_document(circuit, (lambda digest: sidecar_name(path, digest)) if use_sidecar else None)
    text = render(doc).encode()
    directory, prefix = path.parent, _temp_prefix(path)
    side = directory / doc["edges"]["sidecar"]["file"] if blob is not None else None
    pending: list[Path] = []
    try:
        if blob is not None:
            pending.append(_write_temp(directory, blob, prefix, _file_mode(path)))
            _checkpoint("sidecar-temp-written")
            os.replace(pending[-1], side)
            pending.pop()
            _fsync_dir(directory)  # the sidecar is in place before the JSON that names it
            _checkpoint("sidecar-renamed")
        pending.append(_write_temp(directory, text, prefix, _file_mode(path)))
        _checkpoint("json-temp-written")
        os.replace(pending[-1], path)
        pending.pop()
        _fsync_dir(directory)
        _checkpoint("json-renamed")
    finally:
        for t in pending:
            t.unlink(missing_ok=True)
    _remove_leftovers(path, side.name if side is not None else None)
    _fsync_dir(directory)
    return path


# ---------------------------------------------------------------- reading files

MAX_QUOTE_GAP = 1 << 20  # bytes a JSON artifact may hold between two '"' (bounds every string and number)
MAX_ESCAPES = 1 << 20  # backslashes a JSON artifact may hold
_READ_CHUNK = 8 << 20
_SCAN_BLOCK = 64 << 10

_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
)


def _regular_file(path: Path, what: str) -> os.stat_result:
    """``stat`` (following links) and refuse anything but a regular file, without opening it."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise ArtifactError(f"{what} {path} does not exist") from None
    except ValueError:
        raise ArtifactError(f"{what} {str(path)!r} is not a valid path") from None
    except OSError as err:
        raise ArtifactError(f"cannot read {what} {path}: {err.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ArtifactError(f"{what} {path} is a directory, not a file")
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a regular file")
        raise ArtifactError(f"{what} {path} is {kind}, not a regular file: give the path of a saved file")
    return st


class _JsonScan:
    """Bounds checked on the raw bytes as they stream in, before any JSON is parsed."""

    def __init__(self, path: Path, what: str):
        self.path, self.what, self.last_quote, self.escapes = path, what, -1, 0

    def _too_long(self) -> ArtifactError:
        return ArtifactError(f"{self.what} {self.path} holds a single value over {MAX_QUOTE_GAP >> 20} MiB long "
                             "(no string quote in that stretch): not a mechkit artifact, refused before parsing")

    def feed(self, buf: bytearray, start: int, end: int) -> None:
        self.escapes += buf.count(b"\\", start, end)
        if self.escapes > MAX_ESCAPES:
            raise ArtifactError(f"{self.what} {self.path} holds more than {MAX_ESCAPES:,} escape characters: "
                                "not a mechkit artifact, refused before parsing")
        for s in range(start, end, _SCAN_BLOCK):
            e = min(s + _SCAN_BLOCK, end)
            first = buf.find(b'"', s, e)
            if first < 0:
                if e - self.last_quote > MAX_QUOTE_GAP:
                    raise self._too_long()
                continue
            if first - self.last_quote > MAX_QUOTE_GAP:  # gaps inside one block are shorter than a block
                raise self._too_long()
            self.last_quote = buf.rfind(b'"', s, e)

    def finish(self, end: int) -> None:
        if end - self.last_quote > MAX_QUOTE_GAP:
            raise self._too_long()


def _read_bounded(path: Path, what: str, *, json_text: bool = False, limit: int = MAX_FILE_BYTES) -> bytearray:
    """The bytes of a regular file of at most ``limit`` bytes. FIFOs, devices and oversized
    files are refused from ``stat`` before opening; ``json_text`` adds :class:`_JsonScan`'s
    bounds, checked chunk by chunk while reading."""
    path = Path(path)
    st = _regular_file(path, what)
    if st.st_size > limit:
        raise ArtifactError(f"{what} {path} is {st.st_size:,} bytes, larger than {limit >> 20} MiB: refused before reading")
    try:  # O_NONBLOCK: a file swapped for a FIFO after the stat above cannot block the open
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as err:
        raise ArtifactError(f"cannot read {what} {path}: {err.strerror}") from None
    scan = _JsonScan(path, what) if json_text else None
    buf = bytearray()  # grows with what was read: a refused file costs only the part read so far
    with open(fd, "rb", buffering=0) as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ArtifactError(f"{what} {path} is not a regular file: give the path of a saved file")
        try:
            while chunk := f.read(_READ_CHUNK):
                if len(buf) + len(chunk) > limit:
                    raise ArtifactError(f"{what} {path} grew past {limit >> 20} MiB while it was read: refused")
                start = len(buf)
                buf += chunk
                del chunk
                if scan is not None:
                    scan.feed(buf, start, len(buf))
        except OSError as err:
            raise ArtifactError(f"cannot read {what} {path}: {err.strerror}") from None
    if scan is not None:
        scan.finish(len(buf))
    return buf


# ---------------------------------------------------------------- parsing

_EDGE_ROW = type("_EdgeRow", (), {"__repr__": lambda self: "<edge record>"})()
FAST_MESSAGE_EDGES = 100_000  # above this many edges a bad edge is reported by the fast checks alone


class _Rows:
    """Inline edge records (``{"name": str, "score": number, "in_circuit": bool}``, keys in that
    order) collected as three compact columns while JSON is parsed; each record becomes ``_EDGE_ROW``."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.scores = array("d")
        self.flags = bytearray()

    def hook(self) -> Callable[[list[tuple[str, Any]]], Any]:
        add_name, add_score, add_flag = self.names.append, self.scores.append, self.flags.append

        def object_pairs(pairs: list[tuple[str, Any]]) -> Any:
            if len(pairs) == 3:
                (k0, v0), (k1, v1), (k2, v2) = pairs
                if (k0 == "name" and k1 == "score" and k2 == "in_circuit" and type(v0) is str
                        and type(v2) is bool and (type(v1) is float or type(v1) is int)):
                    try:
                        add_score(v1)
                    except OverflowError:  # an integer beyond float range: left for the schema to reject
                        pass
                    else:
                        add_name(v0)
                        add_flag(v2)
                        return _EDGE_ROW
            out = dict(pairs)
            if len(out) != len(pairs):
                seen: set[str] = set()
                dup = next(k for k, _ in pairs if k in seen or seen.add(k))
                raise ValueError(f"key {dup!r} appears twice in one object")
            return out

        return object_pairs

    def restore(self, value: Any) -> Any:
        """``value`` with every ``_EDGE_ROW`` turned back into its dict, in document order."""
        rows = iter(zip(self.names, self.scores, self.flags))

        def walk(v: Any) -> Any:
            if v is _EDGE_ROW:
                name, score, flag = next(rows)
                return {"name": name, "score": score, "in_circuit": bool(flag)}
            if isinstance(v, dict):
                return {k: walk(x) for k, x in v.items()}
            if isinstance(v, list):
                return [walk(x) for x in v]
            return v

        return walk(value) if self.names else value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed: numbers must be finite")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"key {k!r} appears twice in one object")
        out[k] = v
    return out


def _check_depth(value: Any, skip: tuple[Any, ...] = ()) -> None:
    """Nesting at most MAX_RAW_DEPTH; the lists in ``skip`` (flat edge lists) are not walked."""
    stack = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        if depth > MAX_RAW_DEPTH:
            raise ArtifactError(f"nested deeper than {MAX_RAW_DEPTH} levels: not a mechkit circuit artifact")
        if isinstance(v, dict):
            stack.extend((x, depth + 1) for x in v.values())
        elif isinstance(v, list) and not any(v is s for s in skip):
            stack.extend((x, depth + 1) for x in v)


def _decode(data: bytes | bytearray, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ArtifactError(f"{where}: not UTF-8 text (byte {err.start}): a binary or corrupted file") from None


def _parse_json(text: str, where: str, rows: _Rows) -> dict[str, Any]:
    try:
        raw = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=rows.hook())
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{where}: invalid JSON at line {err.lineno} column {err.colno}: {err.msg}") from None
    except RecursionError:
        raise ArtifactError(f"{where}: JSON nested too deeply: not a mechkit circuit artifact") from None
    except ValueError as err:
        raise ArtifactError(f"{where}: invalid JSON: {str(err).splitlines()[0]}") from None
    del text
    if not isinstance(raw, dict):
        raise ArtifactError(f"{where}: top level is a JSON {type(raw).__name__}, expected an object")
    schema = raw.get("schema")
    if schema != SCHEMA_VERSION:
        raise ArtifactError(
            f"{where}: unknown schema {str(schema)[:80]!r}; this mechkit reads {SCHEMA_VERSION!r} (upgrade mechkit?)"
        )
    return raw


def _validate(raw: dict[str, Any], where: str) -> CircuitDocument:
    try:
        return CircuitDocument.model_validate(raw)
    except ValueError as err:
        raise ArtifactError(f"{where}: {first_error(err)}") from None
    except RecursionError:
        raise ArtifactError(f"{where}: nested too deeply") from None


def parse_document(data: bytes, where: str = "artifact") -> CircuitDocument:
    """Bytes of a JSON artifact to a validated document; every failure is an ArtifactError."""
    rows = _Rows()
    raw = _parse_json(_decode(data, where), where, rows)
    try:
        _check_depth(raw)
    except ArtifactError as err:
        raise ArtifactError(f"{where}: {err}") from None
    return _validate(rows.restore(raw), where)


@dataclass(frozen=True)
class _EdgeColumns:
    """The ``edges`` part of an artifact, checked by the fast path (columns, no per-edge objects)."""

    names: list[str]
    count: int
    n_in_circuit: int
    scores: np.ndarray | None = None  # float32, inline layout
    flags: bytearray | None = None  # inline layout, 0/1
    sidecar: Sidecar | None = None


class _Invalid(Exception):
    pass


def _split_rest(rest: str) -> tuple[str, str | None]:
    if len(rest) > 3 and rest[-1] == ">" and rest[-3] == "<":
        return rest[:-3], rest[-2]
    return rest, None


def _check_edge_names(names: list[str], known: set[str], field: str) -> None:
    """What ``Edge.parse`` and the document's node check require of every name, done per distinct
    sender and per distinct receiver (with its <q|k|v>) rather than per edge."""
    if names and (min(map(len, names)) < 1 or max(map(len, names)) > 2 * MAX_NAME + 8):
        bad = next(i for i, n in enumerate(names) if not 1 <= len(n) <= 2 * MAX_NAME + 8)
        raise _Invalid(f"{field}.{bad}: edge name of {len(names[bad])} characters")
    good_src: set[str] = set()
    good_rest: set[str] = set()

    def bad_name(i: int, why: str) -> _Invalid:
        try:
            Edge.parse(names[i])
        except HookNameError as err:
            why = str(err)
        return _Invalid(f"{field}.{i}: {why}")

    step = 1 << 16
    for start in range(0, len(names), step):
        chunk = names[start : start + step]
        parts = list(map(str.partition, chunk, repeat("->")))
        if set(map(itemgetter(1), parts)) != {"->"}:
            raise bad_name(start + next(i for i, p in enumerate(parts) if not p[1]), "bad edge name")
        for src in set(map(itemgetter(0), parts)) - good_src:
            try:
                node = Node.parse(src)
            except HookNameError:
                node = None
            if node is None or node.kind == "logits" or src not in known:
                i = start + next(i for i, p in enumerate(parts) if p[0] == src)
                if node is not None and node.kind != "logits":
                    raise _Invalid(f"edges: {names[i]!r} uses node {src!r}, which is not in nodes")
                raise bad_name(i, "bad edge name")
            good_src.add(src)
        for rest in set(map(itemgetter(2), parts)) - good_rest:
            dst, qkv = _split_rest(rest)
            try:
                node = Node.parse(dst)
            except HookNameError:
                node = None
            ok = node is not None and node.kind != "embed" and (node.kind == "head") == (qkv is not None)
            if not ok or (qkv is not None and qkv not in "qkv") or dst not in known:
                i = start + next(i for i, p in enumerate(parts) if p[2] == rest)
                if ok and qkv in (None, "q", "k", "v"):
                    raise _Invalid(f"edges: {names[i]!r} uses node {dst!r}, which is not in nodes")
                raise bad_name(i, "bad edge name")
            good_rest.add(rest)
    if len(set(names)) != len(names):
        raise _Invalid("edges: an edge is listed twice")


def _endpoints(names: list[str], flags: bytes | bytearray) -> set[str]:
    """Nodes touched by the flagged edges (names already checked)."""
    parts = list(map(str.partition, compress(names, flags), repeat("->")))
    out = set(map(itemgetter(0), parts))
    out.update(_split_rest(rest)[0] for rest in set(map(itemgetter(2), parts)))
    return out


def _fast_edges(edges: dict[str, Any], rows: _Rows, known: set[str]) -> _EdgeColumns:
    """The checks of :class:`~mechkit.artifacts.schema.Edges` and the document's edge checks, on columns."""
    extra = sorted(set(edges) - {"count", "n_in_circuit", "items", "names", "sidecar"})
    if extra:
        raise _Invalid(f"edges.{extra[0]}: Extra inputs are not permitted")
    count, n_in = edges.get("count"), edges.get("n_in_circuit")
    for key, v in (("count", count), ("n_in_circuit", n_in)):
        if type(v) is not int or not 0 <= v <= MAX_EDGES:
            raise _Invalid(f"edges.{key}: must be a whole number from 0 to {MAX_EDGES:,}")
    items, names_in = edges.get("items"), edges.get("names")
    if (items is None) == (names_in is None):
        raise _Invalid("edges: give either items (inline scores) or names with a sidecar, not both or neither")
    if (names_in is None) != (edges.get("sidecar") is None):
        raise _Invalid("edges: names and sidecar go together")
    if items is not None:
        names, field = rows.names, "edges.items"
        if len(names) > MAX_EDGES:
            raise _Invalid(f"edges.items: more than {MAX_EDGES:,} edges")
        scores = np.frombuffer(rows.scores, dtype=np.float64)
        bad = ~(np.abs(scores) <= FLOAT32_MAX)
        if bad.any():
            raise _Invalid(f"edges.items.{int(bad.argmax())}.score: score overflows float32 (|score| must be below 3.4e38)")
        flags = rows.flags
        if sum(flags) != n_in:
            raise _Invalid("edges: n_in_circuit does not match the in_circuit flags")
        sidecar = None
    else:
        names, field, scores, flags = names_in, "edges.names", None, None
        if type(names) is not list or set(map(type, names)) - {str} or len(names) > MAX_EDGES:
            raise _Invalid("edges.names: must be a list of at most 5,000,000 edge names")
        try:
            sidecar = Sidecar.model_validate(edges["sidecar"])
        except ValueError as err:
            raise _Invalid(f"edges.sidecar.{first_error(err)}") from None
    if len(names) != count:
        raise _Invalid(f"edges: count is {count} but {len(names)} edges are listed")
    _check_edge_names(names, known, field)
    return _EdgeColumns(names, count, n_in, None if scores is None else scores.astype(np.float32), flags, sidecar)


def _parse(text: str, where: str) -> tuple[CircuitDocument, _EdgeColumns | None]:
    """Like :func:`parse_document` (on decoded text), but the edges of a well-formed artifact come
    back as columns (fast and lean for millions of edges); the document's own ``edges`` is then a stub."""
    rows = _Rows()
    raw = _parse_json(text, where, rows)
    del text
    edges = raw.get("edges")
    items = edges.get("items") if isinstance(edges, dict) else None
    names = edges.get("names") if isinstance(edges, dict) else None
    fast = isinstance(edges, dict) and (
        (type(items) is list and len(items) == len(rows.names) == items.count(_EDGE_ROW) and names is None)
        or (type(names) is list and not rows.names and items is None and all(type(n) is str for n in names))
    )
    try:
        _check_depth(raw, skip=(items, names) if fast else ())
    except ArtifactError as err:
        raise ArtifactError(f"{where}: {err}") from None
    if not fast:
        return _validate(rows.restore(raw), where), None
    rest = _validate({**raw, "edges": {"count": 0, "n_in_circuit": 0, "items": []}}, where)
    try:
        return rest, _fast_edges(edges, rows, {n.name for n in rest.nodes})
    except _Invalid as err:
        if max(len(rows.names), len(names or ())) <= FAST_MESSAGE_EDGES:
            _validate(rows.restore(raw), where)  # pydantic's message names the field the same way as always
        raise ArtifactError(f"{where}: {err}") from None


# ---------------------------------------------------------------- document -> Circuit


def beside(artifact: Path, name: str, what: str) -> Path:
    """The file ``name`` next to ``artifact``: a plain file name (no directories, not ``..``) that
    does not lead out of the artifact's directory through a symbolic link."""
    try:
        plain_file_name(name)
    except ValueError as err:
        raise ArtifactError(f"{what}: {err}") from None
    target = artifact.parent / name
    if os.path.islink(target):
        try:
            outside = target.resolve(strict=False).parent != artifact.parent.resolve(strict=False)
        except (OSError, RuntimeError):
            outside = True
        if outside:
            raise ArtifactError(f"{what}: {name!r} is a link leading out of the artifact's directory; "
                                "a shared artifact may only reference files next to it")
    return target


def copy_beside(source: Path, directory: Path, sha256: str | None = None) -> str:
    """Copy the prompt file ``source`` into ``directory``, where an artifact will record it as
    ``task.source``, and return the plain file name to record.

    A regular file of that name holding the same bytes is used as it is (the prompt file may
    already lie there). One holding other bytes is never replaced: the copy is then named after
    its content, ``<stem>.<first 16 hex digits of sha256><suffix>``. The copy is written to a
    temporary file, fsynced and linked to its name, which fails rather than replace a file that
    appeared meanwhile. ``sha256``: what the file held when it was read; a file changed since is
    refused."""
    data = bytes(_read_bounded(source, "prompt file"))
    digest = hashlib.sha256(data).hexdigest()
    if sha256 is not None and digest != sha256:
        raise ArtifactError(f"{source} changed while the circuit was being found (sha256 differs): run again")
    names = (source.name, f"{source.stem}.{digest[:16]}{source.suffix}")
    for name in names:
        target = directory / name
        if os.path.lexists(target):
            if target.is_file() and not target.is_symlink() and _sha256_of(target) == digest:
                return name
            continue
        tmp = _write_temp(directory, data, _temp_prefix(target), _file_mode(target))
        try:
            os.link(tmp, target)
        except FileExistsError:
            continue
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(directory)
        return name
    raise ArtifactError(f"{directory} holds other files named {names[0]} and {names[1]}: move them away, or save elsewhere")


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _load_sidecar(path: Path, sidecar: Sidecar, n: int, n_in_circuit: int) -> tuple[torch.Tensor, torch.Tensor]:
    side = beside(path, sidecar.file, "edges.sidecar.file")
    data = bytes(_read_bounded(side, "sidecar"))
    if hashlib.sha256(data).hexdigest() != sidecar.sha256:
        raise ArtifactError(f"{side.name}: sha256 differs from edges.sidecar.sha256: the sidecar was changed or is from another save")
    from safetensors.torch import load

    try:
        tensors = load(data)
    except Exception as err:  # safetensors raises its own errors on malformed headers
        raise ArtifactError(f"{side.name}: not a valid safetensors file ({str(err).splitlines()[0][:120]})") from None
    if set(tensors) != {"scores", "in_circuit"}:
        raise ArtifactError(f"{side.name}: holds {sorted(tensors)}, expected exactly 'scores' and 'in_circuit'")
    scores, keep = tensors["scores"], tensors["in_circuit"]
    if scores.dtype != torch.float32 or scores.shape != (n,):
        raise ArtifactError(f"{side.name}: scores is {scores.dtype} {tuple(scores.shape)}, expected float32 ({n},)")
    if keep.dtype != torch.uint8 or keep.shape != (n,) or bool((keep > 1).any()):
        raise ArtifactError(f"{side.name}: in_circuit must be uint8 0/1 of shape ({n},)")
    if not torch.isfinite(scores).all():
        raise ArtifactError(f"{side.name}: scores holds NaN or infinity")
    if int(keep.sum()) != n_in_circuit:
        raise ArtifactError(f"{side.name}: {int(keep.sum())} edges in circuit, edges.n_in_circuit says {n_in_circuit}")
    return scores, keep.bool()


def _make_circuit(doc: CircuitDocument, names: tuple[str, ...], scores: torch.Tensor, keep: torch.Tensor,
                  in_nodes: set[str] | None = None) -> Circuit:
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
    if in_nodes is None or not names:
        in_nodes = set(circuit.nodes)
    if flagged != in_nodes:
        odd = sorted(flagged ^ in_nodes, key=_node_order)[0]
        raise ArtifactError(f"nodes: in_circuit of {odd!r} disagrees with the in-circuit edges")
    return circuit


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
        scores, keep = _load_sidecar(path, doc.edges.sidecar, doc.edges.count, doc.edges.n_in_circuit)
    return _make_circuit(doc, names, scores, keep)


def _from_columns(doc: CircuitDocument, edges: _EdgeColumns, path: Path) -> Circuit:
    if edges.sidecar is None:
        scores, flags = torch.from_numpy(edges.scores), edges.flags
        keep = torch.from_numpy(np.frombuffer(flags, dtype=np.uint8).astype(bool))
    else:
        scores, keep = _load_sidecar(path, edges.sidecar, edges.count, edges.n_in_circuit)
        flags = keep.numpy().view(np.uint8).tobytes()
    return _make_circuit(doc, tuple(edges.names), scores, keep, _endpoints(edges.names, flags))


def load_circuit(path: str | os.PathLike) -> Circuit:
    """Read a circuit artifact written by :func:`save_circuit` (or by hand, following the schema)."""
    path = Path(path)
    # no reference to the bytes or the text is kept here: each is freed as soon as it is used up
    doc, edges = _parse(_decode(_read_bounded(path, "circuit artifact", json_text=True), path.name), path.name)
    try:
        return from_document(doc, path) if edges is None else _from_columns(doc, edges, path)
    except ArtifactError as err:
        msg = str(err)
        raise ArtifactError(msg if msg.startswith(path.name) else f"{path.name}: {msg}") from None
    except MechkitError as err:  # ShapeError / HookNameError from the vocabulary
        raise ArtifactError(f"{path.name}: {err}") from None
