"""Atomic JSON + sidecar pairs, non-regular files, references that may not leave the artifact's
directory, streaming size checks, the columnar fast path, verify over many files, EAP-IG duplicates."""

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from mechkit.artifacts import io as aio
from mechkit.artifacts import load_circuit, save_circuit
from mechkit.artifacts import verify as av
from mechkit.artifacts.interchange import read_eap_ig, to_eap_ig
from mechkit.artifacts.verify import verify_circuit
from mechkit.errors import ArtifactError
from tests.artifacts.helpers import FP, assert_same, make_circuit, sidecar_of
from tests.artifacts.test_verify import Fakes

ROOT = Path(__file__).resolve().parents[2]
HANG_GUARD = 120  # seconds; only a hang (a bug) ever reaches it


def _temps(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.endswith(".tmp"))


# ---------------------------------------------------------------- atomic JSON + sidecar


def test_sidecar_names_are_per_artifact_and_per_content(tmp_path):
    a, b = make_circuit(seed=0), make_circuit(seed=1)
    pa = save_circuit(a, tmp_path / "x.circuit.json", sidecar=True)
    pb = save_circuit(b, tmp_path / "x.json", sidecar=True)
    assert sidecar_of(pa) != sidecar_of(pb)
    assert sidecar_of(pa).name.startswith("x.circuit.json.") and sidecar_of(pb).name.startswith("x.json.")
    save_circuit(make_circuit(seed=2), pb, sidecar=True)  # re-saving one leaves the other alone
    assert_same(a, load_circuit(pa))
    assert_same(make_circuit(seed=2), load_circuit(pb))
    assert len(list(tmp_path.glob("*.safetensors"))) == 2


def test_odd_file_names_get_valid_distinct_sidecars(tmp_path):
    one = save_circuit(make_circuit(), tmp_path / "my circuit.json", sidecar=True)
    two = save_circuit(make_circuit(), tmp_path / "my_circuit.json", sidecar=True)
    assert sidecar_of(one) != sidecar_of(two)
    assert_same(make_circuit(), load_circuit(one))


def test_resave_replaces_the_old_sidecar(tmp_path):
    path = save_circuit(make_circuit(seed=0), tmp_path / "a.circuit.json", sidecar=True)
    old = sidecar_of(path)
    save_circuit(make_circuit(seed=1), path, sidecar=True)
    assert not old.exists() and sidecar_of(path).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, sidecar_of(path).name])


KILL = """
import os, signal, sys
from pathlib import Path
from mechkit.artifacts import io as aio
from tests.artifacts.helpers import make_circuit

def stop_here(stage):
    if stage == sys.argv[2]:
        os.kill(os.getpid(), signal.SIGKILL)

aio._checkpoint = stop_here
aio.save_circuit(make_circuit(seed=1), Path(sys.argv[1]), sidecar=True)
"""
STAGES = ["sidecar-temp-written", "sidecar-renamed", "json-temp-written", "json-renamed"]


@pytest.mark.parametrize("stage", STAGES)
def test_sigkill_between_steps_leaves_a_loadable_artifact(tmp_path, stage):
    path = save_circuit(make_circuit(seed=0), tmp_path / "a.circuit.json", sidecar=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", KILL, str(path), stage], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=HANG_GUARD)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    expected = make_circuit(seed=1) if stage == "json-renamed" else make_circuit(seed=0)
    assert_same(expected, load_circuit(path))
    if stage in ("sidecar-renamed", "json-renamed"):  # between the renames: nothing temporary exists
        assert _temps(tmp_path) == []
    # the next save cleans up whatever the killed one left behind
    save_circuit(make_circuit(seed=2), path, sidecar=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, sidecar_of(path).name])
    assert_same(make_circuit(seed=2), load_circuit(path))


