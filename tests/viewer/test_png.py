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


def test_deep_model_png_is_a_readable_grid(tmp_path):
    """A 30-layer, 9-head graph (SmolLM2-135M's 123,211 edges) fits one page: the grid layout
    names layers and heads on its axes instead of drawing 62 rows of labelled boxes."""
    import struct

    import matplotlib.image
    import torch

    from tests.artifacts.helpers import graph_edges, make_circuit

    names = graph_edges(30, 9)
    chosen = {"embed", "L0H1", "L9H7", "M14", "L29H8", "logits"}
    keep = torch.tensor([e.split("->")[0] in chosen and e.split("->")[1].split("<")[0] in chosen for e in names])
    out = write_png(make_circuit(n_layers=30, n_heads=9, in_circuit=keep), tmp_path / "deep.png", dpi=100)
    width, height = struct.unpack(">II", out.read_bytes()[16:24])
    assert 600 <= width <= 1400 and 700 <= height <= 1600, (width, height)  # the row-per-kind layout: ~4400 px tall
    pixels = matplotlib.image.imread(out)[..., :3]
    coloured = ((pixels.max(-1) - pixels.min(-1)) > 0.25).sum()  # edges and filled in-circuit nodes
    assert coloured > 2_000
