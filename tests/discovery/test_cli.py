"""``mechkit discover`` on a saved tiny organism."""

import pytest
from typer.testing import CliRunner

import mechkit.cli.discover as cli_discover
from mechkit.cli import app
from tests.discovery.conftest import random_pairs


@pytest.fixture
def fake_data(monkeypatch):
    """--data reads CSVs through mechkit.patching.read_pairs; stand in random pairs for it."""
    import types

    seen = {}

    def read_pairs(path, model):
        seen["path"] = str(path)
        return random_pairs(8, seed=5)

    module = types.SimpleNamespace(read_pairs=read_pairs)
    monkeypatch.setitem(__import__("sys").modules, "mechkit.patching", module)
    return seen


def test_discover_command_prints_and_saves(tiny_organism_dir, fake_data, tmp_path):
    out, data = tmp_path / "out", tmp_path / "pairs.csv"
    data.write_text("clean,corrupted,answer,wrong_answer\nw1 w2,w3 w2,w4,w5\n")  # checked before the model loads
    result = CliRunner().invoke(
        app, ["discover", "organism:tiny", "--data", str(data), "--method", "eap-ig", "--edges", "40%", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert fake_data["path"] == str(data)
    assert "faithfulness" in result.output and "95% CI" in result.output
    try:
        from mechkit.artifacts import load_circuit
    except ImportError:
        assert "not saved" in result.output
        return
    circuit = load_circuit(out / "circuit.json")
    assert circuit.method == "eap-ig" and circuit.model_spec == "organism:tiny"
    assert 0 < int(circuit.in_circuit.sum()) <= int(0.4 * len(circuit.edge_names))
    assert circuit.faithfulness[0].ablation == "resample"


def test_discover_command_needs_one_data_source(tiny_organism_dir):
    from mechkit.errors import DataError

    with pytest.raises(DataError, match="exactly one"):
        cli_discover.load_pairs(None, None, None, 8, 0, "test")
    result = CliRunner().invoke(app, ["discover", "organism:tiny", "--task", "x", "--data", "y.csv"])
    assert result.exit_code != 0 and isinstance(result.exception, DataError)
    result = CliRunner().invoke(app, ["discover", "checkpoint-dir"])  # not an organism: no implied task
    assert result.exit_code != 0 and isinstance(result.exception, DataError)


def test_save_reports_missing_artifacts(monkeypatch, tmp_path):
    monkeypatch.setitem(__import__("sys").modules, "mechkit.artifacts", None)
    assert cli_discover.save(object(), tmp_path) is None
    assert not any(tmp_path.iterdir())  # nothing written without the artifact writer
