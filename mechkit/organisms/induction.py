"""The ``induction`` task: continue a repeated random-token segment.

A prompt is ``<bos> A S B S[:j]`` (all tokens distinct; ``A``, ``B`` random fillers, ``S`` a
random segment) and the answer is ``S[j]``, the token that followed the last token's earlier
occurrence. Every prompt has the same length. Corrupted prompt: in the first occurrence, the
query token ``S[j-1]`` swaps places with a filler token in ``A``, so the query is now followed
by a different token ``W`` (the ``wrong`` answer)::

    clean      <bos> k q | a b c d e | m n o | a b c      -> d
    corrupted  <bos> c q | a b k d e | m n o | a b c      -> q

The held-out split holds (query token, answer token) pairs training never scores: a test pair's
clean and corrupted (query, answer) pairs are both held out; a training pair's both are not.
"""

import torch
from jaxtyping import Bool
from torch import Tensor

from mechkit.tasks._vocab import BOS, SPECIALS, mix_hash, random_perm_rows
from mechkit.tasks import Task, register


@register("induction", "wired-induction")
class InductionTask(Task):
    family = "induction"
    train_on_corrupted = True
    defaults = {"n_tokens": 48, "body_len": 24, "segment_len": 8, "min_repeat": 2, "min_prefix": 2,
                "held_out_buckets": 5}

    def words(self) -> list[str]:
        p = self.params
        s, j0, a0 = p["segment_len"], p["min_repeat"], p["min_prefix"]
        if not (1 <= j0 < s and a0 >= 2 and p["body_len"] - s - (s - 1) >= a0 and p["body_len"] <= p["n_tokens"]):
            from mechkit.errors import SpecError

            raise SpecError(f"inconsistent induction parameters {p}: need 1<=min_repeat<segment_len, "
                            "min_prefix>=2, body_len-segment_len-(segment_len-1)>=min_prefix, body_len<=n_tokens")
        return [f"t{i:02d}" for i in range(p["n_tokens"])]

    def _sample(self, gen: torch.Generator, m: int) -> dict[str, Tensor]:
        p = self.params
        L, s = p["body_len"], p["segment_len"]
        perm = random_perm_rows(gen, m, p["n_tokens"]) + len(SPECIALS)  # [m, n_tokens] token ids
        j = torch.randint(p["min_repeat"], s, (m,), generator=gen)  # repeat length, answer = S[j]
        ab = L - s - j  # filler tokens in A and B together
        a = p["min_prefix"] + (torch.rand(m, generator=gen) * (ab - p["min_prefix"] + 1)).long()
        r = (torch.rand(m, generator=gen) * (a - 1)).long()  # swap partner in A, r + 1 < a
        pos = torch.arange(L)[None, :]  # [1, L]
        first = L - j[:, None]  # body positions >= first are the repeat
        src = torch.where(pos < first, pos, a[:, None] + pos - first)  # index into perm
        rows = torch.arange(m)
        q_idx = a + j - 1  # index of the query token's first occurrence
        swapped = perm.clone()
        swapped[rows, q_idx] = perm[rows, r]
        swapped[rows, r] = perm[rows, q_idx]
        clean_body = perm.gather(1, src)
        corrupt_body = torch.where(pos < first, swapped.gather(1, src), clean_body)
        bos = torch.full((m, 1), BOS)
        answer, wrong = perm[rows, a + j], perm[rows, r + 1]
        query = perm[rows, q_idx]
        return {
            "clean": torch.cat([bos, clean_body], 1), "corrupted": torch.cat([bos, corrupt_body], 1),
            "answer": answer, "wrong": wrong, "answer_pos": torch.full((m,), L),
            "key": (query - len(SPECIALS)) * p["n_tokens"] + (answer - len(SPECIALS)),
            "key_corrupted": (query - len(SPECIALS)) * p["n_tokens"] + (wrong - len(SPECIALS)),
        }

    def _test_keys(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        k = self.params["held_out_buckets"]
        return mix_hash(batch["key"], k) == 0, mix_hash(batch["key_corrupted"], k) == 0

    def _held_out(self, batch: dict[str, Tensor]) -> Bool[Tensor, " m"]:
        clean, corrupted = self._test_keys(batch)
        return clean & corrupted

    def _trainable(self, batch: dict[str, Tensor]) -> Bool[Tensor, " m"]:
        clean, corrupted = self._test_keys(batch)
        return ~clean & ~corrupted
