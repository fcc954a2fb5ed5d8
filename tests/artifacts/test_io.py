"""Save/load round trips, the sidecar, atomic saves, and one-line errors on bad files."""

import json
import os
import re
from pathlib import Path

import pytest
import torch

from mechkit.artifacts import load_circuit, save_circuit
from mechkit.artifacts import io as aio
from mechkit.artifacts.schema import SIDECAR_THRESHOLD
from mechkit.errors import ArtifactError
from tests.artifacts.helpers import assert_same, graph_edges, make_circuit, sidecar_of


def test_round_trip_inline(tmp_path):
    c = make_circuit()
    path = save_circuit(c, tmp_path / "a.circuit.json")
    back = load_circuit(path)
    assert_same(c, back)
    assert back.nodes == c.nodes and back.edges == c.edges
    assert not list(tmp_path.glob("*.safetensors"))
    doc = json.loads(path.read_text())
    assert list(doc)[:4] == ["schema", "mechkit_version", "created", "model"]
    assert doc["edges"]["count"] == len(c.edge_names) and "items" in doc["edges"]


def test_output_is_deterministic_and_one_edge_per_line(tmp_path):
    c = make_circuit()
    a = save_circuit(c, tmp_path / "a.circuit.json").read_text()
    b = save_circuit(c, tmp_path / "b.circuit.json").read_text()
    assert a == b
    edge_lines = [ln for ln in a.splitlines() if '"in_circuit"' in ln and "->" in ln]
    assert len(edge_lines) == len(c.edge_names)


def test_scores_keep_exact_float32_values(tmp_path):
    scores = torch.tensor([0.1, -1e-30, 3.0e38, 1 / 3, -0.0, 123456.789], dtype=torch.float32)
    names = graph_edges(1, 1)[: len(scores)]
    c = make_circuit(n_layers=1, n_heads=1, edge_names=tuple(names), edge_scores=scores,
                     in_circuit=torch.tensor([1, 0, 1, 0, 0, 1], dtype=torch.bool), node_scores={})
    back = load_circuit(save_circuit(c, tmp_path / "x.circuit.json"))
    assert torch.equal(back.edge_scores, scores)
    assert '"score": 0.1,' in (tmp_path / "x.circuit.json").read_text()


def test_sidecar_above_threshold(tmp_path):
    c = make_circuit(n_layers=8, n_heads=8, n_keep=40)
    assert len(c.edge_names) > SIDECAR_THRESHOLD
    path = save_circuit(c, tmp_path / "big.circuit.json")
    side = sidecar_of(path)
    assert side.is_file() and side.name.startswith("big.circuit.json.")
    doc = json.loads(path.read_text())
    import hashlib

    assert doc["edges"]["sidecar"] == {"file": side.name, "sha256": hashlib.sha256(side.read_bytes()).hexdigest()}
    assert_same(c, load_circuit(path))


def test_sidecar_tampering_is_detected(tmp_path):
    c = make_circuit()
    path = save_circuit(c, tmp_path / "s.circuit.json", sidecar=True)
    side = sidecar_of(path)
    data = bytearray(side.read_bytes())
    data[-1] ^= 0xFF
    side.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256 differs"):
        load_circuit(path)
    side.unlink()
    with pytest.raises(ArtifactError, match="does not exist"):
        load_circuit(path)


def test_sidecar_with_wrong_tensors_is_rejected(tmp_path):
    from safetensors.torch import save

    c = make_circuit()
    path = save_circuit(c, tmp_path / "s.circuit.json", sidecar=True)
    blob = save({"scores": torch.zeros(3)})
    sidecar_of(path).write_bytes(blob)
    doc = json.loads(path.read_text())
    import hashlib

    doc["edges"]["sidecar"]["sha256"] = hashlib.sha256(blob).hexdigest()
    path.write_text(json.dumps(doc))
    with pytest.raises(ArtifactError, match="expected exactly 'scores' and 'in_circuit'"):
        load_circuit(path)


def test_sidecar_path_cannot_leave_the_directory(tmp_path):
    path = save_circuit(make_circuit(), tmp_path / "s.circuit.json", sidecar=True)
    doc = json.loads(path.read_text())
    doc["edges"]["sidecar"]["file"] = "../../etc/x.scores.safetensors"
    path.write_text(json.dumps(doc))
    with pytest.raises(ArtifactError, match=r"edges\.sidecar\.file"):
        load_circuit(path)


def test_switching_back_to_inline_removes_stale_sidecar(tmp_path):
    c = make_circuit()
    save_circuit(c, tmp_path / "s.circuit.json", sidecar=True)
    save_circuit(c, tmp_path / "s.circuit.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.circuit.json"]
    assert_same(c, load_circuit(tmp_path / "s.circuit.json"))


