"""``mechkit probe``: exit codes and one-line errors (run in a subprocess)."""

import hashlib
import json

import pytest

from tests.console import mechkit

ORG = "organism:sandbagging"


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    out = tmp_path_factory.mktemp("probe") / "cue.probe.json"
    run = mechkit("probe", "fit", ORG, "--out", out, "--site", "resid_mid", "--n", "40", "--n-boot", "50")
    assert run.returncode == 0, run
    assert "blocks.0.hook_resid_mid" in run.stdout and "<- best" in run.stdout, run
    return out


def test_fit_saves_a_probe_that_eval_and_verify_accept(fitted):
    doc = json.loads(fitted.read_text())
    assert doc["schema"] == "mechkit.probe/1" and doc["model"]["fingerprint"].startswith("sha256:")
    assert doc["metrics"]["test"]["auroc"] >= 0.95
    run = mechkit("probe", "eval", fitted, "--n", "30", "--n-boot", "50")
    assert run.returncode == 0 and "AUROC" in run.stdout, run
    run = mechkit("probe", "verify", fitted)
    assert run.returncode == 0 and "PASS" in run.stdout, run


def test_tampered_probe_is_one_line_exit_2(fitted, tmp_path):
    doc = json.loads(fitted.read_text())
    doc["bias"] += 1.0
    bad = fitted.parent / "edited.probe.json"
    bad.write_text(json.dumps(doc))
    assert "edited" in mechkit("probe", "eval", bad).assert_one_line_error(2)
    (tmp_path / "junk.probe.json").write_bytes(b"\x00\xff not json")
    mechkit("probe", "eval", tmp_path / "junk.probe.json").assert_one_line_error(2)
    assert "does not exist" in mechkit("probe", "eval", tmp_path / "none.probe.json").assert_one_line_error(2)


def test_verify_with_a_moved_metric_exits_1(fitted):
    from mechkit.probes.io import _digest

    doc = json.loads(fitted.read_text())
    doc["metrics"]["test"]["auroc"] = 0.5
    doc["digest"] = _digest(doc)  # a well-formed artifact whose recorded AUROC is wrong
    moved = fitted.parent / "moved.probe.json"
    moved.write_text(json.dumps(doc))
    run = mechkit("probe", "verify", moved)
    assert run.returncode == 1 and "FAIL" in run.stdout, run


@pytest.mark.parametrize("args, needle", [
    (["--hook", "blocks.0.hook_resid_mdi"], "unknown hook"),
    (["--layer", "7"], "out of range"),
    (["--method", "svm"], "unknown method"),
    (["--site", "resid"], "unknown site"),
    (["--position", "middle"], "--position"),
])
def test_fit_bad_input_is_one_line_exit_2(tmp_path, args, needle):
    line = mechkit("probe", "fit", ORG, "--out", tmp_path / "x.probe.json", *args).assert_one_line_error(2)
    assert needle in line


def test_one_class_labels_are_one_line_exit_2(tmp_path):
    data = tmp_path / "one.jsonl"
    data.write_text('{"text": "so test is", "label": 1}\n{"text": "so me is", "label": 1}\n')
    line = mechkit("probe", "fit", ORG, "--out", tmp_path / "x.probe.json", "--data", data).assert_one_line_error(2)
    assert "both classes" in line
    assert not (tmp_path / "x.probe.json").exists()


def _texts(path):
    rows = [{"text": f"so {w} is", "label": 1} for w in ("test", "exam", "quiz", "graded", "eval", "benchmark")]
    rows += [{"text": f"so {w} is", "label": 0} for w in ("me", "us", "them", "him", "her", "people")]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_fit_on_labelled_texts_records_the_file_and_verify_re_measures_it(tmp_path):
    data = _texts(tmp_path / "rows.jsonl")
    out = tmp_path / "probes" / "texts.probe.json"
    out.parent.mkdir()
    run = mechkit("probe", "fit", ORG, "--out", out, "--data", data, "--layer", "0", "--site", "resid_mid",
                  "--n-boot", "50", "--seed", "3")
    assert run.returncode == 0, run
    doc = json.loads(out.read_text())
    sha = hashlib.sha256(data.read_bytes()).hexdigest()
    assert doc["position"] == "last"
    assert doc["task"]["train"] == {"source": "rows.jsonl", "source_sha256": sha, "seed": 3, "split": "train"}
    assert doc["task"]["test"] == {**doc["task"]["train"], "split": "test"}
    assert (out.parent / "rows.jsonl").read_bytes() == data.read_bytes()  # copied beside the artifact
    assert doc["metrics"]["test"]["n_pos"] == 2 and doc["metrics"]["test"]["n_neg"] == 2  # every 4th row per class
    data.unlink()  # verify reads the copy only
    run = mechkit("probe", "verify", out)
    assert run.returncode == 0 and "PASS" in run.stdout and "held-out AUROC: recorded" in run.stdout, run
    copy = out.parent / "rows.jsonl"
    copy.write_text(copy.read_text().replace('"label": 0}', '"label": 1}', 1))
    run = mechkit("probe", "verify", out)
    assert run.returncode == 1 and "changed since the probe was fitted" in run.stdout, run