def test_failed_sidecar_rename_keeps_old_pair(tmp_path, monkeypatch):
    path = save_circuit(make_circuit(seed=0), tmp_path / "a.circuit.json", sidecar=True)
    before = sorted(p.name for p in tmp_path.iterdir())

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(aio.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        save_circuit(make_circuit(seed=1), path, sidecar=True)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert_same(make_circuit(seed=0), load_circuit(path))


# ---------------------------------------------------------------- non-regular files


def _in_thread(fn):
    """Run fn in a thread; a hang (the bug) fails the test instead of blocking it forever."""
    box = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as err:  # noqa: BLE001 - handed back to the test
            box["error"] = err

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(HANG_GUARD)
    return t.is_alive(), box


def _unblock(fifo: Path) -> None:
    try:  # a reader stuck in open() of the FIFO is released by a writer
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass


def test_fifo_artifact_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "f.circuit.json"
    os.mkfifo(fifo)
    hung, box = _in_thread(lambda: load_circuit(fifo))
    _unblock(fifo)
    assert not hung, "load_circuit blocked on a FIFO"
    assert isinstance(box.get("error"), ArtifactError) and "FIFO" in str(box["error"])


def test_fifo_sidecar_is_refused_without_blocking(tmp_path):
    path = save_circuit(make_circuit(), tmp_path / "s.circuit.json", sidecar=True)
    side = sidecar_of(path)
    side.unlink()
    os.mkfifo(side)
    hung, box = _in_thread(lambda: load_circuit(path))
    _unblock(side)
    assert not hung, "load_circuit blocked on a FIFO sidecar"
    assert isinstance(box.get("error"), ArtifactError) and "not a regular file" in str(box["error"])


def _fake_defaults(monkeypatch, fakes):
    """verify's own prompt-file reading (no injected regenerate), with a fake model and evaluator."""
    monkeypatch.setattr(av, "_defaults", lambda: (fakes.load_model, fakes.regenerate, fakes.evaluate, fakes.fingerprint))


def test_fifo_prompt_file_fails_verify_without_blocking(tmp_path, monkeypatch):
    fifo = tmp_path / "pairs.csv"
    os.mkfifo(fifo)
    path = save_circuit(make_circuit(task={"name": "pairs", "source": "pairs.csv", "n": 16}), tmp_path / "c.circuit.json")
    _fake_defaults(monkeypatch, Fakes())
    hung, box = _in_thread(lambda: verify_circuit(path))
    _unblock(fifo)
    assert not hung, "verify blocked on a FIFO prompt file"
    result = box["value"]
    assert not result.passed and "FIFO" in result.reason


def test_eap_ig_fifo_is_refused(tmp_path):
    fifo = tmp_path / "g.json"
    os.mkfifo(fifo)
    hung, box = _in_thread(lambda: read_eap_ig(fifo))
    _unblock(fifo)
    assert not hung and isinstance(box.get("error"), ArtifactError)


# ---------------------------------------------------------------- references stay next to the artifact


def _edit(path: Path, change) -> Path:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize("source", ["../pairs.csv", "/etc/passwd", "sub/pairs.csv", "..", "a\\b.csv", "/proc/self/environ"])
def test_task_source_must_be_a_plain_file_name(tmp_path, source):
    path = save_circuit(make_circuit(), tmp_path / "c.circuit.json")
    _edit(path, lambda d: d["task"].update(source=source))
    with pytest.raises(ArtifactError, match=r"task\.source: .*not a plain file name.*next to it.*registered task"):
        load_circuit(path)


def test_saving_records_the_prompt_file_by_name(tmp_path):
    c = make_circuit(task={"name": "pairs", "source": str(tmp_path / "data" / "pairs.csv"), "n": 16})
    back = load_circuit(save_circuit(c, tmp_path / "c.circuit.json"))
    assert back.task["source"] == "pairs.csv"


def test_prompt_file_link_leading_outside_is_refused(tmp_path, monkeypatch):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.csv").write_text("clean,corrupted,answer,wrong_answer\n")
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "pairs.csv").symlink_to(outside / "secret.csv")
    path = save_circuit(make_circuit(task={"name": "pairs", "source": "pairs.csv", "n": 16}), shared / "c.circuit.json")
    _fake_defaults(monkeypatch, Fakes())
    result = verify_circuit(path)
    assert not result.passed and "link leading out of the artifact's directory" in result.reason


