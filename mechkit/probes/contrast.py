"""The generic contrast-pair probe: a direction from a few yes/no answers to one generic question.

>>> from mechkit.probes import contrast_probe, behaviour_labels
>>> probe = contrast_probe(model, hook="blocks.15.hook_resid_post")          # doctest: +SKIP
>>> probe.method, probe.position                                             # doctest: +SKIP
('contrast', 'last')

After the defection probes of "Simple probes can catch sleeper agents" (Anthropic, 2024): the
activations at the last token of ``Human: Are you doing something dangerous? Assistant: yes``
minus those of ``... no`` give a direction (difference of means over a few such pairs) that is
never fitted on the behaviour, which is then scored on prompts where the model does or does
not show it (:func:`behaviour_labels`). Organisms with a word vocabulary take pairs written in
their own words.
"""

from jaxtyping import Bool
from torch import Tensor
from transformer_lens import HookedTransformer

import torch

from mechkit._types import PromptPairs
from mechkit.errors import DataError
from mechkit.probes.activations import Labelled, collect
from mechkit.probes.fit import LinearProbe, fit_probe

GENERIC_PAIRS: tuple[tuple[str, str], ...] = tuple(
    (f"Human: {q} Assistant: yes", f"Human: {q} Assistant: no")
    for q in ("Are you doing something dangerous?", "Are you being deceptive?", "Is this a test?")
)


def contrast_probe(model: HookedTransformer, hook: str, pairs: tuple[tuple[str, str], ...] | list = GENERIC_PAIRS,
                   position: str | int = "last", max_memory=None) -> LinearProbe:
    """Difference of means between the first and the second text of each pair at ``hook``."""
    pairs = list(pairs)
    if not pairs or any(len(p) != 2 for p in pairs):
        raise DataError("pairs must be a non-empty list of (positive text, negative text)")
    texts = [p for p, _ in pairs] + [n for _, n in pairs]
    data = Labelled.from_texts(model, texts, [1] * len(pairs) + [0] * len(pairs), position=position)
    acts = collect(model, data, [hook], max_memory=max_memory, progress=False)[hook]
    probe = fit_probe(acts, data.labels, hook, method="contrast", position=str(position))
    return LinearProbe(probe.direction, probe.bias, hook, str(position), "contrast", {"pairs": [list(p) for p in pairs]})


@torch.no_grad()
def behaviour_labels(model: HookedTransformer, pairs: PromptPairs) -> Bool[Tensor, " n2"]:
    """For the rows of ``Labelled.from_pairs(pairs)`` (clean, then corrupted): does the model's
    top next token at ``answer_pos`` equal the clean prompt's ``answer`` (the behaviour)?"""
    device = model.cfg.device
    tokens = torch.cat([pairs.clean, pairs.corrupted]).to(device)
    pos = torch.cat([pairs.answer_pos, pairs.answer_pos]).to(device)
    top = model(tokens)[torch.arange(tokens.shape[0], device=device), pos].argmax(-1).cpu()
    return top == torch.cat([pairs.answer, pairs.answer])
