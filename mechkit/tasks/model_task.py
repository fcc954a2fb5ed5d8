"""Tasks over a real model's tokenizer: prompt pairs built with the model's own tokens.

>>> from mechkit.tasks import task
>>> pairs = task("ioi").generate(16, seed=0, model=model)   # doctest: +SKIP
>>> pairs.task["name"], pairs.task["params"]["corruption"]    # doctest: +SKIP
('ioi', 'abc')

``generate(n, seed, split, model=...)`` takes a HookedTransformer (its ``tokenizer``) or, for
tasks that need no forward pass, a bare tokenizer. Prompts start with BOS as
``model.cfg.default_prepend_bos`` says (``prepend_bos=None``, the default, as
:func:`mechkit.patching.read_pairs` and ``model.to_tokens`` do; for a bare tokenizer, whether it
adds a BOS itself), or as ``prepend_bos=True/False`` says. The
recorded ``PromptPairs.task`` holds the resolved parameters: ``prepend_bos`` and ``tokenizer``
(a digest of the tokenizer's vocabulary) included, so ``regenerate(pairs.task, model)`` rebuilds
the same pairs and refuses a model with a different tokenizer.

Splits: each task draws from a stable hash of a *combination key* (for IOI the pair of names,
for capitals the pair of countries): ``test`` only draws keys ``train`` never draws.
"""

import hashlib
import json
import random
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from mechkit._types import PromptPairs
from mechkit.errors import DataError
from mechkit.tasks.registry import merge_params

SPLITS = ("train", "test")
HELD_OUT_BUCKETS = 5  # one key in five is held out for the test split


class ModelTask:
    """A prompt-pair generator over a model's tokenizer. Subclasses set ``defaults`` and
    implement ``_rows``.

    ============  ================  ==========================================
    attribute     type              meaning
    ============  ================  ==========================================
    name          str               registered task name
    params        dict              generator parameters (JSON-serialisable)
    ============  ================  ==========================================
    """

    needs_model: bool = True
    defaults: dict[str, Any] = {}

    def __init__(self, name: str, **params: Any) -> None:
        self.name = name
        common = {"prepend_bos": None, "tokenizer": None}  # None: the model's convention; any tokenizer
        self.params: dict[str, Any] = merge_params(name, {**common, **self.defaults}, params)

    # --- to implement -------------------------------------------------------------------
    def _rows(self, source: "TokenSource", rng: random.Random, n: int, split: str) -> list[tuple]:
        """``n`` rows ``(clean ids, corrupted ids, answer id, wrong id)``, ids without the BOS."""
        raise NotImplementedError

    # --- public -------------------------------------------------------------------------
    def generate(self, n: int, seed: int = 0, split: str = "test", model: Any = None) -> PromptPairs:
        """``n`` prompt pairs of ``split``, reproducible from ``seed``, in ``model``'s tokens.

        Returns PromptPairs with clean/corrupted [n, pos] (right-padded where prompts differ in
        length; ``answer_pos`` [n] is each row's last token).
        """
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}: use 'train' or 'test'")
        if n < 0:
            raise DataError(f"n must be >= 0, got {n}")
        if model is None:
            raise DataError(f"task {self.name!r} builds prompts with a model's tokenizer: pass model=")
        source = TokenSource.of(model, self.params["prepend_bos"])
        if self.params["tokenizer"] not in (None, source.digest):
            raise DataError(f"task {self.name!r} was generated with tokenizer {self.params['tokenizer']}, but this "
                            f"model's tokenizer is {source.digest}: use the model the pairs were made with")
        params = {**self.params, "prepend_bos": source.prepend_bos, "tokenizer": source.digest}
        rng = random.Random(f"{self.name}|{int(seed)}|{split}")
        rows = self._rows(source, rng, n, split) if n else []
        prefix = [source.tokenizer.bos_token_id] if source.prepend_bos else []
        clean = [prefix + list(r[0]) for r in rows]
        corrupted = [prefix + list(r[1]) for r in rows]
        return PromptPairs(
            _padded(clean, source.pad_id), _padded(corrupted, source.pad_id),
            torch.tensor([r[2] for r in rows], dtype=torch.long), torch.tensor([r[3] for r in rows], dtype=torch.long),
            torch.tensor([len(c) - 1 for c in clean], dtype=torch.long),
            task={"name": self.name, "params": params, "seed": int(seed), "n": int(n), "split": split},
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.params})"


