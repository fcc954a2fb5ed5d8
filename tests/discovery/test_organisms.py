"""Discovery on a shipped wired organism, whose circuit is known by construction."""

import pytest
from typer.testing import CliRunner

from mechkit.cli import app
from mechkit.discovery import attribute, discover, edge_auroc, ground_truth, node_auroc
from mechkit.discovery.ground_truth import circuit_nodes
from mechkit.models import load_model
from mechkit.organisms import task


@pytest.fixture(scope="module")
def wired():
    model = load_model("organism:wired-induction", device="cpu")
    return model, task("wired-induction").generate(32, seed=0, split="test"), ground_truth("wired-induction")


def test_eap_ig_recovers_the_wired_circuit(wired):
    model, pairs, truth = wired
    scores = attribute(model, pairs, "eap-ig", ablation="zero")
    assert node_auroc(scores, truth) == 1.0
    assert edge_auroc(scores, truth) >= 0.95


def test_discovered_circuit_is_the_wired_heads_and_faithful(wired):
    model, pairs, truth = wired
    circuit = discover(model, pairs, "eap-ig", "10%", model_spec="organism:wired-induction", n_boot=200)
    assert circuit_nodes(circuit.edge_names, circuit.in_circuit) == truth.nodes - {"embed", "logits"}
    assert circuit.faithfulness[0].value >= 0.9


def test_cli_with_task(tmp_path):
    result = CliRunner().invoke(
        app, ["discover", "organism:wired-induction", "--task", "wired-induction", "--n", "16", "--edges", "10%", "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert "L1H0" in result.output and (tmp_path / "circuit.json").is_file()
    # 5 steps miss this organism's integral by about half (tests/discovery/test_convergence.py): the summary says so
    assert "warning" in result.output and "ig_steps=5 resolves" in result.output


def test_cli_eap_ig_activations_passes_ig_steps(tmp_path):
    from mechkit.artifacts import load_circuit

    result = CliRunner().invoke(
        app, ["discover", "organism:wired-induction", "--task", "wired-induction", "--n", "16", "--method",
              "eap-ig-activations", "--ig-steps", "2", "--edges", "10%", "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    circuit = load_circuit(tmp_path / "circuit.json")
    assert circuit.method == "eap-ig-activations" and circuit.hyperparameters["ig_steps"] == 2