def _no_temps(d: Path) -> bool:
    return not [p for p in d.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("where", ["render", "fsync", "replace"])
def test_interrupted_save_keeps_old_file(tmp_path, monkeypatch, where):
    path = save_circuit(make_circuit(seed=0), tmp_path / "a.circuit.json")
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    if where == "render":
        monkeypatch.setattr(aio, "render", boom)
    elif where == "fsync":
        monkeypatch.setattr(aio.os, "fsync", boom)
    else:
        monkeypatch.setattr(aio.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        save_circuit(make_circuit(seed=1), path)
    assert path.read_bytes() == before
    assert _no_temps(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.circuit.json"]


def test_interrupted_write_midway_keeps_old_file(tmp_path, monkeypatch):
    path = save_circuit(make_circuit(seed=0), tmp_path / "a.circuit.json")
    before = path.read_bytes()
    real_fdopen = os.fdopen

    class HalfWriter:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            raise OSError("interrupted")

    monkeypatch.setattr(aio.os, "fdopen", lambda fd, mode: HalfWriter(real_fdopen(fd, mode)))
    with pytest.raises(OSError, match="interrupted"):
        save_circuit(make_circuit(seed=1), path)
    assert path.read_bytes() == before and _no_temps(tmp_path)


def test_non_finite_scores_cannot_be_saved(tmp_path):
    c = make_circuit()
    scores = c.edge_scores.clone()
    scores[3] = float("nan")
    bad = make_circuit(edge_scores=scores)
    with pytest.raises(ArtifactError, match=re.escape(repr(c.edge_names[3]))):
        save_circuit(bad, tmp_path / "x.circuit.json")
    assert not list(tmp_path.iterdir())


def test_unknown_task_key_cannot_be_saved(tmp_path):
    c = make_circuit(task={"name": "ioi", "colour": "red"})
    with pytest.raises(ArtifactError, match=r"task\.colour: Extra inputs are not permitted"):
        save_circuit(c, tmp_path / "x.circuit.json")


def test_non_json_hyperparameters_cannot_be_saved(tmp_path):
    c = make_circuit(hyperparameters={"t": torch.zeros(2)})
    with pytest.raises(ArtifactError, match="hyperparameters: cannot be written as JSON"):
        save_circuit(c, tmp_path / "x.circuit.json")


def test_tuples_in_parameters_become_lists(tmp_path):
    c = make_circuit(hyperparameters={"shape": (1, 2)})
    assert load_circuit(save_circuit(c, tmp_path / "x.circuit.json")).hyperparameters == {"shape": [1, 2]}


def test_created_and_version_filled_in_when_empty(tmp_path):
    from datetime import datetime

    from mechkit import __version__

    back = load_circuit(save_circuit(make_circuit(created="", mechkit_version=""), tmp_path / "x.circuit.json"))
    assert back.mechkit_version == __version__
    assert datetime.fromisoformat(back.created).tzinfo is not None


def test_empty_circuit_round_trips(tmp_path):
    c = make_circuit(edge_names=(), edge_scores=torch.zeros(0), in_circuit=torch.zeros(0, dtype=torch.bool),
                     node_scores={"L0H0": 1.5, "M1": -0.5}, faithfulness=())
    back = load_circuit(save_circuit(c, tmp_path / "x.circuit.json"))
    assert_same(c, back)
    assert back.nodes == ["L0H0", "M1"]


def test_feature_nodes_round_trip(tmp_path):
    names = ("embed->F:blocks.0.hook_resid_post:12", "F:blocks.0.hook_resid_post:12->logits")
    c = make_circuit(edge_names=names, edge_scores=torch.tensor([0.5, -0.25]),
                     in_circuit=torch.tensor([True, True]), node_scores={})
    assert_same(c, load_circuit(save_circuit(c, tmp_path / "f.circuit.json")))


def test_circuit_save_method(tmp_path):
    c = make_circuit()
    c.save(tmp_path / "m.circuit.json")
    assert_same(c, load_circuit(tmp_path / "m.circuit.json"))


def _saved_doc(tmp_path):
    path = save_circuit(make_circuit(), tmp_path / "x.circuit.json")
    return path, json.loads(path.read_text())


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.update(schema="mechkit.circuit/2"), "unknown schema 'mechkit.circuit/2'"),
        (lambda d: d.pop("schema"), "unknown schema 'None'"),
        (lambda d: d.update(colour="red"), "colour: Extra inputs are not permitted"),
        (lambda d: d["model"].pop("fingerprint"), "model.fingerprint: Field required"),
        (lambda d: d["model"].update(fingerprint="md5:00"), "model.fingerprint: String should match pattern"),
        (lambda d: d["edges"]["items"][0].update(score="0.5"), r"edges.items.0.score: Input should be a valid number"),
        (lambda d: d["edges"]["items"][1].update(score=1e300), "edges.items.1.score: .*overflows float32"),
        (lambda d: d["edges"]["items"][2].update(name="embed->L9H9"), "edges.items.2.name: .*need <q>, <k> or <v>"),
        (lambda d: d["edges"]["items"][2].update(name="L7H1->logits"), "uses node 'L7H1', which is not in nodes"),
        (lambda d: d["edges"].update(count=3), "edges: count is 3 but 46 edges are listed"),
        (lambda d: d["edges"]["items"].append(d["edges"]["items"][0]), "edges.*listed"),
        (lambda d: d["nodes"][0].update(name="blah"), "nodes.0.name: bad node name 'blah'"),
        (lambda d: d["nodes"][0].update(in_circuit=1), "nodes.0.in_circuit: Input should be a valid boolean"),
        (lambda d: d["faithfulness"][0].update(ci_low=2.0), "ci_low is above ci_high"),
        (lambda d: d["task"].update(n=-1), "task.n: Input should be greater than or equal to 0"),
        (lambda d: d.update(created="yesterday"), "created: not an ISO 8601 time"),
        (lambda d: d["method"]["hyperparameters"].update(deep=[[[[[[[[[[1]]]]]]]]]]), "nested deeper than 8"),
    ],
)
def test_bad_fields_name_the_field(tmp_path, mutate, message):
    path, doc = _saved_doc(tmp_path)
    mutate(doc)
    path.write_text(json.dumps(doc))
    with pytest.raises(ArtifactError, match=message) as info:
        load_circuit(path)
    assert "\n" not in str(info.value) and str(info.value).startswith("x.circuit.json: ")


