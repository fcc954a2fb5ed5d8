"""A shipped circuit against tampered weights: verify fails with the fingerprint error."""

import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from mechkit.cli import app

ROOT = Path(__file__).resolve().parents[2]


def test_tampered_weights_fail_verify(tmp_path, monkeypatch):
    organisms = tmp_path / "organisms"
    shutil.copytree(ROOT / "assets" / "organisms" / "wired-induction", organisms / "wired-induction")
    weights = organisms / "wired-induction" / "model.safetensors"
    tensors = load_file(weights)
    name = next(n for n in sorted(tensors) if ".W_" in n)
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] += 1e-3  # one weight, still a valid file
    save_file(tensors, weights)
    monkeypatch.setenv("MECHKIT_ORGANISMS_DIR", str(organisms))
    circuit = str(ROOT / "circuits" / "wired-induction.circuit.json")

    result = CliRunner().invoke(app, ["verify", circuit])
    assert result.exit_code == 1, result.output
    assert "FAIL" in result.output and "fingerprint" in result.output.lower()

    # untampered weights pass
    monkeypatch.delenv("MECHKIT_ORGANISMS_DIR")
    assert CliRunner().invoke(app, ["verify", circuit]).exit_code == 0
