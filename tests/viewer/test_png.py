"""The static circuit figure: a real PNG, drawn from the artifact alone."""

from pathlib import Path

import pytest

from mechkit.artifacts import load_circuit
from mechkit.viewer.png import write_png

CIRCUITS = Path(__file__).resolve().parents[2] / "circuits"


@pytest.mark.parametrize("name", ["chekhov", "wired-induction"])
def test_png_is_written(tmp_path, name):
    circuit = load_circuit(CIRCUITS / f"{name}.circuit.json")
    out = write_png(circuit, tmp_path / f"{name}.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 10_000  # a drawing, not an empty canvas
