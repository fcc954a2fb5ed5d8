"""The console script's exit codes and one-line usage errors (run in a subprocess)."""

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.console import MECHKIT, mechkit

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "circuits" / "wired-induction.circuit.json"


def _moved(tmp_path: Path, name: str, **changes) -> Path:
    """A copy of the shipped wired-induction circuit with top-level fields changed."""
    data = json.loads(SHIPPED.read_text())
    data.update(changes)
    out = tmp_path / name
    out.write_text(json.dumps(data))
    return out


def test_verify_passes_with_exit_0():
    run = mechkit("verify", SHIPPED)
    assert run.returncode == 0, run
    assert "PASS" in run.stdout or "pass" in run.stdout.lower(), run


def test_verify_fingerprint_mismatch_exits_1(tmp_path):
    bad = _moved(tmp_path, "fp.circuit.json", model={"spec": "organism:wired-induction", "fingerprint": "sha256:" + "0" * 64})
    run = mechkit("verify", bad)
    assert run.returncode == 1, run
    assert "FAIL" in run.stdout and "fingerprint" in run.stdout.lower(), run


def test_verify_moved_faithfulness_exits_1(tmp_path):
    faith = json.loads(SHIPPED.read_text())["faithfulness"]
    faith[0]["value"] = faith[0]["value"] - 0.5
    bad = _moved(tmp_path, "moved.circuit.json", faithfulness=faith)
    run = mechkit("verify", bad)
    assert run.returncode == 1, run
    assert "FAIL" in run.stdout, run


def test_verify_one_of_two_exits_1(tmp_path):
    bad = _moved(tmp_path, "fp.circuit.json", model={"spec": "organism:wired-induction", "fingerprint": "sha256:" + "1" * 64})
    run = mechkit("verify", SHIPPED, bad)
    assert run.returncode == 1, run
    assert "1 of 2 circuits verified" in run.stdout, run


@pytest.mark.parametrize(
    "args",
    [
        ["verify"],                                     # missing argument
        ["bogus-command"],                              # unknown command
        ["verify", "--bogus", "x"],                     # unknown option
        ["organisms", "eval", "chekhov", "--n", "abc"],  # not an integer
        ["show", str(SHIPPED)],                         # missing required --html
        ["patch", "organism:chekhov", "--sweep", "resid-pre"],  # missing --out
    ],
)
def test_usage_errors_are_one_line_exit_2(args):
    line = mechkit(*args).assert_one_line_error(2)
    assert "--help" in line  # says where to look


def test_mechkit_error_is_one_line_exit_2():
    line = mechkit("info", "organism:no-such-organism").assert_one_line_error(2)
    assert "no-such-organism" in line


def test_bare_mechkit_prints_help_and_exits_0():
    run = mechkit()
    assert run.returncode == 0, run
    assert "Usage" in run.stdout and "verify" in run.stdout and "Traceback" not in run.stderr, run


def test_version_and_help_do_not_import_the_heavy_stack():
    # --version/--help must answer without importing torch or TransformerLens.
    code = (
        "import sys\nfrom mechkit.cli import app\n"
        "try:\n    app(['--help'], standalone_mode=False)\nexcept SystemExit:\n    pass\n"
        "heavy = sorted(m for m in ('torch', 'transformer_lens', 'sae_lens', 'transformers') if m in sys.modules)\n"
        "print('HEAVY:' + ','.join(heavy))\n"
    )
    proc = subprocess.run([str(MECHKIT.with_name("python")), "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "HEAVY:", proc.stdout
    assert mechkit("--version").stdout.startswith("mechkit ")


def test_ctrl_c_exits_130(tmp_path):
    # A real SIGINT while a command is working: "aborted" on stderr and exit 130, never 0. The
    # command blocks reading a FIFO nobody writes, so it is certainly still running when the
    # signal arrives (it says 'ready' first); nothing here depends on timing.
    fifo = tmp_path / "never-written"
    os.mkfifo(fifo)
    script = (
        # a job started in the background (as CI may run the suite) inherits SIGINT ignored;
        # a terminal's Ctrl-C reaches a process that has Python's default handler
        "import signal, sys\nsignal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "from mechkit.cli import app, main\n"
        "@app.command('wait-on')\ndef _wait(path: str):\n"
        "    print('ready', flush=True)\n    open(path).read()\n"
        "main(['wait-on', sys.argv[1]])\n"
    )
    proc = subprocess.Popen(
        [str(MECHKIT.with_name("python")), "-c", script, str(fifo)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines() == ["aborted"], stderr


def test_bad_memory_budget_is_refused_before_loading(tmp_path):
    line = mechkit("discover", "organism:chekhov", "--max-memory", "lots", "--out", tmp_path / "o").assert_one_line_error(2)
    assert "'lots'" in line and "6GB" in line
    assert not (tmp_path / "o").exists()
