"""Induction on a real model: a random-token sequence, repeated.

``repeated-tokens`` (the name ``induction`` belongs to the induction organism's task): a prompt
is ``S S[:-1]`` for ``S`` a sequence of ``seq_len`` distinct random tokens from the model's
vocabulary (special and added tokens excluded), and the answer is ``S[-1]``, the token that
followed the last token's earlier occurrence. Every prompt has the same length, 2 * seq_len - 1
(plus BOS).

Corruptions (``corruption`` parameter):

- ``fresh`` (default): the first half is a fresh random sequence ``R``, so nothing repeats
  (``R S[:-1]``); ``wrong`` is ``R[-1]``, the token in the answer's place in ``R``, and the
  logit diff falls to about 0.
- ``swap``: only the answer's first occurrence changes, ``S[-1]`` -> a fresh token ``W``; the
  corrupted prompt's induction answer is ``W`` (= ``wrong``), so the logit diff changes sign.

The split only selects the random stream: train and test draw independent sequences.
"""

import random

from mechkit.errors import DataError
from mechkit.tasks.model_task import ModelTask, TokenSource
from mechkit.tasks.registry import register

CORRUPTIONS = ("fresh", "swap")


@register("repeated-tokens")
class RepeatedTokensTask(ModelTask):
    defaults = {"seq_len": 16, "corruption": "fresh"}

    def _rows(self, source: TokenSource, rng: random.Random, n: int, split: str) -> list[tuple]:
        seq_len, corruption = self.params["seq_len"], self.params["corruption"]
        if corruption not in CORRUPTIONS:
            raise DataError(f"unknown repeated-tokens corruption {corruption!r}: use one of {', '.join(CORRUPTIONS)}")
        if not (isinstance(seq_len, int) and seq_len >= 2):
            raise DataError(f"seq_len must be an integer >= 2, got {seq_len!r}")
        special = source.special_ids()
        pool = [i for i in range(len(source.tokenizer)) if i not in special]
        rows = []
        for _ in range(n):
            drawn = rng.sample(pool, 2 * seq_len)
            seq, fresh = drawn[:seq_len], drawn[seq_len:]
            first = fresh if corruption == "fresh" else seq[:-1] + fresh[-1:]
            rows.append((seq + seq[:-1], first + seq[:-1], seq[-1], first[-1]))
        return rows
