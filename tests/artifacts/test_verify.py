"""verify_circuit / mechkit verify: fingerprint check, regenerated prompts, faithfulness tolerance."""

from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

from mechkit._types import Faithfulness, PromptPairs
from mechkit.artifacts import save_circuit
from mechkit.artifacts import verify as av
from mechkit.artifacts.verify import verify_circuit
from mechkit.errors import ArtifactError, SpecError
from tests.artifacts.helpers import FP, make_circuit


def _pairs(n=16):
    ids = torch.arange(n * 4).reshape(n, 4) % 50
    return PromptPairs(ids, ids.flip(1), ids[:, 0], ids[:, 1], torch.full((n,), 3), task={"name": "induction"})


class Fakes:
    """Injected model loader / task generator / evaluator that record their calls."""

    def __init__(self, measured=0.88, fp=FP, n=16):
        self.measured, self.fp, self.n, self.calls = measured, fp, n, []

    def load_model(self, spec, device=None):
        self.calls.append(("load", spec, device))
        if spec == "organism:missing":
            raise SpecError("no organism 'missing'")
        return SimpleNamespace(cfg=SimpleNamespace(device="cpu"), spec=spec)

    def regenerate(self, task):
        self.calls.append(("regenerate", task))
        return _pairs(self.n)

    def evaluate(self, model, pairs, circuit, ablation="resample"):
        self.calls.append(("evaluate", ablation, len(pairs), int(circuit.in_circuit.sum())))
        value = self.measured[ablation] if isinstance(self.measured, dict) else self.measured
        return Faithfulness(ablation, value, None, None, len(pairs))

    def fingerprint(self, model):
        return self.fp

    def kw(self):
        return dict(load_model=self.load_model, regenerate=self.regenerate, evaluate=self.evaluate,
                    fingerprint=self.fingerprint)


@pytest.fixture
def artifact(tmp_path):
    return save_circuit(make_circuit(), tmp_path / "c.circuit.json")


def test_passes_within_tolerance(artifact):
    fakes = Fakes(measured=0.89)
    result = verify_circuit(artifact, **fakes.kw())
    assert result.passed and result.fingerprint_ok and result.reason == ""
    (check,) = result.checks
    assert (check.ablation, check.recorded, check.measured) == ("resample", 0.875, 0.89)
    assert check.diff == pytest.approx(0.015) and check.ok
    task = make_circuit().task
    assert fakes.calls[:2] == [("load", "organism:tiny", None), ("regenerate", task)]
    assert fakes.calls[2] == ("evaluate", "resample", 16, 5)
    assert "tolerance ±0.02: ok" in "\n".join(result.lines())


def test_fails_beyond_tolerance(artifact):
    result = verify_circuit(artifact, **Fakes(measured=0.85).kw())
    assert not result.passed
    assert "moved by -0.0250, beyond ±0.02" in result.reason
    assert verify_circuit(artifact, tolerance=0.03, **Fakes(measured=0.85).kw()).passed


def test_every_recorded_ablation_is_checked(tmp_path):
    c = make_circuit(faithfulness=(Faithfulness("resample", 0.9, n_prompts=16), Faithfulness("mean", 0.5, n_prompts=16)))
    path = save_circuit(c, tmp_path / "c.circuit.json")
    fakes = Fakes(measured={"resample": 0.9, "mean": 0.6})
    result = verify_circuit(path, **fakes.kw())
    assert [c.ablation for c in result.checks] == ["resample", "mean"]
    assert not result.passed and "(mean)" in result.reason


def test_fingerprint_mismatch(artifact):
    other = "sha256:" + "cd" * 32
    fakes = Fakes(fp=other)
    result = verify_circuit(artifact, **fakes.kw())
    assert not result.passed and not result.fingerprint_ok and result.checks == ()
    assert "--allow-fingerprint-mismatch" in result.reason
    assert not any(c[0] == "evaluate" for c in fakes.calls)
    allowed = verify_circuit(artifact, allow_fingerprint_mismatch=True, **Fakes(fp=other).kw())
    assert allowed.passed and allowed.reason == "fingerprint mismatch allowed by request"
    assert any("MISMATCH" in line for line in allowed.lines())


def test_prompt_count_must_match(artifact):
    result = verify_circuit(artifact, **Fakes(n=12).kw())
    assert not result.passed and result.reason == "regenerated 12 prompts but the artifact records 16"


def test_nothing_recorded(tmp_path):
    path = save_circuit(make_circuit(faithfulness=()), tmp_path / "c.circuit.json")
    result = verify_circuit(path, **Fakes().kw())
    assert not result.passed and "records no faithfulness" in result.reason


def test_unloadable_model_is_a_failed_result(tmp_path):
    path = save_circuit(make_circuit(model_spec="organism:missing"), tmp_path / "c.circuit.json")
    result = verify_circuit(path, **Fakes().kw())
    assert not result.passed and "cannot load model 'organism:missing'" in result.reason


def test_corrupted_artifact_raises(tmp_path):
    bad = tmp_path / "bad.circuit.json"
    bad.write_text("{}")
    with pytest.raises(ArtifactError):
        verify_circuit(bad, **Fakes().kw())


def _cli(monkeypatch, fakes, *args):
    from mechkit.cli import app

    monkeypatch.setattr(av, "_defaults", lambda: (fakes.load_model, fakes.regenerate, fakes.evaluate, fakes.fingerprint))
    return CliRunner().invoke(app, ["verify", *map(str, args)])


def test_cli_exit_codes(monkeypatch, artifact, tmp_path):
    ok = _cli(monkeypatch, Fakes(measured=0.87), artifact)
    assert ok.exit_code == 0, ok.output
    assert ok.output.startswith(f"PASS {artifact}") and "tolerance ±0.02" in ok.output
    bad = _cli(monkeypatch, Fakes(measured=0.5), artifact)
    assert bad.exit_code == 1 and "FAIL" in bad.output and "MISMATCH" in bad.output
    second = save_circuit(make_circuit(seed=3), tmp_path / "d.circuit.json")
    both = _cli(monkeypatch, Fakes(fp="sha256:" + "00" * 32), artifact, second)
    assert both.exit_code == 1 and "0 of 2 circuits verified" in both.output
    allowed = _cli(monkeypatch, Fakes(fp="sha256:" + "00" * 32), "--allow-fingerprint-mismatch", artifact)
    assert allowed.exit_code == 0, allowed.output


def test_end_to_end_with_real_model_and_evaluator(tiny_organism_dir, tmp_path):
    """Real load_model, fingerprint and discovery.evaluate on a saved random organism."""
    from mechkit.discovery import Graph, evaluate
    from mechkit.models import fingerprint, load_model

    model = load_model("organism:tiny", device="cpu")
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(4, 60, (12, 6), generator=g)
    corrupted = clean.clone()
    corrupted[:, 2] = torch.randint(4, 60, (12,), generator=g)
    pairs = PromptPairs(clean, corrupted, clean[:, 2], corrupted[:, 2], torch.full((12,), 5), task={"name": "copy"})
    graph = Graph.from_model(model)
    names = tuple(graph.edge_names)
    keep = torch.zeros(len(names), dtype=torch.bool)
    keep[torch.randperm(len(names), generator=g)[: len(names) // 2]] = True
    circuit = make_circuit(model_spec="organism:tiny", model_fingerprint=fingerprint(model), task={"name": "copy"},
                           edge_names=names, edge_scores=torch.randn(len(names), generator=g), in_circuit=keep,
                           node_scores={}, faithfulness=())
    measured = evaluate(model, pairs, circuit, ablation="resample", n_boot=0)
    circuit = make_circuit(**{**circuit.__dict__, "faithfulness": (measured,)})
    path = save_circuit(circuit, tmp_path / "tiny.circuit.json")

    result = verify_circuit(path, regenerate=lambda task: pairs)
    assert result.passed, result.lines()
    assert result.checks[0].measured == pytest.approx(measured.value, abs=1e-5)
    # a circuit whose recorded value is off fails
    off = make_circuit(**{**circuit.__dict__, "faithfulness": (Faithfulness("resample", measured.value + 0.5, n_prompts=12),)})
    assert not verify_circuit(save_circuit(off, tmp_path / "off.circuit.json"), regenerate=lambda task: pairs).passed
    # changed weights: fingerprint mismatch
    with torch.no_grad():
        model.blocks[0].attn.W_Q[0, 0, 0] += 1.0
    from mechkit.models import save_organism

    save_organism(model, tiny_organism_dir.parent / "tiny2", card={"name": "tiny2"})
    moved = make_circuit(**{**circuit.__dict__, "model_spec": "organism:tiny2"})
    result = verify_circuit(save_circuit(moved, tmp_path / "moved.circuit.json"), regenerate=lambda task: pairs)
    assert not result.passed and not result.fingerprint_ok


def test_taskless_artifact_fails_to_verify(tmp_path):
    path = save_circuit(make_circuit(task={}), tmp_path / "c.circuit.json")
    fakes = Fakes()
    result = verify_circuit(path, load_model=fakes.load_model, evaluate=fakes.evaluate, fingerprint=fakes.fingerprint)
    assert not result.passed and "no task name" in result.reason


def test_user_prompt_file_is_reread(tiny_organism_dir, tmp_path):
    """A task read from a CSV (mechkit.patching.read_pairs) is re-read, checked by sha256, re-evaluated."""
    import csv
    import hashlib
    import random

    from mechkit.discovery import Graph, evaluate
    from mechkit.models import fingerprint, load_model
    from mechkit.patching import read_pairs

    rng = random.Random(0)
    csv_path = tmp_path / "pairs.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["clean", "corrupted", "answer", "wrong_answer"])
        for _ in range(10):
            a, b, c, d = (f"w{rng.randrange(60)}" for _ in range(4))
            w.writerow([f"{a} {b} {c} {a}", f"{a} {d} {c} {a}", b, d])
    model = load_model("organism:tiny", device="cpu")
    pairs = read_pairs(csv_path, model)
    graph = Graph.from_model(model)
    keep = torch.zeros(graph.n_edges, dtype=torch.bool)
    keep[::3] = True
    base = make_circuit(model_fingerprint=fingerprint(model), edge_names=tuple(graph.edge_names),
                        edge_scores=torch.linspace(-1, 1, graph.n_edges), in_circuit=keep, node_scores={},
                        task={**pairs.task, "source": "pairs.csv",
                              "source_sha256": hashlib.sha256(csv_path.read_bytes()).hexdigest()},
                        faithfulness=())
    measured = evaluate(model, pairs, base, n_boot=0)
    path = save_circuit(make_circuit(**{**base.__dict__, "faithfulness": (measured,)}), tmp_path / "c.circuit.json")

    result = verify_circuit(path, device="cpu")
    assert result.passed, result.lines()
    assert result.checks[0].measured == pytest.approx(measured.value, abs=1e-5)
    csv_path.write_text(csv_path.read_text() + "w1 w2 w3 w1,w1 w4 w3 w1,w2,w4\n")
    changed = verify_circuit(path, device="cpu")
    assert not changed.passed and "changed since the circuit was measured" in changed.reason
    csv_path.unlink()
    gone = verify_circuit(path, device="cpu")
    assert not gone.passed and "not found" in gone.reason
