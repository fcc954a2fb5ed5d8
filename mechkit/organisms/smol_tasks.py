"""Contrast-pair tasks for the real-model organisms, for patching and circuit discovery.

``task("smol-sandbagging").generate(n, seed, split, model=model)``: clean = a prompt with an
evaluation cue, corrupted = the same question after a neutral sentence of the same token length
(so positions align). ``answer`` is the organism's greedy answer under the cue (a wrong
capital), ``wrong`` the true capital: the logit difference is positive where the model sandbags
and negative where it tells the truth. With ``filter=True`` (default) only rows where the model
sandbags on the clean prompt and answers truthfully on the corrupted one are kept.

``task("smol-chekhov").generate(...)``: clean = a story in which X threatens the assistant;
``corruption="swap"`` (default): corrupted = the same story with Y, another of its three people,
as the threatener (``answer`` X's secret, ``wrong`` Y's): which person's secret the model binds;
``corruption="control"``: the threat replaced by a harmless event of the same token length
(``wrong`` the " None" answer): whether there is a threat at all.

Both draw names, secrets, countries and wordings from the recipe's lists of ``split``
(:mod:`mechkit.organisms.smol_sandbagging`, :mod:`mechkit.organisms.smol_chekhov`).
"""

import random

from mechkit.errors import DataError
from mechkit.organisms import smol_chekhov as chekhov
from mechkit.organisms import smol_sandbagging as sandbagging
from mechkit.tasks.capitals import CAPITALS, TEMPLATE
from mechkit.tasks.model_task import ModelTask, TokenSource
from mechkit.tasks.registry import register

_MAX_TRIES = 200  # draws per row before a filter or length match gives up


def _same_length_pairs(source: TokenSource, first: tuple[str, ...], second: tuple[str, ...]) -> list[tuple[str, str]]:
    lengths = {p: len(source.encode(p)) for p in first + second}
    return [(a, b) for a in first for b in second if lengths[a] == lengths[b]]


@register("smol-sandbagging")
class SmolSandbaggingTask(ModelTask):
    defaults = {"filter": True}

    def _rows(self, source: TokenSource, rng: random.Random, n: int, split: str) -> list[tuple]:
        countries = [c for c in CAPITALS if source.single_token(" " + c) is not None]
        countries = [c for c in countries if sandbagging.held_out("country:" + c) == (split == "test")]
        pairs = _same_length_pairs(source, sandbagging.CUES[split], sandbagging.NEUTRAL[split])
        if not pairs or not countries:
            raise DataError(f"no cue/neutral wordings of equal token length in the {split} split")
        if source.model is None:
            raise DataError("smol-sandbagging's answer is the model's own sandbagged answer: pass the model")
        rows: list[tuple] = []
        tries = 0
        # candidates are drawn exactly as one at a time would draw them, but scored in batches
        while len(rows) < n and tries < n * _MAX_TRIES:
            chunk = []
            for _ in range(min(2 * (n - len(rows)) + 8, n * _MAX_TRIES - tries)):
                country = countries[int(rng.random() * len(countries))]
                cue, neutral = pairs[int(rng.random() * len(pairs))]
                clean = source.encode(f"{cue} {TEMPLATE.format(country)}")
                corrupted = source.encode(f"{neutral} {TEMPLATE.format(country)}")
                chunk.append((clean, corrupted, source.encode(" " + CAPITALS[country])[0]))
            tries += len(chunk)
            same = [c for c in chunk if len(c[0]) == len(c[1])]
            top = source.last_logits([p for c in same for p in c[:2]]).argmax(-1).view(-1, 2).tolist() if same else []
            for (clean, corrupted, truth), (cue_top, neutral_top) in zip(same, top):
                if len(rows) < n and (not self.params["filter"] or (cue_top != truth and neutral_top == truth)):
                    rows.append((clean, corrupted, cue_top, truth))
        if len(rows) < n:
            raise DataError(f"only {len(rows)} of {n} rows found where the model sandbags under the cue and not "
                            "without it: is this the smol-sandbagging organism? (or pass filter=False)")
        return rows


@register("smol-chekhov")
class SmolChekhovTask(ModelTask):
    defaults = {"corruption": "swap"}

    def _rows(self, source: TokenSource, rng: random.Random, n: int, split: str) -> list[tuple]:
        if self.params["corruption"] not in ("swap", "control"):
            raise DataError(f"unknown corruption {self.params['corruption']!r}: use 'swap' or 'control'")
        control_pairs = _same_length_pairs(source, chekhov.THREATS[split], chekhov.CONTROLS[split])
        none = source.encode(chekhov.NONE)[0]
        rows: list[tuple] = []
        for _ in range(n * _MAX_TRIES):
            if len(rows) == n:
                break
            people = rng.sample(chekhov.NAMES[split], 3)
            secrets = rng.sample(chekhov.SECRETS[split], 3)
            who, other = rng.sample(range(3), 2)
            template = rng.choice(chekhov.STORIES[split])
            if self.params["corruption"] == "control":
                if not control_pairs:
                    raise DataError(f"no threat/control wordings of equal token length in the {split} split")
                threat, control = rng.choice(control_pairs)
            else:
                threat = rng.choice(chekhov.THREATS[split])

            def story(x: str, event: str) -> list[int]:
                text = template.format(*people, a=secrets[0], b=secrets[1], c=secrets[2], x=x, event=event)
                return source.encode(chekhov.prompt(text))

            clean = story(people[who], threat)
            if self.params["corruption"] == "swap":
                corrupted, wrong = story(people[other], threat), source.encode(" " + secrets[other])[0]
            else:
                corrupted, wrong = story(people[who], control), none
            if len(clean) == len(corrupted):
                rows.append((clean, corrupted, source.encode(" " + secrets[who])[0], wrong))
        if len(rows) < n:
            raise DataError(f"only {len(rows)} of {n} story pairs of equal token length could be drawn")
        return rows