def test_node_flags_must_agree_with_edges(tmp_path):
    path, doc = _saved_doc(tmp_path)
    flag = next(n for n in doc["nodes"] if not n["in_circuit"])
    flag["in_circuit"] = True
    path.write_text(json.dumps(doc))
    with pytest.raises(ArtifactError, match=f"in_circuit of '{flag['name']}' disagrees"):
        load_circuit(path)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "invalid JSON at line 1 column 1"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", "not UTF-8 text"),
        (b"[1, 2]", "top level is a JSON list"),
        (b'{"schema": "mechkit.circuit/1", "schema": "x"}', "appears twice"),
        (b'{"schema": "mechkit.circuit/1", "x": NaN}', "NaN is not allowed"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"schema": "mechkit.circuit/1", "x": ' + b"[" * 50 + b"]" * 50 + b"}", "nested deeper than 32"),
    ],
)
def test_corrupted_files(tmp_path, content, message):
    path = tmp_path / "x.circuit.json"
    path.write_bytes(content)
    with pytest.raises(ArtifactError, match=message):
        load_circuit(path)


def test_truncated_file(tmp_path):
    path, _ = _saved_doc(tmp_path)
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(ArtifactError, match="invalid JSON at line"):
        load_circuit(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        load_circuit(tmp_path / "nope.json")
    with pytest.raises(ArtifactError, match="is a directory"):
        load_circuit(tmp_path)
    with pytest.raises(ArtifactError, match="create it first"):
        save_circuit(make_circuit(), tmp_path / "no" / "x.json")


def test_no_code_executing_loaders_in_mechkit():
    root = Path(__file__).resolve().parents[2] / "mechkit"
    pattern = re.compile(r"\bimport pickle|\bfrom pickle\b|\bpickle\.\w|\bcloudpickle|\bdill\b|torch\.load\b|"
                         r"(?<![\w.])(eval|exec)\s*\(|\bmarshal\.loads|\bshelve\b")
    offenders = []
    for py in sorted(root.rglob("*.py")):
        for i, line in enumerate(py.read_text().splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{py.relative_to(root)}:{i}: {line.strip()}")
    assert offenders == []
    assert pattern.search("x = pickle.loads(b)") and pattern.search("torch.load(f)") and pattern.search("eval(s)")
    assert not pattern.search("model.eval()")


def test_feature_only_circuit_without_task(tmp_path):
    c = make_circuit(task={}, edge_names=(), edge_scores=torch.zeros(0), in_circuit=torch.zeros(0, dtype=torch.bool),
                     node_scores={"F:blocks.1.hook_resid_post:7": 0.5, "F:blocks.1.hook_resid_post:3": -0.25},
                     method="sae-attribution-patching")
    back = load_circuit(save_circuit(c, tmp_path / "f.circuit.json"))
    assert_same(c, back)
    assert back.task == {} and len(back.nodes) == 2


def test_saved_files_get_normal_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        path = save_circuit(make_circuit(), tmp_path / "p.circuit.json", sidecar=True)
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644
    assert sidecar_of(path).stat().st_mode & 0o777 == 0o644
    path.chmod(0o600)
    save_circuit(make_circuit(seed=2), path)
    assert path.stat().st_mode & 0o777 == 0o600  # an existing file keeps its mode