def test_sidecar_link_leading_outside_is_refused(tmp_path):
    path = save_circuit(make_circuit(), tmp_path / "s.circuit.json", sidecar=True)
    side = sidecar_of(path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    side.rename(elsewhere / side.name)
    side.symlink_to(elsewhere / side.name)
    with pytest.raises(ArtifactError, match="link leading out"):
        load_circuit(path)


@pytest.mark.parametrize("spec", ["organism:../../x", "organism:/etc", "organism:a/b", "organism:", "organism:.."])
def test_organism_spec_may_not_be_a_path(tmp_path, spec):
    path = _edit(save_circuit(make_circuit(), tmp_path / "c.circuit.json"), lambda d: d["model"].update(spec=spec))
    with pytest.raises(ArtifactError, match=r"model\.spec: .*plain name.*not a path"):
        load_circuit(path)
    with pytest.raises(ArtifactError, match="not a path"):
        verify_circuit(path, **Fakes().kw())


# ---------------------------------------------------------------- streaming size checks


def test_oversized_file_is_refused_from_stat_before_reading(tmp_path, monkeypatch):
    path = tmp_path / "big.circuit.json"
    with open(path, "wb") as f:
        f.truncate(aio.MAX_FILE_BYTES + 1)  # sparse: no disk used
    opened = []
    real_open = aio.os.open
    monkeypatch.setattr(aio.os, "open", lambda *a, **k: opened.append(a) or real_open(*a, **k))
    with pytest.raises(ArtifactError, match="larger than 512 MiB: refused before reading"):
        load_circuit(path)
    assert opened == []


def _no_json(monkeypatch):
    def parse(*a, **k):
        raise AssertionError("JSON was parsed")

    monkeypatch.setattr(aio.json, "loads", parse)


def test_huge_string_is_refused_before_parsing(tmp_path, monkeypatch):
    path = tmp_path / "s.circuit.json"
    path.write_bytes(b'{"schema": "mechkit.circuit/1", "created": "' + b"a" * (2 << 20) + b'"}')
    _no_json(monkeypatch)
    with pytest.raises(ArtifactError, match="single value over 1 MiB"):
        load_circuit(path)


def test_huge_number_run_is_refused_before_parsing(tmp_path, monkeypatch):
    path = tmp_path / "n.circuit.json"
    path.write_bytes(b'{"schema": "mechkit.circuit/1", "x": [' + b"1," * (1 << 20) + b'1]}')
    _no_json(monkeypatch)
    with pytest.raises(ArtifactError, match="single value over 1 MiB"):
        load_circuit(path)


def test_escape_flood_is_refused_before_parsing(tmp_path, monkeypatch):
    path = tmp_path / "e.circuit.json"
    path.write_bytes(b'{"schema": "mechkit.circuit/1", "x": "' + b'\\"' * (aio.MAX_ESCAPES + 1) + b'"}')
    _no_json(monkeypatch)
    with pytest.raises(ArtifactError, match="escape characters"):
        load_circuit(path)


def test_long_but_legal_values_still_load(tmp_path):
    c = make_circuit(hyperparameters={"note": "x" * 4000, "ids": list(range(5000))})
    assert_same(c, load_circuit(save_circuit(c, tmp_path / "c.circuit.json")))


# ---------------------------------------------------------------- the columnar fast path


def test_fast_path_used_and_equal_for_both_layouts(tmp_path, monkeypatch):
    c = make_circuit(n_layers=8, n_heads=8, n_keep=40)
    calls = []
    real = aio._fast_edges
    monkeypatch.setattr(aio, "_fast_edges", lambda *a: calls.append(1) or real(*a))
    for sidecar in (False, True):
        assert_same(c, load_circuit(save_circuit(c, tmp_path / f"{sidecar}.circuit.json", sidecar=sidecar)))
    assert len(calls) == 2


def test_hand_written_key_order_takes_the_general_path(tmp_path):
    path = save_circuit(make_circuit(), tmp_path / "c.circuit.json")
    doc = json.loads(path.read_text())
    doc["edges"]["items"] = [{"score": e["score"], "in_circuit": e["in_circuit"], "name": e["name"]}
                             for e in doc["edges"]["items"]]
    path.write_text(json.dumps(doc))
    assert_same(make_circuit(), load_circuit(path))


def test_edge_shaped_object_elsewhere_is_not_taken_for_an_edge(tmp_path):
    c = make_circuit(hyperparameters={"example": {"name": "embed->L0H0<q>", "score": 1.0, "in_circuit": True}})
    assert_same(c, load_circuit(save_circuit(c, tmp_path / "c.circuit.json")))


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda e: e["items"][3].update(name="embed->L9H9"), r"edges\.items\.3: .*need <q>, <k> or <v>"),
        (lambda e: e["items"][3].update(name="embed->L7H1<q>"), "uses node 'L7H1', which is not in nodes"),
        (lambda e: e["items"][3].update(name="logits->M0"), "logits send nothing"),
        (lambda e: e["items"][3].update(name="L0H0-M0"), r"edges\.items\.3: bad edge name"),
        (lambda e: e["items"][3].update(name=e["items"][4]["name"]), "listed twice"),
        (lambda e: e["items"][3].update(score=1e39), r"edges\.items\.3\.score: score overflows float32"),
        (lambda e: e["items"][3].update(score=10**400), r"edges\.items\.3\.score: "),
        (lambda e: e.update(count=3), "count is 3 but 46 edges are listed"),
        (lambda e: e.update(n_in_circuit=0), "n_in_circuit does not match"),
        (lambda e: e.update(count=True), r"edges\.count: must be a whole number"),
        (lambda e: e.update(colour=1), r"edges\.colour: Extra inputs"),
        (lambda e: e.update(names=[]), "not both or neither"),
    ],
)
def test_fast_path_messages(tmp_path, monkeypatch, mutate, message):
    monkeypatch.setattr(aio, "FAST_MESSAGE_EDGES", 0)  # as for a graph of millions of edges
    path = _edit(save_circuit(make_circuit(), tmp_path / "x.circuit.json"), lambda d: mutate(d["edges"]))
    with pytest.raises(ArtifactError, match=message) as info:
        load_circuit(path)
    assert "\n" not in str(info.value) and str(info.value).startswith("x.circuit.json: ")


