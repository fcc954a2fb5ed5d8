"""Tasks over a fixed word vocabulary (the organisms' tasks): seeded generators of
clean/corrupted prompt pairs with a train/held-out split.

>>> from mechkit.tasks import task
>>> t = task("chekhov")
>>> pairs = t.generate(4, seed=0, split="test")
>>> pairs.clean.shape == pairs.corrupted.shape
True
>>> pairs.task["name"], pairs.task["split"]
('chekhov', 'test')

A task's *combination key* (which people hold which secrets in which order, which entity is
asked with which cue phrasing, ...) decides its split: ``test`` draws only combinations that
``train`` never draws, while every single token is seen in training.

Generators are vectorised torch code driven by one ``torch.Generator`` per ``(seed, split)``,
so ``generate(n, seed, split)`` is exactly reproducible and :func:`regenerate` rebuilds the
pairs from ``PromptPairs.task``.
"""

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from mechkit._types import PromptPairs
from mechkit.errors import DataError
from mechkit.tasks._vocab import SPECIALS, build_tokenizer, generator, vocab_digest
from mechkit.tasks.registry import merge_params

SPLITS = ("train", "test")


class Task:
    """A prompt-pair generator. Subclasses set ``words`` and ``defaults`` and implement
    ``_sample`` (raw candidate pairs) and ``_held_out`` (which candidates are test-only).

    ============  ================  ==========================================
    attribute     type              meaning
    ============  ================  ==========================================
    name          str               organism name the task belongs to
    params        dict              generator parameters (JSON-serialisable)
    vocab         list[str]         token strings; token id = list index
    ============  ================  ==========================================
    """

    family: str = ""
    needs_model: bool = False  # generates from its own vocabulary, not a model's tokenizer
    defaults: dict[str, Any] = {}
    train_on_corrupted: bool = False  # also train on corrupted prompts (answer = ``wrong``)
    # what accuracy on the clean and on the corrupted prompts means, for reports
    accuracy_labels: tuple[str, str] = ("accuracy", "corrupted-prompt accuracy")

    def __init__(self, name: str, **params: Any) -> None:
        self.name = name
        self.params: dict[str, Any] = merge_params(name, self.defaults, params)
        self.vocab: list[str] = list(SPECIALS) + self.words()
        self.ids = {w: i for i, w in enumerate(self.vocab)}
        self._tokenizer_dir: Path | None = None

    # --- to implement -------------------------------------------------------------------
    def words(self) -> list[str]:
        raise NotImplementedError

    def _sample(self, gen: torch.Generator, m: int) -> dict[str, Tensor]:
        """``m`` candidate pairs: clean, corrupted [m, pos]; answer, wrong, answer_pos [m]; key [m]."""
        raise NotImplementedError

    def _held_out(self, batch: dict[str, Tensor]) -> Bool[Tensor, " m"]:
        raise NotImplementedError

    def _trainable(self, batch: dict[str, Tensor]) -> Bool[Tensor, " m"]:
        """Candidates the train split may draw (default: every one that is not held out)."""
        return ~self._held_out(batch)

    # --- public -------------------------------------------------------------------------
    def generate(self, n: int, seed: int = 0, split: str = "test", model: Any = None) -> PromptPairs:
        """``n`` prompt pairs from the ``split`` combinations, reproducible from ``seed``
        (``model`` is accepted for a common signature with real-model tasks, and unused).

        Returns PromptPairs with clean/corrupted [n, pos] token ids of this task's vocabulary.
        """
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}: use 'train' or 'test'")
        if n < 0:
            raise DataError(f"n must be >= 0, got {n}")
        gen = generator(seed, split)
        parts: list[dict[str, Tensor]] = []
        have = 0
        while have < n:
            m = max(256, 8 * (n - have))
            batch = self._sample(gen, m)
            keep = self._held_out(batch) if split == "test" else self._trainable(batch)
            batch = {k: v[keep] for k, v in batch.items()}
            parts.append(batch)
            have += int(keep.sum())
        if parts:
            cat = {k: torch.cat([p[k] for p in parts])[:n] for k in parts[0]}
        if n == 0:
            cat = self._empty()
        return PromptPairs(
            cat["clean"], cat["corrupted"], cat["answer"], cat["wrong"], cat["answer_pos"],
            task={"name": self.name, "params": dict(self.params), "seed": int(seed), "n": int(n), "split": split},
        )

    def generate_text(self, n: int, seed: int = 0, split: str = "test") -> list[dict[str, str]]:
        """The same pairs as :meth:`generate`, as strings: ``{clean, corrupted, answer, wrong}``.

        Prompts leave out the leading ``<bos>``: the task's tokenizer and ``model.to_tokens``
        prepend it, giving back exactly the ids of :meth:`generate`.
        """
        pairs = self.generate(n, seed, split)
        out = []
        for i in range(len(pairs)):
            end = int(pairs.answer_pos[i]) + 1
            out.append({
                "clean": self.decode(pairs.clean[i, 1:end]),
                "corrupted": self.decode(pairs.corrupted[i, 1:end]),
                "answer": self.vocab[int(pairs.answer[i])],
                "wrong": self.vocab[int(pairs.wrong[i])],
            })
        return out

    def decode(self, ids: Int[Tensor, " pos"]) -> str:
        return " ".join(self.vocab[int(i)] for i in ids)

    def encode(self, text: str) -> list[int]:
        words = text.split()
        missing = [w for w in words if w not in self.ids]
        if missing:
            raise DataError(f"word {missing[0]!r} is not in the {self.name} vocabulary: use only the task's words")
        return [self.ids[w] for w in words]

    @property
    def tokenizer_dir(self) -> Path:
        """A directory holding this task's tokenizer (``AutoTokenizer.from_pretrained`` loads it):
        the shipped organism's directory when it exists, else one built in a cache."""
        if self._tokenizer_dir is None:
            from mechkit.models import organisms_dir

            shipped = organisms_dir() / self.name
            if (shipped / "tokenizer.json").is_file() and _tokenizer_matches(shipped, self.vocab):
                self._tokenizer_dir = shipped
            else:
                root = Path(os.environ.get("MECHKIT_CACHE", Path(tempfile.gettempdir()) / "mechkit-cache"))
                path = root / "tokenizers" / f"{self.family}-{vocab_digest(self.vocab)}-bos"
                if not (path / "tokenizer.json").is_file():
                    build_tokenizer(self.vocab, path)
                self._tokenizer_dir = path
        return self._tokenizer_dir

    def tokenizer(self):
        """The task's tokenizer, loaded from :attr:`tokenizer_dir`."""
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.tokenizer_dir, local_files_only=True)

    def __repr__(self) -> str:
        return f"Task({self.name!r}, {self.params})"

    def _empty(self) -> dict[str, Tensor]:
        z = torch.zeros(0, dtype=torch.long)
        return {"clean": z[:, None].expand(0, 1), "corrupted": z[:, None].expand(0, 1), "answer": z,
                "wrong": z, "answer_pos": z}


def _tokenizer_matches(path: Path, vocab: list[str]) -> bool:
    import json

    try:
        model = json.loads((path / "tokenizer.json").read_text())["model"]["vocab"]
    except (OSError, ValueError, KeyError):
        return False
    return model == {w: i for i, w in enumerate(vocab)}
