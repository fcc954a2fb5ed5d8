"""Circuit discovery on the real pretrained model (SmolLM2-135M: 30 layers, GQA, rotary), IOI."""

import pytest
import torch

from mechkit.discovery import attribute
from mechkit.discovery.budget import plan_chunks
from mechkit.discovery.evaluate import faithfulness_curve
from mechkit.discovery.graph import Graph
from mechkit.tasks import task
from tests.console import mechkit


@pytest.fixture(scope="module")
def ioi_pairs(smollm2):
    return task("ioi").generate(6, seed=0, model=smollm2)


def test_graph_is_the_real_model_s(smollm2):
    graph = Graph.from_model(smollm2)
    assert (graph.n_forward, graph.n_backward, graph.n_edges) == (301, 841, 123_211)


def test_chunked_eap_ig_equals_one_chunk_and_integral_is_complete(smollm2, ioi_pairs):
    graph = Graph.from_model(smollm2)
    pos = ioi_pairs.clean.shape[1]
    whole = attribute(smollm2, ioi_pairs, "eap-ig", ig_steps=5, max_memory="64GB")
    # a budget that holds two prompts' data: three chunks
    from mechkit.discovery.budget import _prompt_bytes, _row_bytes

    small = 2 * 2 * max(_row_bytes(smollm2, graph, pos, True), _prompt_bytes(smollm2, graph, pos))
    assert plan_chunks(smollm2, graph, 6, pos, grad=True, max_memory=small).prompts == 2
    chunked = attribute(smollm2, ioi_pairs, "eap-ig", ig_steps=5, max_memory=small)
    scale = whole.scores.abs().max()
    assert scale > 0
    assert (chunked.scores - whole.scores).abs().max() <= 1e-4 * scale
    # integrated gradients is complete: the embedding's edges carry the whole metric change
    assert whole.convergence.relative_error < 0.2, whole.convergence


def test_curve_ends_are_exact(smollm2, ioi_pairs):
    scores = attribute(smollm2, ioi_pairs, "eap", max_memory="64GB")
    curve = faithfulness_curve(smollm2, ioi_pairs, scores, fractions=(0.0, 0.05, 1.0))
    assert curve.faithfulness[0] == pytest.approx(0.0, abs=1e-5)  # no edges: the corrupted run
    assert curve.faithfulness[-1] == pytest.approx(1.0, abs=1e-5)  # every edge: the clean run
    assert curve.n_edges[-1] == int((scores.scores != 0).sum())  # zero-score edges are never selected


def test_discover_cli_on_the_real_model(tmp_path):
    out = tmp_path / "ioi"
    run = mechkit("discover", "smollm2-135m", "--task", "ioi", "--n", "4", "--method", "eap",
                  "--edges", "2%", "--out", out)
    assert run.returncode == 0, run
    from mechkit.artifacts import load_circuit

    circuit = load_circuit(out / "circuit.json")
    assert circuit.model_spec == "smollm2-135m" and len(circuit.edge_names) == 123_211
    assert 0 < int(circuit.in_circuit.sum()) <= int(0.02 * 123_211)
    assert torch.isfinite(circuit.edge_scores).all()
