"""mechkit._files: a staged folder or a JSON file appears whole, with ordinary modes, or not at all."""

import json
import os
import stat

import pytest

from mechkit._files import staged_dir, write_json


def test_staged_folder_appears_whole_with_the_umask_modes(tmp_path):
    old = os.umask(0o022)
    try:
        with staged_dir(tmp_path / "out") as staging:
            (staging / "sub").mkdir()
            (staging / "sub" / "w.bin").write_bytes(b"x")
            assert not (tmp_path / "out").exists()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755  # mkdtemp alone gives 0o700
    assert stat.S_IMODE((tmp_path / "out" / "sub" / "w.bin").stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_failed_stage_leaves_the_previous_folder(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with staged_dir(tmp_path / "out") as staging:
            (staging / "new").write_text("half")
            raise KeyboardInterrupt
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep"]


def test_json_replaces_the_old_file_whole_with_the_umask_mode(tmp_path):
    path = tmp_path / "result.json"
    path.write_text('{"old": 1}')
    old = os.umask(0o022)
    try:
        write_json(path, {"new": [1, 2]})
    finally:
        os.umask(old)
    assert json.loads(path.read_text()) == {"new": [1, 2]} and path.read_text().endswith("\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # mkstemp alone gives 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_json_that_cannot_be_written_leaves_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "result.json"
    path.write_text('{"old": 1}')
    with pytest.raises(TypeError):
        write_json(path, {"new": object()})  # not JSON: fails while writing
    assert json.loads(path.read_text()) == {"old": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]