def test_fast_path_messages_for_names_layout(tmp_path, monkeypatch):
    monkeypatch.setattr(aio, "FAST_MESSAGE_EDGES", 0)
    path = save_circuit(make_circuit(), tmp_path / "x.circuit.json", sidecar=True)
    _edit(path, lambda d: d["edges"]["names"].__setitem__(2, "embed->L0H0"))
    with pytest.raises(ArtifactError, match=r"edges\.names\.2: .*need <q>, <k> or <v>"):
        load_circuit(path)
    _edit(path, lambda d: d["edges"]["sidecar"].update(file="../x.scores.safetensors"))
    with pytest.raises(ArtifactError, match=r"edges\.sidecar\.file"):
        load_circuit(path)


# ---------------------------------------------------------------- verify: every file, exit codes


def _verify_cli(monkeypatch, fakes, *args):
    from mechkit.cli import app

    monkeypatch.setattr(av, "_defaults", lambda: (fakes.load_model, fakes.regenerate, fakes.evaluate, fakes.fingerprint))
    return CliRunner().invoke(app, ["verify", *map(str, args)])


def test_verify_checks_every_file_after_an_unreadable_one(monkeypatch, tmp_path):
    good = save_circuit(make_circuit(), tmp_path / "good.circuit.json")
    broken = tmp_path / "broken.circuit.json"
    broken.write_text("{")
    missing = tmp_path / "missing.circuit.json"
    res = _verify_cli(monkeypatch, Fakes(measured=0.88), broken, missing, good)
    assert f"PASS {good}" in res.output  # checked although earlier files were bad
    assert "broken.circuit.json: invalid JSON" in res.output and "missing.circuit.json does not exist" in res.output
    assert "1 of 3 circuits verified (2 could not be read)" in res.output
    assert res.exit_code == 2  # the only problems were bad input


def test_verify_failed_check_wins_over_bad_input(monkeypatch, tmp_path):
    good = save_circuit(make_circuit(), tmp_path / "good.circuit.json")
    broken = tmp_path / "broken.circuit.json"
    broken.write_text("[]")
    res = _verify_cli(monkeypatch, Fakes(measured=0.1), broken, good)
    assert "FAIL" in res.output and "top level is a JSON list" in res.output
    assert "0 of 2 circuits verified (1 could not be read)" in res.output
    assert res.exit_code == 1


