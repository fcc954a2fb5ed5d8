"""mechkit show / export / import on saved artifacts."""

import json

from typer.testing import CliRunner

from mechkit.artifacts import load_circuit, save_circuit
from mechkit.cli import app
from tests.artifacts.helpers import assert_same, make_circuit


def _run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_show_writes_html(tmp_path):
    path = save_circuit(make_circuit(), tmp_path / "c.circuit.json")
    res = _run("show", path, "--html", tmp_path / "c.html")
    assert res.exit_code == 0, res.output
    assert "5 of 46 edges in circuit" in res.output
    html = (tmp_path / "c.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and "mechkitRender" in html


def test_show_rejects_corrupted_artifact(tmp_path):
    bad = tmp_path / "bad.circuit.json"
    bad.write_text('{"schema": "mechkit.circuit/1"}')
    res = _run("show", bad, "--html", tmp_path / "c.html")
    assert res.exit_code != 0 and not (tmp_path / "c.html").exists()
    assert "mechkit_version: Field required" in str(res.exception)


def test_export_import_round_trip(tmp_path):
    c = make_circuit()
    path = save_circuit(c, tmp_path / "c.circuit.json")
    res = _run("export", path, "--to", "eap-ig", "--out", tmp_path / "g.json", "--d-model", 16)
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "g.json").read_text())["cfg"]["d_model"] == 16
    res = _run("import", tmp_path / "g.json", "--out", tmp_path / "back.circuit.json")
    assert res.exit_code == 0, res.output
    assert_same(c, load_circuit(tmp_path / "back.circuit.json"))


def test_export_mib(tmp_path):
    path = save_circuit(make_circuit(), tmp_path / "c.circuit.json")
    res = _run("export", path, "--to", "mib", "--out", tmp_path / "sub", "--d-model", 16)
    assert res.exit_code == 0, res.output
    assert (tmp_path / "sub" / "induction_tiny" / "importances.json").is_file()
