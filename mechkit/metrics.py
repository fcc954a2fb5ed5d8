"""Task metrics: plain functions of logits and a batch of prompt pairs.

A metric takes ``logits`` [batch, pos, d_vocab] and ``PromptPairs`` and returns one value
per prompt, [batch]; callers average. A user-defined metric is any function with that
signature.
"""

import torch
from jaxtyping import Float
from torch import Tensor

from mechkit._types import PromptPairs


def answer_logits(logits: Float[Tensor, "batch pos d_vocab"], pairs: PromptPairs) -> Float[Tensor, "batch d_vocab"]:
    """The next-token logits at each prompt's answer position."""
    rows = torch.arange(logits.shape[0], device=logits.device)
    return logits[rows, pairs.answer_pos.to(logits.device)]


def logit_diff(logits: Float[Tensor, "batch pos d_vocab"], pairs: PromptPairs) -> Float[Tensor, " batch"]:
    """Logit of the correct answer minus logit of the wrong answer, at the answer position."""
    last = answer_logits(logits, pairs)
    rows = torch.arange(last.shape[0], device=last.device)
    return last[rows, pairs.answer.to(last.device)] - last[rows, pairs.wrong.to(last.device)]


def accuracy(logits: Float[Tensor, "batch pos d_vocab"], pairs: PromptPairs) -> Float[Tensor, " batch"]:
    """1.0 where the correct answer is the top next-token prediction, else 0.0."""
    last = answer_logits(logits, pairs)
    return (last.argmax(-1) == pairs.answer.to(last.device)).float()
