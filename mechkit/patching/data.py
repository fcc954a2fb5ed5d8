"""``read_pairs``: your own prompt pairs from CSV or JSONL.

Columns: ``clean``, ``corrupted`` (prompt strings) and either ``answer`` / ``wrong_answer``
(strings, one token each) or ``correct_idx`` / ``incorrect_idx`` (token ids, as in the
EAP-IG library's data files).

>>> pairs = read_pairs("ioi.csv", model)   # doctest: +SKIP
>>> pairs.clean.shape                      # doctest: +SKIP
torch.Size([100, 15])

Rows of different lengths are right-padded and ``answer_pos`` points at each row's last
token. Every row that cannot be used (clean and corrupted of different token lengths,
answers that are not one token of the vocabulary, token ids outside it, prompts longer than
the model's context) is reported at once in a single :class:`~mechkit.errors.DataError`:
how many rows, and the first few with their row numbers (1 = the first data row).

The file must be UTF-8 (a byte-order mark is allowed). ``read_pairs`` records the file's
path and sha256 in ``PromptPairs.task`` (``source``, ``source_sha256``), so a circuit found
on it can be re-checked against the same data.
"""

import csv
import hashlib
import io
import json
import os
import stat
from collections import Counter
from pathlib import Path

import torch

from mechkit._types import PromptPairs
from mechkit.errors import DataError

MAX_FILE_BYTES = 1 << 30  # a prompt file larger than this is refused before it is read
SHOWN_ROWS = 10  # bad rows listed in an error; the rest are counted
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
_PROMPTS = ("clean", "corrupted")
_WORDS = ("answer", "wrong_answer")
_IDS = ("correct_idx", "incorrect_idx")


def read_pairs(path: str | os.PathLike, tokenizer_or_model, *, prepend_bos: bool | None = None) -> PromptPairs:
    """Read and tokenize prompt pairs (see the module docstring).

    Args:
        path: a ``.csv`` file or a ``.jsonl`` file (one JSON object per line).
        tokenizer_or_model: a Hugging Face tokenizer or a HookedTransformer (its tokenizer).
        prepend_bos: put the BOS token before each prompt; defaults to the model's
            ``default_prepend_bos``, or for a bare tokenizer to whether it has a BOS token.
    """
    path = Path(path)
    tokenizer, default_bos, d_vocab, n_ctx = _tokenizer(tokenizer_or_model)
    bos = default_bos if prepend_bos is None else prepend_bos
    rows, need, sha = _load(path)
    by_ids = need[2] == "correct_idx"
    prefix = [tokenizer.bos_token_id] if bos and tokenizer.bos_token_id is not None else []
    unk, unk_text = getattr(tokenizer, "unk_token_id", None), getattr(tokenizer, "unk_token", None)
    problems, cleans, corrupts, answers, wrongs = [], [], [], [], []
    for i, row in enumerate(rows, start=1):
        why = _row_problems(row, need)
        if why:
            problems.append(f"row {i}: " + ", ".join(why))
            continue
        clean = prefix + tokenizer.encode(row["clean"], add_special_tokens=False)
        corrupted = prefix + tokenizer.encode(row["corrupted"], add_special_tokens=False)
        if len(clean) != len(corrupted):
            why.append(f"clean has {len(clean)} tokens, corrupted {len(corrupted)}")
        if n_ctx is not None and max(len(clean), len(corrupted)) > n_ctx:
            why.append(f"the prompts have {max(len(clean), len(corrupted))} tokens, more than the model's context of {n_ctx}")
        pair = []
        for col in need[2:]:
            if by_ids:
                ids = _ids(row[col])
                if ids is None or len(ids) != 1:
                    why.append(f"{col} {_short(row[col])} is not one token id")
                elif not 0 <= ids[0] < d_vocab:
                    why.append(f"{col} {_short(ids[0])} is outside the vocabulary (0..{d_vocab - 1})")
            else:
                ids = tokenizer.encode(str(row[col]), add_special_tokens=False)
                if len(ids) != 1:
                    why.append(f"{col} {_short(row[col])} is {len(ids) or 'no'} tokens, not one")
                elif unk is not None and ids[0] == unk and str(row[col]).strip() != unk_text:
                    why.append(f"{col} {_short(row[col])} is not in the vocabulary (it becomes {unk_text})")
            pair.append(ids[0] if ids else -1)
        if why:
            problems.append(f"row {i}: " + ", ".join(why))
            continue
        cleans.append(clean)
        corrupts.append(corrupted)
        answers.append(pair[0])
        wrongs.append(pair[1])
    if problems:
        raise DataError(_problems_message(path, problems, len(rows)))
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
        task={"name": path.stem[:128] or "pairs", "source": str(path), "source_sha256": sha, "n": len(cleans)},
    )


def check_pairs_file(path: str | os.PathLike) -> int:
    """Check a prompt file as far as it can be without a tokenizer (it exists, is UTF-8 CSV or
    JSONL, has the columns, every row has them with usable values); the number of rows.

    Command-line front ends call this before loading a model, so bad data fails in a second."""
    path = Path(path)
    rows, need, _ = _load(path)
    problems = [f"row {i}: " + ", ".join(why) for i, row in enumerate(rows, start=1) if (why := _row_problems(row, need))]
    if problems:
        raise DataError(_problems_message(path, problems, len(rows)))
    return len(rows)


