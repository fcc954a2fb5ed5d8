"""Labelled texts from a JSONL file and their seeded split into training and held-out rows.

>>> from mechkit.probes.data import read_labelled, split_texts
>>> rows = read_labelled("rows.jsonl")                              # doctest: +SKIP
>>> train, test = split_texts(model, rows.texts, rows.labels, 0)    # doctest: +SKIP

One ``{"text": ..., "label": 0 or 1}`` object per line (UTF-8, blank lines skipped). Lines are
parsed by :func:`mechkit.patching.data._jsonl_rows`, as prompt-pair files are, so a line that is
not JSON, not an object or nested too deeply is one :class:`~mechkit.errors.DataError` naming
the line. The split holds out every fourth row of a seeded shuffle of each class: the same
file and seed give the same held-out rows, which is what lets ``mechkit probe fit --data``
record the file (a copy beside the artifact, with its sha256) and the seed, and
:func:`mechkit.probes.verify_probe` re-measure the probe on them (:func:`recorded_rows`).
"""

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mechkit.errors import ArtifactError, DataError
from mechkit.probes.activations import Labelled, Position

MAX_DATA_BYTES = 64 << 20
HELD_OUT_EVERY = 4


@dataclass(frozen=True)
class LabelledTexts:
    """The rows of a labelled JSONL file and the sha256 of its bytes."""

    texts: list[str]
    labels: list[int]
    sha256: str


def read_labelled(path: str | Path, what: str = "--data") -> LabelledTexts:
    """Texts and 0/1 labels of a JSONL file; one line saying what is wrong otherwise.
    ``what``: how messages name the file (the option it came from)."""
    from mechkit.artifacts.io import _read_bounded
    from mechkit.patching.data import _jsonl_rows

    where = f"{what} {path}"
    try:
        raw = bytes(_read_bounded(Path(path), f"{what} file", limit=MAX_DATA_BYTES))
    except ArtifactError as err:
        raise DataError(str(err)) from None
    text = raw.decode("utf-8-sig", errors="replace")
    rows, _ = _jsonl_rows(where, text)
    numbers = [i for i, line in enumerate(text.splitlines(), 1) if line.strip()]  # the lines rows came from
    texts, labels = [], []
    for i, row in zip(numbers, rows):
        if not isinstance(row.get("text"), str) or row.get("label") not in (0, 1):
            raise DataError(f'{where} line {i}: expected {{"text": "...", "label": 0 or 1}}')
        texts.append(row["text"])
        labels.append(int(row["label"]))
    if not texts:
        raise DataError(f"{where} holds no rows")
    if len(set(labels)) < 2:
        raise DataError(f"{where}: every label is {labels[0]}: a probe needs prompts of both classes")
    if min(labels.count(0), labels.count(1)) < 2:
        raise DataError(f"{where}: fewer than 2 prompts of one class: a held-out split needs more")
    return LabelledTexts(texts, labels, hashlib.sha256(raw).hexdigest())


def held_out(labels: list[int], seed: int) -> list[bool]:
    """Which rows are held out: every fourth row of a seeded shuffle of each class."""
    g = torch.Generator().manual_seed(seed)
    test = [False] * len(labels)
    for cls in (0, 1):
        rows = [i for i, y in enumerate(labels) if y == cls]
        for k, j in enumerate(torch.randperm(len(rows), generator=g).tolist()):
            test[rows[j]] = k % HELD_OUT_EVERY == 0
    return test


def split_texts(model, texts: list[str], labels: list[int], seed: int, position: Position = "last"
                ) -> tuple[Labelled, Labelled]:
    """Training and held-out :class:`Labelled` rows (tokenised by ``model``) of a seeded split."""
    test = held_out(labels, seed)
    pick = lambda keep: ([t for t, k in zip(texts, test) if k == keep], [y for y, k in zip(labels, test) if k == keep])  # noqa: E731
    return (Labelled.from_texts(model, *pick(False), position=position),
            Labelled.from_texts(model, *pick(True), position=position))


def recorded_rows(artifact: Path, record: dict[str, Any], model, position: Position) -> Labelled:
    """The rows a probe artifact records as ``{"source", "source_sha256", "seed", "split"}``:
    the file is read next to the artifact only and must still hold the recorded bytes."""
    from mechkit.artifacts.io import beside

    try:
        source = beside(Path(artifact), str(record.get("source")), "task.test.source")
    except ArtifactError as err:
        raise DataError(str(err)) from None
    if not source.exists():
        raise DataError(f"data file {source.name!r} not found next to the probe (in {source.parent}): keep the "
                        "file fit copied there beside the artifact")
    rows = read_labelled(source, "data file")
    if rows.sha256 != record.get("source_sha256"):
        raise DataError(f"{source} changed since the probe was fitted (sha256 differs from source_sha256)")
    seed = record.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise DataError(f"task.test.seed {str(seed)[:40]!r} is not an integer: the probe records no usable split")
    train, test = split_texts(model, rows.texts, rows.labels, seed, position)
    return test if record.get("split", "test") == "test" else train
