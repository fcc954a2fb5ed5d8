"""Where a benchmark's numbers came from (the mechkit commit they were measured at), and saving them whole."""

import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def commit() -> str:
    """The short hash of the checkout's HEAD ('' outside a git checkout)."""
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def save_json(path: Path, data, indent: int = 1) -> None:
    """``data`` as JSON at ``path``, written whole or not at all (a rerun may trust what it finds)."""
    part = path.with_name(path.name + ".part")
    part.write_text(json.dumps(data, indent=indent) + "\n")
    os.replace(part, path)
