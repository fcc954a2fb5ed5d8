"""Indirect object identification (Wang et al. 2022) in a real model's tokens.

``ioi``: "When Mary and John went to the store, John gave a drink to" -> " Mary" (the indirect
object, IO), against " John" (the subject, S). Templates are those of Wang et al., each in both
name orders: ABBA (IO first: "Mary and John ... John") and BABA (S first: "John and Mary ...
John"); pairs alternate ABBA, BABA, so a batch is balanced. Names, places and objects are kept
only where the tokenizer makes them one token with a leading space, so a clean prompt and its
corrupted partner always have the same token length.

Corruptions (``corruption`` parameter; ``ioi-s2-flip`` is ``ioi`` with ``corruption="s2-flip"``):

- ``abc`` (default): the second mention of S becomes a third name C ("... Bob gave a drink
  to"), so nothing marks either name as the repeated one; logit diff IO - S falls to about 0.
- ``s2-flip``: the second mention of S becomes IO ("... Mary gave a drink to"), so the right
  answer flips to S; ``wrong`` (= S) is the corrupted prompt's answer, and the logit diff
  changes sign.

Templates differ in length, so rows are right-padded and ``answer_pos`` is each row's last
token; ``templates=[k, ...]`` picks them by index into ``TEMPLATES`` (one template: every row
the same length, token positions aligned for by-position patching). The default leaves out the
last one ("Friends A and B found ..."), which SmolLM2-135M answers at chance (3 of 6) while it
gets the other 14 right. The split key is the (IO, S) pair of names.
"""

import random

from mechkit.errors import DataError
from mechkit.tasks.model_task import ModelTask, TokenSource, in_split
from mechkit.tasks.registry import register

# {A} and {B} are the first two mentions (A = IO in ABBA, A = S in BABA), {S} the second S.
TEMPLATES = (
    "Then, {A} and {B} went to the {PLACE}. {S} gave a {OBJECT} to",
    "Then, {A} and {B} had a lot of fun at the {PLACE}. {S} gave a {OBJECT} to",
    "Then, {A} and {B} were working at the {PLACE}. {S} decided to give a {OBJECT} to",
    "Then, {A} and {B} were thinking about going to the {PLACE}. {S} wanted to give a {OBJECT} to",
    "Then, {A} and {B} had a long argument, and afterwards {S} said to",
    "After {A} and {B} went to the {PLACE}, {S} gave a {OBJECT} to",
    "When {A} and {B} got a {OBJECT} at the {PLACE}, {S} decided to give it to",
    "When {A} and {B} got a {OBJECT} at the {PLACE}, {S} decided to give the {OBJECT} to",
    "While {A} and {B} were working at the {PLACE}, {S} gave a {OBJECT} to",
    "While {A} and {B} were commuting to the {PLACE}, {S} gave a {OBJECT} to",
    "After the lunch, {A} and {B} went to the {PLACE}. {S} gave a {OBJECT} to",
    "Afterwards, {A} and {B} went to the {PLACE}. {S} gave a {OBJECT} to",
    "Then, {A} and {B} had a long argument. Afterwards {S} said to",
    "The {PLACE} {A} and {B} went to had a {OBJECT}. {S} gave it to",
    "Friends {A} and {B} found a {OBJECT} at the {PLACE}. {S} gave it to",
)
NAMES = (
    "Aaron Adam Alan Alex Alice Amy Andrew Anna Anthony Arthur Austin Ben Brian Carl Charles "
    "Charlie Chris Daniel David Dean Edward Emily Emma Eric Eva Frank George Grace Henry Ian Jack "
    "Jacob Jake James Jane Jason Jeff Jennifer Jessica John Jordan Joseph Justin Kate Kelly Kevin "
    "Kyle Laura Lisa Louis Lucy Luke Maria Mark Martin Mary Matthew Max Michael Michelle Paul "
    "Peter Rachel Richard Robert Rose Ryan Sam Sarah Scott Sean Simon Sophie Steven Thomas Tom "
    "Tyler Victoria William"
).split()
PLACES = ("store", "garden", "restaurant", "school", "hospital", "office", "house", "station")
OBJECTS = ("ring", "kiss", "bone", "basketball", "computer", "necklace", "drink", "snack")
CORRUPTIONS = ("abc", "s2-flip")


