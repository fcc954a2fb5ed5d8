"""Probe artifacts: round trip, fingerprint, tampering, atomic re-save."""

import json
import os

import pytest
import torch

from mechkit.errors import ArtifactError
from mechkit.models import fingerprint
from mechkit.probes import load_probe, save_probe
from mechkit.probes.fit import LinearProbe
from mechkit.probes.io import check_model
from tests.conftest import tiny_hooked


@pytest.fixture
def saved(tmp_path):
    model = tiny_hooked()
    probe = LinearProbe(torch.randn(16), 0.25, "blocks.1.hook_resid_post", "last", "logreg", {"l2": 0.001})
    path = save_probe(probe, tmp_path / "p.probe.json", model, model_spec="organism:tiny",
                      task={"test": {"name": "chekhov", "seed": 1, "n": 4, "split": "test"}},
                      metrics={"test": {"auroc": 0.9}})
    return path, probe, model


def test_round_trip_keeps_probe_and_fingerprint(saved):
    path, probe, model = saved
    back = load_probe(path)
    assert torch.equal(back.probe.direction, probe.direction)
    assert (back.probe.bias, back.probe.hook, back.probe.position, back.probe.method) == (0.25, probe.hook, "last", "logreg")
    assert back.probe.hyperparameters == {"l2": 0.001}
    assert back.model_fingerprint == fingerprint(model) and back.model_spec == "organism:tiny"
    assert back.metrics["test"]["auroc"] == 0.9
    assert check_model(back, model) == fingerprint(model)
    with pytest.raises(ArtifactError, match="fitted on weights"):
        check_model(back, tiny_hooked(seed=1))


def test_edited_json_is_refused(saved):
    path = saved[0]
    doc = json.loads(path.read_text())
    doc["bias"] = 3.0
    path.write_text(json.dumps(doc))
    with pytest.raises(ArtifactError, match="edited"):
        load_probe(path)
    doc["extra"] = 1
    path.write_text(json.dumps(doc))
    with pytest.raises(ArtifactError, match="extra"):
        load_probe(path)


def test_changed_or_missing_direction_is_refused(saved):
    path = saved[0]
    side = path.parent / json.loads(path.read_text())["direction"]["file"]
    data = bytearray(side.read_bytes())
    data[-1] ^= 1
    side.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256"):
        load_probe(path)
    side.unlink()
    with pytest.raises(ArtifactError, match="does not exist"):
        load_probe(path)


def test_direction_outside_the_folder_is_refused(saved, tmp_path):
    path = saved[0]
    doc = json.loads(path.read_text())
    doc["direction"]["file"] = "../x.probe.safetensors"
    path.write_text(json.dumps(doc))
    with pytest.raises(ArtifactError):
        load_probe(path)


def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "f.probe.json"
    os.mkfifo(fifo)
    with pytest.raises(ArtifactError, match="FIFO"):
        load_probe(fifo)


def test_resave_replaces_the_direction_file(saved):
    path, probe, model = saved
    first = set(os.listdir(path.parent))
    save_probe(LinearProbe(probe.direction * 2, 0.0, probe.hook), path, model)
    now = set(os.listdir(path.parent))
    assert len(now) == len(first) == 2 and now != first  # the old direction was removed, no temp files left
    assert torch.equal(load_probe(path).probe.direction, probe.direction * 2)
