"""``mechkit patch`` writes the tensor, its labels and an offline heatmap, and prints top cells."""

import json

from typer.testing import CliRunner

from mechkit.cli import app
from mechkit.patching import PatchResult


def test_patch_command(tiny_organism_dir, tmp_path):
    data = tmp_path / "pairs.csv"
    data.write_text("clean,corrupted,answer,wrong_answer\nw1 w2 w3,w1 w5 w3,w7,w8\nw4 w5 w6,w4 w9 w6,w9,w10\n")
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["patch", "organism:tiny", "--data", str(data), "--sweep", "resid-pre",
                                   "--direction", "noising", "--out", str(out), "--device", "cpu", "--top", "3"])
    assert res.exit_code == 0, res.output
    result = PatchResult.load(out)
    assert result.dims == ("layer", "pos") and result.values.shape == (2, 4) and result.direction == "noising"
    assert json.loads((out / "result.json").read_text())["labels"]["pos"][1] == "1:w1"
    assert (out / "heatmap.html").stat().st_size > 1_000_000
    assert "layer" in res.output and res.output.count("1:w1") + res.output.count("2:w2") >= 1


def test_patch_command_errors_are_one_line(tiny_organism_dir, tmp_path):
    res = CliRunner().invoke(app, ["patch", "organism:tiny", "--sweep", "resid-pre", "--out", str(tmp_path / "o"),
                                   "--data", str(tmp_path / "missing.csv"), "--device", "cpu"])
    assert res.exit_code != 0 and "no such file" in str(res.exception)


def test_patch_max_memory_reaches_each_method(tmp_path):
    from tests.console import mechkit

    for method, what in (("activation", "activation patching"), ("attribution", "attribution patching")):
        run = mechkit("patch", "organism:chekhov", "--sweep", "resid-pre", "--n", "4", "--method", method,
                      "--max-memory", "10KB", "--device", "cpu", "--out", tmp_path / method)
        line = run.assert_one_line_error(2)
        assert f"{what} needs about" in line and "raise max_memory (--max-memory)" in line
    bad = mechkit("patch", "organism:chekhov", "--max-memory", "lots", "--out", tmp_path / "bad")
    assert "'lots'" in bad.assert_one_line_error(2)
    assert not (tmp_path / "bad").exists()
