"""Writing a folder or a JSON file so that it appears whole or not at all."""

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def staged_dir(path: Path) -> Iterator[Path]:
    """A temp sibling of ``path`` to fill; on a clean exit it replaces ``path``. On an exception
    (KeyboardInterrupt included) it is removed and any previous ``path`` is left as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        yield tmp
        _as_if_created(tmp)
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_json(path: Path, data: Any, indent: int = 1) -> None:
    """``data`` as JSON at ``path``, written whole or not at all: a reader (or a resumed job) finds
    the old file or the new one, never half of one. The temp sibling ends in ``.tmp`` and is removed
    on any exception."""
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(data, indent=indent) + "\n")
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _as_if_created(folder: Path) -> None:
    """Give a staged folder and its files the modes a plain mkdir/open would have (mkdtemp and
    mkstemp make them private to the owner), so others can read a shared organism or cache."""
    umask = _umask()
    os.chmod(folder, 0o777 & ~umask)
    for entry in folder.rglob("*"):
        os.chmod(entry, (0o777 if entry.is_dir() else 0o666) & ~umask)


def _umask() -> int:
    """The process's umask (reading it means setting it: set it back at once)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask
