"""``discover`` end to end, ground-truth scoring, and the public surface."""

import json

import pytest
import torch

import mechkit
from mechkit._types import Circuit
from mechkit.discovery import (
    attribute,
    auroc,
    discover,
    edge_auroc,
    evaluate,
    ground_truth,
    jaccard,
    node_auroc,
)
from mechkit.discovery.ground_truth import GroundTruth, GroundTruthError, circuit_nodes
from mechkit.discovery.methods import MethodError


def test_discover_fills_every_field(model, pairs):
    circuit = discover(model, pairs, method="eap-ig", edges=12, model_spec="organism:tiny", n_boot=200)
    assert isinstance(circuit, Circuit)
    assert circuit.model_spec == "organism:tiny" and circuit.model_fingerprint == mechkit.fingerprint(model)
    assert circuit.task == pairs.task and circuit.method == "eap-ig"
    assert circuit.hyperparameters["ig_steps"] == 5 and circuit.hyperparameters["metric"] == "logit_diff"
    assert circuit.selection["rule"] == "top-n" and circuit.selection["n"] == 12
    assert 0 < int(circuit.in_circuit.sum()) <= 12
    assert circuit.edge_scores.dtype == torch.float32 and set(circuit.node_scores) == {"L0H0", "L0H1", "M0", "L1H0", "L1H1", "M1"}
    (f,) = circuit.faithfulness
    assert f.ablation == "resample" and f.ci_low <= f.value <= f.ci_high
    assert f.value == pytest.approx(evaluate(model, pairs, circuit).value, abs=1e-6)
    assert circuit.created.endswith("+00:00") and circuit.mechkit_version == mechkit.__version__
    assert mechkit.discover is discover


@pytest.mark.parametrize("method, kwargs", [("eap", {}), ("exact", {}), ("acdc", {"tau": 0.05}), ("oracle", {"target": 0.7})])
def test_discover_methods(model, pairs, method, kwargs):
    circuit = discover(model, pairs, method=method, edges="25%", n_boot=0, **kwargs)
    assert circuit.method == method and circuit.in_circuit.any()
    if method == "oracle":
        assert circuit.selection["reached"] and circuit.faithfulness[0].value >= 0.7
    if method == "acdc":
        assert circuit.selection == {"rule": "acdc", "tau": 0.05, "prune_dangling": True}


def test_discover_greedy_and_threshold(model, pairs):
    greedy = discover(model, pairs, "eap", 10, rule="greedy", n_boot=0)
    assert greedy.selection["rule"] == "greedy" and greedy.in_circuit.sum() <= 10
    thr = discover(model, pairs, "eap", None, rule="threshold", threshold=0.05, n_boot=0)
    assert thr.selection["threshold"] == 0.05


def test_discover_rejects_unknown_names(model, pairs):
    with pytest.raises(MethodError, match="did you mean"):
        discover(model, pairs, method="acdcc")
    with pytest.raises(MethodError, match="tau"):
        discover(model, pairs, method="oracle", tau=0.1)
    with pytest.raises(MethodError, match="use discover"):
        attribute(model, pairs, "acdc")


def test_auroc_and_jaccard():
    assert auroc([3, 2, 1, 0], [True, True, False, False]) == 1.0
    assert auroc([0, 1, 2, 3], [True, True, False, False]) == 0.0
    assert auroc([1, 1, 1, 1], [True, False, True, False]) == 0.5
    assert auroc([3, 1, 2, 0], [True, True, False, False]) == 0.75
    with pytest.raises(GroundTruthError):
        auroc([1, 2], [True, True])
    assert jaccard({"a", "b"}, {"b", "c"}) == pytest.approx(1 / 3)
    assert jaccard(set(), set()) == 1.0


def test_ground_truth_from_card(tmp_path, monkeypatch, model, pairs):
    root = tmp_path / "organisms" / "wired-x"
    root.mkdir(parents=True)
    truth = {"nodes": ["L0H1", "L1H0"], "edges": ["L0H1->L1H0<k>", "L1H0->logits"]}
    (root / "card.json").write_text(json.dumps({"name": "wired-x", "ground_truth": truth}))
    monkeypatch.setenv("MECHKIT_ORGANISMS_DIR", str(tmp_path / "organisms"))
    gt = ground_truth("organism:wired-x")
    assert gt == GroundTruth(frozenset(truth["nodes"]), frozenset(truth["edges"]))
    assert ground_truth(root) == gt
    scores = attribute(model, pairs, "eap")
    # a score vector that ranks exactly the true edges first gives AUROC 1
    perfect = scores.scores.clone() * 0
    for e in truth["edges"]:
        perfect[scores.graph.edge_position(e)] = -1.0
    from dataclasses import replace

    assert edge_auroc(replace(scores, scores=perfect), gt) == 1.0
    node_scores = torch.tensor([1.0 if n in gt.nodes else 0.1 for n in scores.graph.node_names])
    assert node_auroc(replace(scores, node_scores=node_scores), gt) == 1.0
    assert 0.0 <= edge_auroc(scores, gt) <= 1.0
    circuit = scores.circuit(torch.tensor([n in truth["edges"] for n in scores.edge_names]), {"rule": "truth"})
    assert circuit_nodes(circuit.edge_names, circuit.in_circuit) == gt.nodes
    (root / "card.json").write_text(json.dumps({"name": "wired-x"}))
    with pytest.raises(GroundTruthError, match="ground_truth"):
        ground_truth("wired-x")
    with pytest.raises(GroundTruthError, match="no card.json"):
        ground_truth("missing")


def test_discover_with_eval_pairs_records_the_measured_task(tmp_path):
    """A circuit measured on held-out pairs must re-verify: its task is the measured one."""
    import mechkit
    from mechkit.artifacts import save_circuit, verify_circuit

    model = mechkit.load_model("organism:wired-induction", device="cpu")
    task = mechkit.organisms.task("wired-induction")
    scored, held_out = task.generate(16, seed=0), task.generate(16, seed=1)
    circuit = mechkit.discover(model, scored, edges=6, eval_pairs=held_out, model_spec="organism:wired-induction")
    assert circuit.task == held_out.task
    assert circuit.hyperparameters["scored_on"] == scored.task
    path = save_circuit(circuit, tmp_path / "c.circuit.json")
    assert verify_circuit(path, device="cpu").passed


def test_circuit_records_the_spec_the_model_was_loaded_with(tmp_path):
    import mechkit

    model = mechkit.load_model("organism:wired-induction", device="cpu")
    pairs = mechkit.organisms.task("wired-induction").generate(8, seed=0)
    circuit = mechkit.discovery.attribute(model, pairs, "eap").select(6)
    assert circuit.model_spec == "organism:wired-induction"
    assert mechkit.load_circuit(circuit.save(tmp_path / "c.circuit.json")).model_spec == "organism:wired-induction"