def _tokenizer(tokenizer_or_model):
    """(tokenizer, default prepend_bos, vocabulary size, context length or None)."""
    from transformer_lens import HookedTransformer

    if isinstance(tokenizer_or_model, HookedTransformer):
        if tokenizer_or_model.tokenizer is None:
            raise DataError("the model has no tokenizer: pass a tokenizer to read_pairs")
        cfg = tokenizer_or_model.cfg
        return tokenizer_or_model.tokenizer, bool(cfg.default_prepend_bos), int(cfg.d_vocab), int(cfg.n_ctx)
    if not hasattr(tokenizer_or_model, "encode"):
        raise DataError(f"expected a tokenizer or a HookedTransformer, got {type(tokenizer_or_model).__name__}")
    bos = getattr(tokenizer_or_model, "bos_token_id", None) is not None
    return tokenizer_or_model, bos, len(tokenizer_or_model), None


def _short(value, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + "...'" + f" ({len(str(value)):,} chars)"


def _problems_message(path: Path, problems: list[str], n_rows: int) -> str:
    shown = "; ".join(p if len(p) <= 300 else p[:297] + "..." for p in problems[:SHOWN_ROWS])
    more = f"; and {len(problems) - SHOWN_ROWS:,} more" if len(problems) > SHOWN_ROWS else ""
    return f"{len(problems):,} of {n_rows:,} rows in {path} cannot be used ({shown}{more}): fix or remove them"


def _load(path: Path) -> tuple[list[dict], list[str], str]:
    """The file's rows, the columns they need, and the file's sha256; file-level problems raise."""
    rows, columns, sha = _read_rows(path)
    by_ids = "correct_idx" in columns and "answer" not in columns
    need = list(_PROMPTS) + list(_IDS if by_ids else _WORDS)
    missing = [c for c in need if c not in columns]
    if missing:
        found = ", ".join(_short(c, 30) for c in columns[:10]) + (", ..." if len(columns) > 10 else "")
        raise DataError(
            f"{path} lacks columns {missing} (it has {found or 'none'}): it needs clean, corrupted and "
            "answer, wrong_answer (or correct_idx, incorrect_idx)"
        )
    return rows, need, sha


def _row_problems(row: dict, need: list[str]) -> list[str]:
    """What makes a row unusable before tokenizing: missing columns, prompts that are not text."""
    if "_fields" in row:
        return [f"it has {row['_fields']} fields, the header has {row['_header']}"]
    missing = [c for c in need if c not in row]
    if missing:
        return [f"it lacks {', '.join(missing)}"]
    why = []
    for col in need:
        value = row[col]
        if col in _IDS:
            if _ids(value) is None:
                why.append(f"{col} {_short(value)} is not a token id")
        elif not isinstance(value, str):
            why.append(f"{col} is a {type(value).__name__}, not a string")
        elif col in _PROMPTS and not value.strip():
            why.append(f"{col} is empty")
    return why


def _read_rows(path: Path) -> tuple[list[dict], list[str], str]:
    """Rows (dicts), the column names, and the sha256 of the file's bytes."""
    try:
        st = path.stat()
    except OSError:
        raise DataError(f"no such file {path}: pass a .csv or .jsonl file of prompt pairs") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise DataError(f"{path} is {kind}: pass a .csv or .jsonl file of prompt pairs")
    if st.st_size > MAX_FILE_BYTES:
        raise DataError(f"{path} is {st.st_size:,} bytes, more than the {MAX_FILE_BYTES:,} a prompt file may have: split it")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}") from None
    sha = hashlib.sha256(raw).hexdigest()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(
            f"{path} is not UTF-8 text (byte 0x{raw[err.start]:02x} on line {line}): save it as UTF-8"
        ) from None
    if path.suffix.lower() in JSONL_SUFFIXES:
        rows, columns = _jsonl_rows(path, text)
    else:
        rows, columns = _csv_rows(path, text)
    if not rows:
        raise DataError(f"{path} has no rows: add a header and at least one prompt pair")
    return rows, columns, sha


def _jsonl_rows(path: Path | str, text: str) -> tuple[list[dict], list[str]]:
    """One JSON object per non-blank line; ``path`` names the file in messages (with the line)."""
    rows = []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except RecursionError:
            raise DataError(f"{path} line {i} nests too deeply: write one flat object per line") from None
        except ValueError:  # JSONDecodeError, or an integer with too many digits
            raise DataError(f"{path} line {i} is not JSON: write one object per line") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path} line {i} is not a JSON object: write one object per line")
        rows.append(obj)
    return rows, (list(rows[0]) if rows else [])


def _csv_rows(path: Path, text: str) -> tuple[list[dict], list[str]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    rows: list[dict] = []
    header: list[str] | None = None
    try:
        for record in reader:
            if not record or (len(record) == 1 and not record[0].strip()):
                continue  # blank line
            if header is None:
                header = [name.strip() for name in record]
                twice = sorted(name for name, k in Counter(header).items() if k > 1)
                if twice:
                    raise DataError(f"{path} names column {_short(twice[0], 30)} twice: keep one of them")
                continue
            if len(record) != len(header):
                rows.append({"_fields": len(record), "_header": len(header)})
            else:
                rows.append(dict(zip(header, record)))
    except csv.Error as err:
        if "field larger than field limit" in str(err):
            raise DataError(
                f"{path} line {reader.line_num} has a field over {csv.field_size_limit():,} characters: "
                "prompts that long fit no model's context; shorten it"
            ) from None
        raise DataError(f"{path} line {reader.line_num} is not valid CSV ({err}): fix the quoting") from None
    return rows, header or []


def _ids(value) -> list[int] | None:
    """A token id column: an int, a numeric string, or a (JSON) list of ids."""
    if isinstance(value, str):
        value = value.strip()
        if len(value) > 1000:
            return None
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
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
