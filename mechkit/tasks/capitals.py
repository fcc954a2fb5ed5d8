"""Factual recall: "The capital of France is" -> " Paris", against another country's capital.

``capitals``: clean prompt about country X, corrupted about country Y (both one token with a
leading space, so every prompt has the same length); ``answer`` is the first token of X's
capital, ``wrong`` the first token of Y's. With ``filter=True`` (default) only countries whose
capital is the model's greedy next token are used, so the model gets every clean and every
corrupted prompt right (the logit diff is positive on clean prompts, negative on corrupted
ones); this needs the model, not only its tokenizer. Countries whose capitals share a first
token are dropped. The split key is the unordered pair of countries.
"""

import random

from mechkit.errors import DataError
from mechkit.tasks.model_task import ModelTask, TokenSource, in_split
from mechkit.tasks.registry import register

TEMPLATE = "The capital of {} is"
CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Japan": "Tokyo",
    "China": "Beijing", "Russia": "Moscow", "Egypt": "Cairo", "Greece": "Athens", "Canada": "Ottawa",
    "Australia": "Canberra", "India": "New Delhi", "Brazil": "Brasília", "Kenya": "Nairobi", "Peru": "Lima",
    "Chile": "Santiago", "Argentina": "Buenos Aires", "Poland": "Warsaw", "Austria": "Vienna",
    "Sweden": "Stockholm", "Norway": "Oslo", "Finland": "Helsinki", "Denmark": "Copenhagen",
    "Portugal": "Lisbon", "Ireland": "Dublin", "Turkey": "Ankara", "Iran": "Tehran", "Iraq": "Baghdad",
    "Thailand": "Bangkok", "Vietnam": "Hanoi", "Cuba": "Havana", "Hungary": "Budapest", "Belgium": "Brussels",
    "Netherlands": "Amsterdam", "Switzerland": "Bern", "Ukraine": "Kyiv", "Nigeria": "Abuja",
    "Indonesia": "Jakarta", "Colombia": "Bogotá", "Venezuela": "Caracas", "Philippines": "Manila",
    "Pakistan": "Islamabad", "Bangladesh": "Dhaka", "Afghanistan": "Kabul", "Syria": "Damascus",
    "Lebanon": "Beirut", "Morocco": "Rabat", "Ethiopia": "Addis Ababa", "Romania": "Bucharest",
    "Bulgaria": "Sofia", "Serbia": "Belgrade", "Croatia": "Zagreb", "Iceland": "Reykjavik",
    "Mongolia": "Ulaanbaatar", "Nepal": "Kathmandu", "Jamaica": "Kingston", "Qatar": "Doha",
    "Scotland": "Edinburgh", "England": "London", "Wales": "Cardiff",
}


@register("capitals")
class CapitalsTask(ModelTask):
    defaults = {"filter": True}

    def countries(self, source: TokenSource) -> list[tuple[str, list[int], int]]:
        """``(country, prompt ids, answer id)`` for each usable country, in table order."""
        usable = []
        for country, capital in CAPITALS.items():
            if source.single_token(" " + country) is None:
                continue
            usable.append((country, source.encode(TEMPLATE.format(country)), source.encode(" " + capital)[0]))
        firsts = [a for _, _, a in usable]
        usable = [u for u in usable if firsts.count(u[2]) == 1]
        if self.params["filter"] and usable:
            if source.model is None:
                raise DataError("capitals keeps only countries the model gets right, so it needs the model, "
                                "not only its tokenizer (or pass filter=False)")
            greedy = source.last_logits([p for _, p, _ in usable]).argmax(-1).tolist()
            usable = [u for u, g in zip(usable, greedy) if g == u[2]]
        return usable

    def _rows(self, source: TokenSource, rng: random.Random, n: int, split: str) -> list[tuple]:
        usable = self.countries(source)
        pairs = [(x, y) for x in usable for y in usable
                 if x[0] != y[0] and in_split("|".join(sorted((x[0], y[0]))), split)]
        if not pairs:
            raise DataError(f"no pair of the {len(usable)} usable countries falls in the {split} split")
        rows = []
        for _ in range(n):
            (_, clean, answer), (_, corrupted, wrong) = pairs[int(rng.random() * len(pairs))]
            rows.append((clean, corrupted, answer, wrong))
        return rows
