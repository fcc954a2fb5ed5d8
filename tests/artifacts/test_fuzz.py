"""Fuzzing: mutated artifacts either load (and then re-save to the same circuit) or raise ArtifactError."""

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from mechkit.artifacts import load_circuit, save_circuit
from mechkit.artifacts.interchange import from_eap_ig, to_eap_ig
from mechkit.errors import ArtifactError
from tests.artifacts.helpers import assert_same, make_circuit, sidecar_of

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
WORK = Path(tempfile.mkdtemp(prefix="mechkit-fuzz-"))
BASE = make_circuit(n_layers=1, n_heads=2, n_keep=3)
BASE_PATH = save_circuit(BASE, WORK / "base.circuit.json")
BASE_TEXT = BASE_PATH.read_text()
BASE_DOC = json.loads(BASE_TEXT)
SIDE_PATH = save_circuit(BASE, WORK / "side.circuit.json", sidecar=True)
SIDE_TEXT = SIDE_PATH.read_text()
SIDE_DOC = json.loads(SIDE_TEXT)


def _paths(value, prefix=()):
    """Every path to a value inside the document."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, prefix + (i,))


PATHS = [p for p in _paths(BASE_DOC) if p]
SIDE_PATHS = [p for p in _paths(SIDE_DOC) if p]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1e308, -1e308, 3.5e38, 1e-320, 0.0, -0.0]),
    st.text(max_size=20), st.sampled_from(["embed", "L0H0", "L9H9", "M0", "logits", "embed->L0H0<q>", "L0H0->M0",
                                           "F:x:1", "../etc/passwd", "sha256:" + "0" * 64, "\x00", "a" * 5000]),
)
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                             st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                           max_leaves=12)


def _set(doc, path, value):
    parent = doc
    for p in path[:-1]:
        parent = parent[p]
    parent[path[-1]] = value


def _delete(doc, path):
    parent = doc
    for p in path[:-1]:
        parent = parent[p]
    del parent[path[-1]]


def _check(path: Path):
    """The property: ArtifactError, or a circuit that survives save + load unchanged."""
    try:
        circuit = load_circuit(path)
    except ArtifactError as err:
        assert str(err) and "\n" not in str(err)
        return None
    again = load_circuit(save_circuit(circuit, WORK / "resaved.circuit.json"))
    assert_same(circuit, again)
    return circuit


def _write(doc, name="m.circuit.json", **dump):
    path = WORK / name
    path.write_text(json.dumps(doc, **dump))
    return path


@SETTINGS
@given(st.sampled_from(PATHS), json_values)
def test_replaced_values(path, value):
    doc = json.loads(BASE_TEXT)
    _set(doc, path, value)
    _check(_write(doc))


@SETTINGS
@given(st.sampled_from(PATHS))
def test_deleted_fields(path):
    doc = json.loads(BASE_TEXT)
    _delete(doc, path)
    _check(_write(doc))


def _get(doc, path):
    for p in path:
        doc = doc[p]
    return doc


FREE_FORM = ("params", "hyperparameters", "selection")  # free-form JSON: any keys
SCHEMA_OBJECTS = [p for p in _paths(BASE_DOC) if isinstance(_get(BASE_DOC, p), dict) and not set(p) & set(FREE_FORM)]


@SETTINGS
@given(st.sampled_from(SCHEMA_OBJECTS), st.text(min_size=1, max_size=10), json_values)
def test_unknown_keys(path, key, value):
    doc = json.loads(BASE_TEXT)
    target = _get(doc, path)
    if key in target:
        return
    target[key] = value
    with pytest.raises(ArtifactError):
        load_circuit(_write(doc))


@SETTINGS
@given(st.sampled_from(PATHS), st.integers(min_value=1, max_value=60))
def test_deep_nesting(path, depth):
    doc = json.loads(BASE_TEXT)
    value = 1
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    _set(doc, path, value)
    _check(_write(doc))


@SETTINGS
@given(st.integers(min_value=0, max_value=len(BASE_TEXT.rstrip().encode()) - 1))
def test_truncated(cut):
    path = WORK / "t.circuit.json"
    path.write_bytes(BASE_TEXT.encode()[:cut])
    with pytest.raises(ArtifactError):
        load_circuit(path)


@SETTINGS
@given(st.lists(st.tuples(st.integers(min_value=0), st.binary(min_size=1, max_size=4)), min_size=1, max_size=4))
def test_byte_corruption(edits):
    data = bytearray(BASE_TEXT.encode())
    for pos, chunk in edits:
        pos %= len(data)
        data[pos: pos + len(chunk)] = chunk
    path = WORK / "b.circuit.json"
    path.write_bytes(bytes(data))
    _check(path)


@SETTINGS
@given(st.binary(max_size=300))
def test_random_binary(blob):
    path = WORK / "r.circuit.json"
    path.write_bytes(blob)
    with pytest.raises(ArtifactError):
        load_circuit(path)


@SETTINGS
@given(st.sampled_from(SIDE_PATHS), json_values)
def test_sidecar_documents(path, value):
    doc = json.loads(SIDE_TEXT)
    _set(doc, path, value)
    _check(_write(doc, "side-mutated.circuit.json"))


@SETTINGS
@given(st.binary(min_size=0, max_size=200), st.integers(min_value=0, max_value=10_000))
def test_sidecar_bytes(blob, cut):
    import hashlib

    good = sidecar_of(SIDE_PATH).read_bytes()
    corrupt = good[: cut % (len(good) + 1)] + blob
    work = WORK / "sc"
    work.mkdir(exist_ok=True)
    (work / sidecar_of(SIDE_PATH).name).write_bytes(corrupt)
    doc = json.loads(SIDE_TEXT)
    doc["edges"]["sidecar"]["sha256"] = hashlib.sha256(corrupt).hexdigest()  # a consistent but hostile sidecar
    (work / "side.circuit.json").write_text(json.dumps(doc))
    _check(work / "side.circuit.json")


def test_unmutated_documents_load_equal():
    assert_same(BASE, _check(_write(json.loads(BASE_TEXT))))
    assert_same(BASE, _check(SIDE_PATH))


EAP = to_eap_ig(BASE, d_model=8)
EAP_PATHS = [p for p in _paths(EAP) if p]


@SETTINGS
@given(st.sampled_from(EAP_PATHS), json_values)
def test_eap_ig_import(path, value):
    doc = json.loads(json.dumps(EAP))
    _set(doc, path, value)
    try:
        c = from_eap_ig(doc)
    except ArtifactError as err:
        assert "\n" not in str(err)
        return
    assert_same(c, load_circuit(save_circuit(c, WORK / "eap.circuit.json")))