class TokenSource:
    """What a task reads from a model: its tokenizer, BOS convention, and (optionally) logits."""

    def __init__(self, tokenizer: Any, prepend_bos: bool, model: Any = None) -> None:
        self.tokenizer, self.prepend_bos, self.model = tokenizer, prepend_bos, model
        if prepend_bos and tokenizer.bos_token_id is None:
            raise DataError("prepend_bos is set but the tokenizer has no BOS token: pass prepend_bos=False")
        self.pad_id = next((t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id) if t is not None), 0)
        self._digest: str | None = None

    @staticmethod
    def of(model: Any, prepend_bos: bool | None) -> "TokenSource":
        """From a HookedTransformer (or anything with ``tokenizer``) or a bare tokenizer."""
        tokenizer = getattr(model, "tokenizer", None)
        if tokenizer is None:
            if not hasattr(model, "encode"):
                raise DataError(f"expected a model with a tokenizer or a tokenizer, got {type(model).__name__}")
            tokenizer, model = model, None
        if prepend_bos is None:  # the model's convention, else the tokenizer's own
            default = getattr(getattr(model, "cfg", None), "default_prepend_bos", None)
            bos = tokenizer.bos_token_id
            prepend_bos = default if default is not None else bos is not None and tokenizer.encode("a")[:1] == [bos]
        return TokenSource(tokenizer, bool(prepend_bos), model)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def single_token(self, text: str) -> int | None:
        """The id of ``text`` when it is exactly one token, else None."""
        ids = self.encode(text)
        return ids[0] if len(ids) == 1 else None

    @property
    def digest(self) -> str:
        """A short hash of the tokenizer's vocabulary (token -> id)."""
        if self._digest is None:
            vocab = sorted(self.tokenizer.get_vocab().items(), key=lambda kv: kv[1])
            self._digest = hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:16]
        return self._digest

    def special_ids(self) -> set[int]:
        """Special and added tokens (never used as random tokens)."""
        ids = set(self.tokenizer.all_special_ids)
        ids.update(getattr(self.tokenizer, "added_tokens_decoder", {}) or {})
        return ids

    @torch.no_grad()
    def last_logits(self, prompts: list[list[int]], batch: int = 32) -> Tensor:
        """Next-token logits [len(prompts), d_vocab] after each prompt (ids without BOS)."""
        if self.model is None:
            raise DataError("this needs the model's logits, not only its tokenizer: pass the model")
        device = _device(self.model)
        prefix = [self.tokenizer.bos_token_id] if self.prepend_bos else []
        out = []
        for start in range(0, len(prompts), batch):
            rows = [prefix + p for p in prompts[start:start + batch]]
            tokens = _padded(rows, self.pad_id).to(device)
            logits = self.model(tokens)
            logits = getattr(logits, "logits", logits)  # Hugging Face models return an output object
            last = torch.tensor([len(r) - 1 for r in rows], device=logits.device)
            out.append(logits[torch.arange(len(rows), device=logits.device), last].float().cpu())
        return torch.cat(out) if out else torch.zeros(0, 0)


def held_out(key: str) -> bool:
    """Whether combination ``key`` belongs to the test split (a stable hash, one in five)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % HELD_OUT_BUCKETS == 0


def in_split(key: str, split: str) -> bool:
    return held_out(key) == (split == "test")


def _padded(rows: list[list[int]], pad: int) -> Int[Tensor, "batch pos"]:
    width = max((len(r) for r in rows), default=1)
    out = torch.full((len(rows), width), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out


def _device(model: Any) -> torch.device:
    cfg_device = getattr(getattr(model, "cfg", None), "device", None)
    if cfg_device is not None:
        return torch.device(cfg_device)
    return next(model.parameters()).device
