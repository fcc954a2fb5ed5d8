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


def answer_prob(logits: Float[Tensor, "batch pos d_vocab"], pairs: PromptPairs) -> Float[Tensor, " batch"]:
    """Probability of the correct answer at the answer position."""
    probs = answer_logits(logits, pairs).float().softmax(-1)
    rows = torch.arange(probs.shape[0], device=probs.device)
    return probs[rows, pairs.answer.to(probs.device)]


def kl_div(
    logits: Float[Tensor, "batch pos d_vocab"],
    pairs: PromptPairs,
    reference: Float[Tensor, "batch d_vocab"],
) -> Float[Tensor, " batch"]:
    """KL(reference || model) of the next-token distributions at the answer position.

    ``reference`` holds answer-position logits, usually the clean run's.
    """
    log_p = answer_logits(logits, pairs).float().log_softmax(-1)
    log_q = reference.to(log_p.device).float().log_softmax(-1)
    return (log_q.exp() * (log_q - log_p)).sum(-1)


def normalized_logit_diff(
    logits: Float[Tensor, "batch pos d_vocab"],
    pairs: PromptPairs,
    clean: float,
    corrupted: float,
) -> Float[Tensor, " batch"]:
    """(logit diff - corrupted) / (clean - corrupted): 1 at the clean run's mean logit diff,
    0 at the corrupted run's. ``clean`` and ``corrupted`` are batch means, so the batch mean
    of this metric is the usual normalised score."""
    return (logit_diff(logits, pairs) - corrupted) / (clean - corrupted)
