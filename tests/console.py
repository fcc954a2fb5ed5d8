"""Run the installed ``mechkit`` console script in a subprocess, as users and CI jobs do.

``CliRunner`` never runs ``main()``, so exit codes and error formatting are only tested here.
"""

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

MECHKIT = Path(sys.executable).with_name("mechkit")


@dataclass
class Run:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    def __str__(self) -> str:  # shown by pytest when an assertion on a run fails
        return f"mechkit {' '.join(self.args)} -> {self.returncode}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"

    def assert_one_line_error(self, code: int = 2) -> str:
        """Exit ``code``, exactly one non-empty line on stderr, no traceback; returns that line."""
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        assert self.returncode == code, self
        assert len(lines) == 1, self
        assert "Traceback" not in self.stderr + self.stdout, self
        assert lines[0].startswith("error: "), self
        return lines[0]


def mechkit(*args, env: dict | None = None, cwd=None, timeout: float = 600, input: str | None = None) -> Run:
    """Run ``mechkit ARGS`` to completion. The timeout only guards against hangs (an event
    that never comes), never against slowness: it is far above any expected run time."""
    args = [os.fspath(a) for a in args]
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(env or {})}
    proc = subprocess.run(
        [str(MECHKIT), *args], capture_output=True, text=True, env=full_env, cwd=cwd,
        timeout=timeout, input=input if input is not None else "",
    )
    return Run(args, proc.returncode, proc.stdout, proc.stderr)
