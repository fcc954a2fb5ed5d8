"""``mechkit discover`` on a saved tiny organism."""

import pytest
import torch
from typer.testing import CliRunner

import mechkit.cli.discover as cli_discover
from mechkit.cli import app
from tests.discovery.conftest import random_pairs


@pytest.fixture
def fake_data(monkeypatch):
    """--data reads CSVs through mechkit.patching.read_pairs; stand in random pairs for it."""
    import mechkit.patching

    seen = {}

    def read_pairs(path, model):
        seen["path"] = str(path)
        return random_pairs(8, seed=5)

    monkeypatch.setattr(mechkit.patching, "read_pairs", read_pairs)
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


def test_budgets_never_select_zero_score_edges():
    from mechkit.discovery.graph import Graph
    from mechkit.discovery.scores import EdgeScores
    from mechkit.discovery.select import greedy_mask, nonzero_count, topn_mask
    from tests.conftest import tiny_hooked

    graph = Graph.from_model(tiny_hooked())
    scores = torch.zeros(graph.n_edges)
    scores[graph.edge_position("L1H0->logits")] = 2.0
    scores[graph.edge_position("embed->L1H0<v>")] = -1.0
    scores[graph.edge_position("M0->logits")] = float("nan")
    assert nonzero_count(scores) == 2
    for mask in (topn_mask(scores, 40), greedy_mask(graph, scores, 40), topn_mask(scores, 40, absolute=False)):
        assert int(mask.sum()) <= 2 and not mask[scores == 0].any() and not mask[scores.isnan()].any()
    circuit = EdgeScores(graph, scores, torch.zeros(len(graph.node_names)), "test").select("50%")
    assert {e.name for e in circuit.edges} == {"L1H0->logits", "embed->L1H0<v>"}


def test_discover_data_records_source_sha256_and_nonzero_edges(tiny_organism_dir, tmp_path):
    """Through the console script: --data's sha256 lands in the artifact's task record."""
    import hashlib
    import json

    from tests.console import mechkit

    data = tmp_path / "pairs.csv"
    data.write_text("clean,corrupted,answer,wrong_answer\nw1 w2 w3,w1 w5 w3,w7,w8\nw4 w5 w6,w4 w9 w6,w9,w10\n")
    out = tmp_path / "out"
    run = mechkit("discover", "organism:tiny", "--data", data, "--method", "eap", "--edges", "90%", "--out", out,
                  "--device", "cpu")
    assert run.returncode == 0, run
    assert "score non-zero" in run.stdout, run
    saved = json.loads((out / "circuit.json").read_text())
    assert saved["task"]["source_sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()


def test_organism_spec_implies_its_task(tmp_path):
    """The README's command, without --task: the shipped organism's own task; no zero-score edge
    pads the 5% budget (most of sandbagging's edges score exactly 0)."""
    from mechkit.artifacts import load_circuit
    from tests.console import mechkit

    out = tmp_path / "sb"
    run = mechkit("discover", "organism:sandbagging", "--method", "eap-ig", "--edges", "5%", "--n", "16",
                  "--out", out, "--device", "cpu")
    assert run.returncode == 0, run
    circuit = load_circuit(out / "circuit.json")
    assert circuit.task["name"] == "sandbagging"
    kept = circuit.edge_scores[circuit.in_circuit]
    assert len(kept) > 0 and bool((kept != 0).all())
    assert f"{int((circuit.edge_scores != 0).sum())} score non-zero" in run.stdout, run