@pytest.mark.parametrize("line, needle", [
    ("[" * 100_000, "line 2 nests too deeply"),
    ('{"a": ' * 100_000, "line 2 nests too deeply"),
])
def test_hostile_data_line_is_one_line_exit_2(tmp_path, line, needle):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"text": "so test is", "label": 1}\n' + line + "\n")
    out = tmp_path / "x.probe.json"
    assert needle in mechkit("probe", "fit", ORG, "--out", out, "--data", data).assert_one_line_error(2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl"]


def test_a_bad_row_is_named_by_its_line(tmp_path):
    from mechkit.errors import DataError
    from mechkit.probes.data import read_labelled

    data = tmp_path / "rows.jsonl"
    data.write_text('{"text": "so test is", "label": 1}\n\n{"text": "so me is", "label": 2}\n')
    with pytest.raises(DataError, match="line 3: expected"):
        read_labelled(data)


def _rates(stdout: str) -> dict[str, tuple[float, float]]:
    """``intervention -> (clean rate, corrupted rate)`` from the table ``probe steer`` prints."""
    out = {}
    for line in stdout.splitlines()[2:]:
        name, rest = line[:14].strip(), line[14:].split()
        out[name] = (float(rest[0]), float(rest[3]))
    return out


def test_steering_against_the_cue_direction_stops_the_sandbagging(fitted):
    # the cue's classes lie about 5 apart along the (logreg) probe's unit direction
    run = mechkit("probe", "steer", fitted, "--alpha", "-8", "--alpha", "8", "--ablate", "--n", "100")
    assert run.returncode == 0, run
    assert "sandbagged with cue" in run.stdout and "truthful without cue" in run.stdout, run
    rates = _rates(run.stdout)
    assert list(rates) == ["none", "alpha -8", "alpha 8", "ablate"], run
    assert rates["none"][0] >= 0.95 and rates["none"][1] >= 0.95, run
    assert rates["alpha -8"][0] <= 0.05, run  # no more sandbagging under the cue
    assert rates["alpha -8"][1] >= 0.8, run  # and still truthful without it
    assert rates["alpha 8"][1] <= 0.7, run  # pushing towards the cue makes it sandbag without one


def test_steer_on_a_pairs_file(fitted, tmp_path):
    from mechkit.tasks import task

    t = task("sandbagging")
    pairs = t.generate(30, seed=3, split="test")
    words = lambda row: " ".join(t.vocab[i] for i in row.tolist()[1:])  # noqa: E731  (BOS is prepended again)
    rows = ["clean,corrupted,answer,wrong_answer"] + [
        f"{words(pairs.clean[i])},{words(pairs.corrupted[i])},{t.vocab[int(pairs.answer[i])]},{t.vocab[int(pairs.wrong[i])]}"
        for i in range(len(pairs))]
    data = tmp_path / "pairs.csv"
    data.write_text("\n".join(rows) + "\n")
    run = mechkit("probe", "steer", fitted, "--data", data, "--alpha", "-8", "--positions", "answer")
    assert run.returncode == 0 and "30 prompt pairs" in run.stdout and "answer positions" in run.stdout, run
    rates = _rates(run.stdout)
    assert rates["none"][0] == 1.0 and rates["alpha -8"][0] <= 0.1, run


@pytest.mark.parametrize("args, needle", [
    (["--alpha", "nan"], "--alpha nan is not a finite number"),
    (["--alpha", "abc"], "--alpha"),
    ([], "nothing to run"),
    (["--alpha", "1", "--positions", "middle"], "--positions"),
    (["--alpha", "1", "--model", "organism:chekhov", "--task", "sandbagging"], "fitted on weights"),
])
def test_steer_bad_input_is_one_line_exit_2(fitted, args, needle):
    assert needle in mechkit("probe", "steer", fitted, *args).assert_one_line_error(2)