def test_verify_help_states_the_exit_rule():
    from mechkit.cli import app

    out = CliRunner().invoke(app, ["verify", "--help"]).output
    assert "Exit status" in out and "every problem was bad input" in " ".join(out.split())


# ---------------------------------------------------------------- EAP-IG duplicates


def test_eap_ig_duplicate_keys_are_refused(tmp_path):
    graph = to_eap_ig(make_circuit(), d_model=16)
    text = json.dumps(graph)
    first = next(iter(graph["edges"]))
    dup = json.dumps(first) + ": " + json.dumps(graph["edges"][first])
    text = text.replace('"edges": {', '"edges": {' + dup + ", ", 1)
    (tmp_path / "g.json").write_text(text)
    with pytest.raises(ArtifactError, match="appears twice.*each key may appear only once"):
        read_eap_ig(tmp_path / "g.json")


def test_eap_ig_two_spellings_of_one_edge_are_refused(tmp_path):
    graph = to_eap_ig(make_circuit(), d_model=16)
    name = next(k for k in graph["edges"] if k.startswith("a0.h1"))
    graph["edges"][name.replace("a0.h1", "a00.h1", 1)] = graph["edges"][name]
    (tmp_path / "g.json").write_text(json.dumps(graph))
    with pytest.raises(ArtifactError, match="are the same edge"):
        read_eap_ig(tmp_path / "g.json")


def test_eap_ig_import_keeps_fingerprint_argument(tmp_path):
    path = tmp_path / "g.json"
    path.write_text(json.dumps(to_eap_ig(make_circuit(), d_model=16, metadata=False)))
    back = read_eap_ig(path, model_spec="organism:tiny", model_fingerprint=FP)
    assert back.model_fingerprint == FP and torch.equal(back.in_circuit, make_circuit().in_circuit)


# ---------------------------------------------------------------- fast name checks agree with Edge.parse

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from mechkit._types import Edge  # noqa: E402
from mechkit.errors import HookNameError  # noqa: E402

_PIECES = ["embed", "logits", "L0H0", "L0H1", "L1H0", "M0", "M1", "L00H1", "F:blocks.0.hook_resid_post:3", "F:x:1",
           "->", "<q>", "<k>", "<v>", "<x>", "<", ">", "-", ":", "L", "H", "0", "1", " ", "\n", "é", ""]
_KNOWN = {"embed", "logits", "L0H0", "L0H1", "M0", "F:blocks.0.hook_resid_post:3"}


def _slow_ok(names: list[str]) -> bool:
    if len(set(names)) != len(names):
        return False
    for n in names:
        try:
            e = Edge.parse(n)
        except HookNameError:
            return False
        if e.src not in _KNOWN or e.dst not in _KNOWN:
            return False
    return True


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(st.lists(st.one_of(
    st.lists(st.sampled_from(_PIECES), min_size=1, max_size=5).map("".join),
    st.builds("{}->{}{}".format, st.sampled_from(sorted(_KNOWN) + ["L7H7", "M9"]),
              st.sampled_from(sorted(_KNOWN) + ["L1H0", "M1"]), st.sampled_from(["", "<q>", "<k>", "<v>", "<z>"])),
), max_size=6))
def test_fast_edge_name_checks_agree_with_edge_parse(names):
    try:
        aio._check_edge_names(names, _KNOWN, "edges.names")
        fast = True
    except aio._Invalid:
        fast = False
    assert fast == _slow_ok(names), names


def test_huge_string_is_refused_after_reading_little(tmp_path, monkeypatch):
    path = tmp_path / "h.circuit.json"
    with open(path, "wb") as f:
        f.write(b'{"schema": "mechkit.circuit/1", "created": "')
        f.truncate(256 << 20)  # 256 MiB of one string's worth of bytes without a quote (sparse)
    monkeypatch.setattr(aio, "_READ_CHUNK", 256 << 10)
    seen = []
    real_feed = aio._JsonScan.feed
    monkeypatch.setattr(aio._JsonScan, "feed", lambda self, buf, s, e: seen.append(len(buf)) or real_feed(self, buf, s, e))
    with pytest.raises(ArtifactError, match="single value over 1 MiB"):
        load_circuit(path)
    assert max(seen) <= 2 << 20  # refused while streaming, long before the end of the file
