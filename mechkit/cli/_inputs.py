"""Checks the command-line front ends run on their arguments before loading a model or computing
anything, so a bad argument or an unusable output path fails in a second with one line (exit 2)
instead of after the whole computation."""

import math
import os
from pathlib import Path

from mechkit.errors import DataError


def _parent_ok(path: Path, option: str) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        raise DataError(f"{option} {path}: folder {parent} does not exist; create it first")
    if not parent.is_dir():
        raise DataError(f"{option} {path}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DataError(f"{option} {path}: folder {parent} is not writable")


def check_out_dir(path: str | os.PathLike, option: str = "--out", files: tuple[str, ...] = ()) -> Path:
    """A folder to write ``files`` into: it exists as a folder (files in it are replaced) or can
    be created in an existing, writable parent folder; none of ``files`` in it is a folder."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        if not path.is_dir():
            raise DataError(f"{option} {path} exists and is not a folder: pass a folder (new or existing)")
        if not os.access(path, os.W_OK | os.X_OK):
            raise DataError(f"{option} {path} is not writable")
        for name in files:
            target = path / name
            if (target.exists() or target.is_symlink()) and not target.is_file():
                raise DataError(f"{option} {path}: {target} exists and is not a file; move it away")
        return path
    _parent_ok(path, option)
    return path


def check_out_file(path: str | os.PathLike, option: str) -> Path:
    """A file to write: it does not exist or is a regular file, in an existing, writable folder."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        if not path.is_file():
            raise DataError(f"{option} {path} exists and is not a file: pass a file name")
        if not os.access(path, os.W_OK):
            raise DataError(f"{option} {path} is not writable")
    _parent_ok(path, option)
    return path


def check_count(value: int, option: str, minimum: int = 1) -> int:
    if value < minimum:
        raise DataError(f"{option} {value} is less than {minimum}")
    return value


def check_number(value: float | None, option: str, low: float | None = None, high: float | None = None,
                 low_open: bool = False) -> float | None:
    """A finite number in [low, high] (``low_open``: (low, high]); None passes."""
    if value is None:
        return None
    if not math.isfinite(value):
        raise DataError(f"{option} {value} is not a finite number")
    if low is not None and (value <= low if low_open else value < low):
        raise DataError(f"{option} {value} must be {'above' if low_open else 'at least'} {low}")
    if high is not None and value > high:
        raise DataError(f"{option} {value} must be at most {high}")
    return value
