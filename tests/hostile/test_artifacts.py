"""Hostile circuit artifacts (and EAP-IG graphs) given to ``verify``, ``show``, ``export`` and
``import``, run through the installed console script in a subprocess: each is refused with exit
code 2 and one line on stderr, no traceback, nothing executed, and nothing in the workspace
touched (no file created, changed or removed; earlier outputs intact). The subprocess timeout
only guards against hangs (a FIFO that blocks ``open`` would hang forever without the fix).
"""

import hashlib
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest

from mechkit.artifacts import save_circuit
from mechkit.artifacts.interchange import to_eap_ig
from tests.artifacts.helpers import make_circuit
from tests.console import mechkit

HANG_GUARD = 600  # seconds; only a hang comes near it


class Pwn:
    """Unpickling this would create ``marker``: it must never happen."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class Workspace:
    def __init__(self, path: Path):
        self.path = path
        path.mkdir()
        self.good = save_circuit(make_circuit(), path / "good.circuit.json", sidecar=True)
        earlier = path / "earlier"
        earlier.mkdir()
        for name, text in (("page.html", "<html>earlier</html>"), ("graph.json", '{"earlier": true}'),
                           ("imported.circuit.json", '{"earlier": true}')):
            (earlier / name).write_text(text)
        self.marker = path / "PWNED"

    @property
    def sidecar(self) -> Path:
        return self.path / json.loads(self.good.read_text())["edges"]["sidecar"]["file"]

    def variant(self, name: str, change=None, sidecar: Path | None = None) -> Path:
        """A copy of the good artifact (and its sidecar) named ``name``, its JSON changed by ``change``."""
        doc = json.loads(self.good.read_text())
        if change is not None:
            change(doc)
        out = self.path / name
        out.write_text(json.dumps(doc))
        return out

    def snapshot(self) -> dict[str, tuple]:
        state = {}
        for root, dirs, files in os.walk(self.path):
            for name in dirs + files:
                p = Path(root) / name
                rel = str(p.relative_to(self.path))
                st = os.lstat(p)
                if p.is_symlink():
                    state[rel] = ("link", os.readlink(p))
                elif p.is_file():
                    state[rel] = ("file", hashlib.sha256(p.read_bytes()).hexdigest(), st.st_mtime_ns)
                else:
                    state[rel] = ("other", st.st_mode)
        return state


@pytest.fixture
def ws(tmp_path):
    return Workspace(tmp_path / "ws")


def _refused(ws: Workspace, *args) -> str:
    before = ws.snapshot()
    run = mechkit(*args, cwd=ws.path, timeout=HANG_GUARD)
    line = run.assert_one_line_error(2)
    assert ws.snapshot() == before, f"the workspace changed: {run}"
    assert not ws.marker.exists(), "a pickle was executed"
    return line


def _front_ends(ws: Workspace, artifact: Path) -> list[list]:
    earlier = ws.path / "earlier"
    return [
        ["verify", artifact],
        ["show", artifact, "--html", earlier / "page.html"],
        ["export", artifact, "--to", "eap-ig", "--out", earlier / "graph.json", "--d-model", "16"],
    ]


def _fifo(ws: Workspace, name: str) -> Path:
    p = ws.path / name
    os.mkfifo(p)
    return p


# ---------------------------------------------------------------- hostile artifacts, every front end


def _fifo_artifact(ws):
    return _fifo(ws, "fifo.circuit.json"), "FIFO"


def _fifo_sidecar(ws):
    path = ws.variant("fs.circuit.json")
    side = ws.sidecar
    doc = json.loads(path.read_text())
    fifo = _fifo(ws, "fs.circuit.json.0000000000000000.scores.safetensors")
    doc["edges"]["sidecar"]["file"] = fifo.name
    path.write_text(json.dumps(doc))
    assert side.exists()
    return path, "FIFO"


def _directory(ws):
    d = ws.path / "dir.circuit.json"
    d.mkdir()
    return d, "is a directory"


def _source(value):
    def make(ws):
        return ws.variant("src.circuit.json", lambda d: d["task"].update(source=value)), "not a plain file name"
    return make


def _organism_path(ws):
    return ws.variant("org.circuit.json", lambda d: d["model"].update(spec="organism:../../x")), "not a path"


def _sidecar_escape(ws):
    change = lambda d: d["edges"]["sidecar"].update(file="../x.scores.safetensors")  # noqa: E731
    return ws.variant("side.circuit.json", change), "sidecar"


def _sidecar_link(ws):
    path = ws.variant("link.circuit.json")
    outside = ws.path.parent / "outside"
    outside.mkdir()
    shutil.copy(ws.sidecar, outside / "x.scores.safetensors")
    link = ws.path / "link.circuit.json.1111111111111111.scores.safetensors"
    link.symlink_to(outside / "x.scores.safetensors")
    doc = json.loads(path.read_text())
    doc["edges"]["sidecar"]["file"] = link.name
    path.write_text(json.dumps(doc))
    return path, "link leading out"


def _huge_string(ws):
    p = ws.path / "str.circuit.json"
    p.write_bytes(b'{"schema": "mechkit.circuit/1", "created": "' + b"a" * (3 << 20) + b'"}')
    return p, "over 1 MiB"


def _escape_flood(ws):
    p = ws.path / "esc.circuit.json"
    p.write_bytes(b'{"schema": "mechkit.circuit/1", "created": "' + b'\\"' * ((1 << 20) + 1) + b'"}')
    return p, "escape characters"


def _sparse_huge(ws):
    p = ws.path / "huge.circuit.json"
    with open(p, "wb") as f:
        f.truncate(600 << 20)
    return p, "refused before reading"


def _pickle_artifact(ws):
    p = ws.path / "pickle.circuit.json"
    p.write_bytes(pickle.dumps(Pwn(ws.marker)))
    return p, "not UTF-8"


def _pickle_sidecar(ws):
    blob = pickle.dumps(Pwn(ws.marker))
    side = ws.path / "pk.circuit.json.2222222222222222.scores.safetensors"
    side.write_bytes(blob)
    change = lambda d: d["edges"]["sidecar"].update(file=side.name, sha256=hashlib.sha256(blob).hexdigest())  # noqa: E731
    return ws.variant("pk.circuit.json", change), "not a valid safetensors file"


def _deep(ws):
    p = ws.path / "deep.circuit.json"
    p.write_text("[" * 200_000 + "]" * 200_000)
    return p, "nested too deeply"


HOSTILE = {
    "fifo-artifact": _fifo_artifact,
    "fifo-sidecar": _fifo_sidecar,
    "directory": _directory,
    "source-parent": _source("../../secret.csv"),
    "source-absolute": _source("/etc/passwd"),
    "source-proc": _source("/proc/self/environ"),
    "organism-path": _organism_path,
    "sidecar-parent": _sidecar_escape,
    "sidecar-link-outside": _sidecar_link,
    "huge-string": _huge_string,
    "escape-flood": _escape_flood,
    "sparse-600MiB": _sparse_huge,
    "pickle-artifact": _pickle_artifact,
    "pickle-sidecar": _pickle_sidecar,
    "deep-nesting": _deep,
}


EVERY_FRONT_END = {"fifo-artifact", "fifo-sidecar", "organism-path", "source-absolute", "pickle-sidecar"}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_artifact_is_refused(ws, case):
    """verify refuses each; show and export too for the cases marked (they share the loader)."""
    artifact, reason = HOSTILE[case](ws)
    runs = _front_ends(ws, artifact) if case in EVERY_FRONT_END else _front_ends(ws, artifact)[:1]
    for args in runs:
        line = _refused(ws, *args)
        assert reason in line, line


# ---------------------------------------------------------------- import (EAP-IG graphs)


def _graph(ws) -> dict:
    return to_eap_ig(make_circuit(), d_model=16)


def test_import_duplicate_edge_keys(ws):
    graph = _graph(ws)
    first = next(iter(graph["edges"]))
    text = json.dumps(graph).replace(
        '"edges": {', '"edges": {' + json.dumps(first) + ": " + json.dumps(graph["edges"][first]) + ", ", 1)
    (ws.path / "dup.json").write_text(text)
    line = _refused(ws, "import", ws.path / "dup.json", "--out", ws.path / "earlier" / "imported.circuit.json")
    assert "appears twice" in line


def test_import_two_spellings_of_one_edge(ws):
    graph = _graph(ws)
    name = next(k for k in graph["edges"] if k.startswith("a0.h1"))
    graph["edges"][name.replace("a0.h1", "a00.h1", 1)] = graph["edges"][name]
    (ws.path / "twice.json").write_text(json.dumps(graph))
    line = _refused(ws, "import", ws.path / "twice.json", "--out", ws.path / "earlier" / "imported.circuit.json")
    assert "same edge" in line


def test_import_fifo(ws):
    fifo = _fifo(ws, "graph.json")
    line = _refused(ws, "import", fifo, "--out", ws.path / "new.circuit.json")
    assert "FIFO" in line


def test_import_huge_string(ws):
    p = ws.path / "big.json"
    p.write_bytes(b'{"cfg": "' + b"x" * (3 << 20) + b'"}')
    assert "over 1 MiB" in _refused(ws, "import", p, "--out", ws.path / "new.circuit.json")


def test_import_into_missing_folder_is_refused_before_reading(ws):
    fifo = _fifo(ws, "graph.json")  # would hang if it were read first
    line = _refused(ws, "import", fifo, "--out", ws.path / "missing" / "x.circuit.json")
    assert "does not exist" in line or "FIFO" in line


# ---------------------------------------------------------------- outputs and several files


def test_show_into_missing_folder_is_refused_before_loading(ws):
    fifo = _fifo(ws, "f.circuit.json")
    line = _refused(ws, "show", fifo, "--html", ws.path / "missing" / "page.html")
    assert "does not exist" in line


def test_show_onto_a_folder(ws):
    assert "is a directory" in _refused(ws, "show", ws.good, "--html", ws.path / "earlier")


def test_export_unknown_format(ws):
    assert "unknown export format" in _refused(ws, "export", ws.good, "--to", "onnx", "--out", ws.path / "x.json")


def test_verify_reports_every_hostile_file(ws):
    a, _ = _fifo_artifact(ws)
    b, _ = _organism_path(ws)
    c, _ = _source("/etc/passwd")(ws)
    before = ws.snapshot()
    run = mechkit("verify", a, b, c, cwd=ws.path, timeout=HANG_GUARD)
    lines = [ln for ln in run.stderr.splitlines() if ln.strip()]
    assert run.returncode == 2, run
    assert len(lines) == 3 and all(ln.startswith("error: ") for ln in lines), run
    assert "Traceback" not in run.stdout + run.stderr, run
    assert "0 of 3 circuits verified (3 could not be read)" in run.stdout, run
    assert ws.snapshot() == before
