"""``read_pairs``: your own prompt pairs from CSV or JSONL.

Columns: ``clean``, ``corrupted`` (prompt strings) and either ``answer`` / ``wrong_answer``
(strings, one token each) or ``correct_idx`` / ``incorrect_idx`` (token ids, as in the
EAP-IG library's data files).

>>> pairs = read_pairs("ioi.csv", model)   # doctest: +SKIP
>>> pairs.clean.shape                      # doctest: +SKIP
torch.Size([100, 15])

Rows of different lengths are right-padded and ``answer_pos`` points at each row's last
token. Every row that cannot be used (clean and corrupted of different token lengths,
answers that are not one token) is reported at once, with its row number (1 = the first
data row), in a single :class:`~mechkit.errors.DataError`.
"""

import csv
import json
import os
from pathlib import Path

import torch

from mechkit._types import PromptPairs
from mechkit.errors import DataError


def read_pairs(path: str | os.PathLike, tokenizer_or_model, *, prepend_bos: bool | None = None) -> PromptPairs:
    """Read and tokenize prompt pairs (see the module docstring).

    Args:
        path: a ``.csv`` file or a ``.jsonl`` file (one JSON object per line).
        tokenizer_or_model: a Hugging Face tokenizer or a HookedTransformer (its tokenizer).
        prepend_bos: put the BOS token before each prompt; defaults to the model's
            ``default_prepend_bos``, or for a bare tokenizer to whether it has a BOS token.
    """
    path = Path(path)
    tokenizer, default_bos = _tokenizer(tokenizer_or_model)
    bos = default_bos if prepend_bos is None else prepend_bos
    rows = _read_rows(path)
    by_ids = "correct_idx" in rows[0] and "answer" not in rows[0]
    need = ["clean", "corrupted"] + (["correct_idx", "incorrect_idx"] if by_ids else ["answer", "wrong_answer"])
    missing = [c for c in need if c not in rows[0]]
    if missing:
        raise DataError(
            f"{path} lacks columns {missing}: it needs clean, corrupted and answer, wrong_answer "
            "(or correct_idx, incorrect_idx)"
        )
    prefix = [tokenizer.bos_token_id] if bos and tokenizer.bos_token_id is not None else []
    problems, cleans, corrupts, answers, wrongs = [], [], [], [], []
    for i, row in enumerate(rows, start=1):
        clean = prefix + tokenizer.encode(str(row["clean"]), add_special_tokens=False)
        corrupted = prefix + tokenizer.encode(str(row["corrupted"]), add_special_tokens=False)
        why = []
        if len(clean) != len(corrupted):
            why.append(f"clean has {len(clean)} tokens, corrupted {len(corrupted)}")
        pair = []
        for col in need[2:]:
            ids = _ids(row[col]) if by_ids else tokenizer.encode(str(row[col]), add_special_tokens=False)
            if ids is None or len(ids) != 1:
                n = "no" if not ids else len(ids)
                why.append(f"{col} {row[col]!r} is {n} tokens, not one")
            pair.append(ids[0] if ids else -1)
        if why:
            problems.append(f"row {i}: " + ", ".join(why))
            continue
        cleans.append(clean)
        corrupts.append(corrupted)
        answers.append(pair[0])
        wrongs.append(pair[1])
    if problems:
        raise DataError(
            f"{len(problems)} of {len(rows)} rows in {path} cannot be used ({'; '.join(problems)}): fix or remove them"
        )
    pad = next((t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id) if t is not None), 0)
    width = max(len(c) for c in cleans)
    clean_t = torch.full((len(cleans), width), pad, dtype=torch.long)
    corrupt_t = clean_t.clone()
    for j, (c, k) in enumerate(zip(cleans, corrupts)):
        clean_t[j, : len(c)] = torch.tensor(c)
        corrupt_t[j, : len(k)] = torch.tensor(k)
    return PromptPairs(
        clean_t, corrupt_t, torch.tensor(answers), torch.tensor(wrongs),
        torch.tensor([len(c) - 1 for c in cleans]),
        task={"name": path.stem, "source": str(path), "n": len(cleans)},
    )


def _tokenizer(tokenizer_or_model):
    from transformer_lens import HookedTransformer

    if isinstance(tokenizer_or_model, HookedTransformer):
        if tokenizer_or_model.tokenizer is None:
            raise DataError("the model has no tokenizer: pass a tokenizer to read_pairs")
        return tokenizer_or_model.tokenizer, bool(tokenizer_or_model.cfg.default_prepend_bos)
    if not hasattr(tokenizer_or_model, "encode"):
        raise DataError(f"expected a tokenizer or a HookedTransformer, got {type(tokenizer_or_model).__name__}")
    return tokenizer_or_model, getattr(tokenizer_or_model, "bos_token_id", None) is not None


def _read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        raise DataError(f"no such file {path}: pass a .csv or .jsonl file of prompt pairs")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        rows = []
        for i, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                raise DataError(f"{path} line {i} is not JSON: write one object per line") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path} line {i} is not a JSON object: write one object per line")
            rows.append(obj)
    else:
        rows = list(csv.DictReader(text.splitlines()))
    if not rows:
        raise DataError(f"{path} has no rows: add a header and at least one prompt pair")
    return rows


def _ids(value) -> list[int] | None:
    """A token id column: an int, a numeric string, or a (JSON) list of ids."""
    if isinstance(value, str):
        value = value.strip()
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return [value]
    if isinstance(value, float) and value.is_integer():
        return [int(value)]
    if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return value
    return None