@register("ioi")
class IOITask(ModelTask):
    defaults = {"corruption": "abc", "templates": list(range(len(TEMPLATES) - 1))}

    def _words(self, source: TokenSource, words: tuple[str, ...], what: str) -> list[tuple[str, int]]:
        kept = [(w, i) for w in words if (i := source.single_token(" " + w)) is not None]
        if len(kept) < (3 if what == "names" else 1):
            raise DataError(f"too few {what} are one token in this tokenizer ({len(kept)}): ioi needs them")
        return kept

    def _templates(self) -> list[str]:
        chosen = self.params["templates"]
        bad = [k for k in chosen if not (isinstance(k, int) and 0 <= k < len(TEMPLATES))]
        if bad or not chosen:
            raise DataError(f"templates must be indices 0..{len(TEMPLATES) - 1}, got {chosen!r}")
        return [TEMPLATES[k] for k in chosen]

    def _rows(self, source: TokenSource, rng: random.Random, n: int, split: str) -> list[tuple]:
        corruption = self.params["corruption"]
        if corruption not in CORRUPTIONS:
            raise DataError(f"unknown ioi corruption {corruption!r}: use one of {', '.join(CORRUPTIONS)}")
        names = self._words(source, NAMES, "names")
        places, objects = self._words(source, PLACES, "places"), self._words(source, OBJECTS, "objects")
        templates = self._templates()
        pairs = [(io, s) for io in names for s in names if io != s and in_split("|".join(sorted((io[0], s[0]))), split)]
        if not pairs:
            raise DataError(f"no pair of names falls in the {split} split: use more names")
        rows = []
        while len(rows) < n:
            (io, io_id), (s, s_id) = pairs[int(rng.random() * len(pairs))]
            others = [w for w, _ in names if w not in (io, s)]
            c = others[int(rng.random() * len(others))]
            template = templates[int(rng.random() * len(templates))]
            place = places[int(rng.random() * len(places))][0]
            obj = objects[int(rng.random() * len(objects))][0]
            a, b = (io, s) if len(rows) % 2 == 0 else (s, io)  # ABBA, then BABA
            fill = {"A": a, "B": b, "PLACE": place, "OBJECT": obj}  # every placeholder follows a space
            clean = source.encode(template.format(S=s, **fill))
            corrupted = source.encode(template.format(S=c if corruption == "abc" else io, **fill))
            if len(clean) != len(corrupted):  # cannot happen with one-token names; kept as a guard
                continue
            rows.append((clean, corrupted, io_id, s_id))
        return rows


@register("ioi-s2-flip")
class IOIS2FlipTask(IOITask):
    """``ioi`` whose corrupted prompts repeat IO instead of S (the answer flips to S)."""

    defaults = {**IOITask.defaults, "corruption": "s2-flip"}


def name_positions(pairs) -> dict[str, "torch.Tensor"]:
    """Where each clean ``ioi`` prompt names IO, S (first and second mention) and where it ends:
    ``{"IO", "S1", "S2", "END"}``, each [batch]. IO is the answer token, S the wrong one; every
    template names IO once and S twice."""
    import torch

    clean = pairs.clean
    is_io = clean == pairs.answer[:, None]
    is_s = clean == pairs.wrong[:, None]
    if not (is_io.sum(1) == 1).all() or not (is_s.sum(1) == 2).all():
        raise DataError("not ioi prompts: each clean prompt must name the answer once and the wrong name twice")
    order = torch.arange(clean.shape[1]).expand_as(clean)
    s1 = torch.where(is_s, order, clean.shape[1]).min(1).values
    s2 = torch.where(is_s, order, -1).max(1).values
    return {"IO": is_io.int().argmax(1), "S1": s1, "S2": s2, "END": pairs.answer_pos.clone()}
