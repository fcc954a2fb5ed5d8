"""Writing a folder so that it appears whole or not at all."""

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


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


def _as_if_created(folder: Path) -> None:
    """Give a staged folder and its files the modes a plain mkdir/open would have (mkdtemp and
    mkstemp make them private to the owner), so others can read a shared organism or cache."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for entry in folder.rglob("*"):
        os.chmod(entry, (0o777 if entry.is_dir() else 0o666) & ~umask)
