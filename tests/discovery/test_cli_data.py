"""``mechkit discover --data`` keeps its prompt file next to the artifact, so ``verify`` finds it."""

import csv
import hashlib

import pytest

from mechkit.artifacts.io import copy_beside
from mechkit.errors import ArtifactError
from tests.console import mechkit


def _chekhov_csv(path, n=8):
    from mechkit import load_model
    from mechkit.organisms import task

    model = load_model("organism:chekhov", device="cpu")
    pairs = task("chekhov").generate(n, seed=3)

    def text(tokens):
        return model.to_string(tokens[1 : int(pairs.answer_pos[0]) + 1]).strip()  # without <bos>

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["clean", "corrupted", "answer", "wrong_answer"])
        for i in range(n):
            w.writerow([text(pairs.clean[i]), text(pairs.corrupted[i]), model.to_string(pairs.answer[i : i + 1]).strip(),
                        model.to_string(pairs.wrong[i : i + 1]).strip()])


def test_discover_then_verify_with_the_data_in_another_folder(tmp_path):
    data, out = tmp_path / "data" / "pairs.csv", tmp_path / "out"
    data.parent.mkdir()
    out.mkdir()
    _chekhov_csv(data)
    (out / "pairs.csv").write_text("someone else's file\n")  # never overwritten
    run = mechkit("discover", "organism:chekhov", "--data", data, "--method", "eap", "--edges", "10%",
                  "--device", "cpu", "--out", out)
    assert run.returncode == 0, run
    digest = hashlib.sha256(data.read_bytes()).hexdigest()
    copy = out / f"pairs.{digest[:16]}.csv"
    assert copy.read_bytes() == data.read_bytes()
    assert (out / "pairs.csv").read_text() == "someone else's file\n"
    from mechkit.artifacts import load_circuit

    task = load_circuit(out / "circuit.json").task
    assert task["source"] == copy.name and task["source_sha256"] == digest
    data.unlink()  # verify reads the copy beside the artifact, not the original
    check = mechkit("verify", out / "circuit.json", "--device", "cpu")
    assert check.returncode == 0, check


def test_copy_beside_reuses_same_bytes_and_never_replaces_other_files(tmp_path):
    source = tmp_path / "in" / "p.csv"
    source.parent.mkdir()
    source.write_text("a,b\n")
    out = tmp_path / "out"
    out.mkdir()
    assert copy_beside(source, out) == "p.csv"
    assert copy_beside(source, out) == "p.csv"  # same bytes already there
    assert copy_beside(source, source.parent) == "p.csv"  # the file itself
    source.write_text("c,d\n")
    named = copy_beside(source, out)
    assert named == f"p.{hashlib.sha256(b'c,d' + bytes([10])).hexdigest()[:16]}.csv"
    assert (out / "p.csv").read_text() == "a,b\n" and (out / named).read_text() == "c,d\n"
    assert sorted(p.name for p in out.iterdir()) == sorted(["p.csv", named])  # no temporary files left
    with pytest.raises(ArtifactError, match="changed while the circuit was being found"):
        copy_beside(source, out, sha256="0" * 64)
