"""Shipped circuits verify against their organisms; the generator produces verifiable artifacts."""

import json
from pathlib import Path

from mechkit.artifacts import load_circuit
from mechkit.artifacts.verify import verify_circuit

ROOT = Path(__file__).resolve().parents[2]
CIRCUITS = ROOT / "circuits"


def test_every_shipped_circuit_verifies():
    from mechkit.artifacts.ship import REAL_MODEL_CIRCUITS, readme
    from mechkit.models import available_organisms

    files = sorted(CIRCUITS.glob("*.circuit.json"))
    shipped = {p.name[: -len(".circuit.json")] for p in files}
    assert shipped == set(available_organisms()) | set(REAL_MODEL_CIRCUITS), "run: python -m mechkit.artifacts.ship"
    assert (CIRCUITS / "README.md").read_text() == readme(CIRCUITS), "run: python -m mechkit.artifacts.ship"
    for path in files:
        assert f"`{path.name}`" in readme(CIRCUITS)
        if path.name[: -len(".circuit.json")] in REAL_MODEL_CIRCUITS:
            continue  # below, with the session's copy of the model
        result = verify_circuit(path, device="cpu")
        assert result.passed, "\n".join(result.lines())
        assert result.fingerprint_ok and result.checks


def test_smollm2_ioi_circuit_verifies(smollm2):
    """The pretrained model's IOI circuit (<= 5% of edges, held-out prompts), re-measured on the
    regenerated prompts: one masked evaluation of 64 prompts. Its faithfulness target is a
    benchmark's (BENCHMARKS.md), not this test's."""
    path = CIRCUITS / "smollm2-135m-ioi.circuit.json"
    c = load_circuit(path)
    assert c.model_spec == "smollm2-135m" and c.task["name"] == "ioi" and c.task["split"] == "test"
    assert c.hyperparameters["discovery_task"]["split"] == "train"
    assert int(c.in_circuit.sum()) <= 0.05 * len(c.edge_names)
    assert [f.ablation for f in c.faithfulness] == ["resample"]
    result = verify_circuit(path, load_model=lambda spec, device=None: smollm2)
    assert result.passed, "\n".join(result.lines())
    assert result.fingerprint_ok and len(result.checks) == 1


def test_real_model_organism_circuits_verify_through_the_console_script():
    """The fine-tuned organisms' circuits (EAP-IG edges, and the sandbagger's SAE cue features)
    re-measured the way users check a shared artifact: `mechkit verify` in a subprocess, which
    loads base + adapter, regenerates the held-out pairs and re-measures each recorded value."""
    from tests.console import mechkit

    files = [CIRCUITS / f"{stem}.circuit.json" for stem in ("smol-sandbagging", "smol-chekhov", "smol-sandbagging-cue-features")]
    for path in files[:2]:
        c = load_circuit(path)
        assert c.model_spec == f"organism:{path.name.split('.')[0]}" and c.task["split"] == "test"
        assert c.hyperparameters["discovery_task"]["split"] == "train" and c.faithfulness[0].value >= 0.8
    features = load_circuit(files[2])
    held_out = features.hyperparameters["held_out"]
    assert features.hyperparameters["held_out_task"]["split"] == "test"
    assert held_out["ablated_clean_gives_wrong"] >= 0.8 and held_out["patched_corrupted_gives_answer"] >= 0.5
    run = mechkit("verify", *files, "--device", "cpu", timeout=3600)  # three model loads: slow on a loaded machine
    assert run.returncode == 0, run
    assert run.stdout.count("PASS ") == 3 and "3 of 3 circuits verified" in run.stdout
    assert "held-out (ablated_clean_gives_wrong): recorded" in run.stdout


def test_ship_pipeline_on_a_fresh_organism(tmp_path, monkeypatch):
    """Build an untrained induction-task model, ship its circuit, and verify it end to end."""
    from mechkit.artifacts import ship
    from mechkit.models import save_organism
    from mechkit.organisms import task
    from mechkit.organisms.train import build_model, spec

    t = task("induction")
    model = build_model(t, spec("induction"), seed=0)
    root = tmp_path / "organisms"
    save_organism(model, root / "fresh", card={"name": "fresh", "task": {"name": t.name, "params": dict(t.params)}})
    monkeypatch.setenv("MECHKIT_ORGANISMS_DIR", str(root))

    out = tmp_path / "circuits"
    assert ship.main(["--out", str(out), "--n", "24"]) == 0
    path = out / "fresh.circuit.json"
    c = load_circuit(path)
    assert c.model_spec == "organism:fresh" and c.method == "eap-ig"
    assert c.task["split"] == "test" and c.hyperparameters["discovery_task"]["split"] == "train"
    assert c.selection["rule"] == "top-n" and 0 < int(c.in_circuit.sum()) < len(c.edge_names)
    assert "`fresh.circuit.json`" in (out / "README.md").read_text()
    assert verify_circuit(path).passed
    # the recorded number is what verify re-measures: tamper with it and verification fails
    doc = json.loads(path.read_text())
    doc["faithfulness"][0]["value"] += 0.1
    path.write_text(json.dumps(doc))
    assert not verify_circuit(path).passed


def test_schema_only_writes_the_schema(tmp_path):
    from mechkit.artifacts import ship
    from mechkit.artifacts.schema import schema_text

    assert ship.main(["--out", str(tmp_path), "--schema-only"]) == 0
    assert (tmp_path / "schema.json").read_text() == schema_text()
    assert [p.name for p in tmp_path.iterdir()] == ["schema.json"]
