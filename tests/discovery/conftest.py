"""Fixtures for circuit discovery: tiny random models and random prompt pairs."""

import pytest
import torch

from mechkit._types import PromptPairs
from tests.conftest import tiny_hooked


def random_pairs(batch: int = 6, pos: int = 8, vocab: int = 64, seed: int = 0) -> PromptPairs:
    """Random clean/corrupted token pairs; the answer position is the last token."""
    gen = torch.Generator().manual_seed(seed)
    clean = torch.randint(4, vocab, (batch, pos), generator=gen)
    corrupted = torch.randint(4, vocab, (batch, pos), generator=gen)
    answer = torch.randint(4, vocab, (batch,), generator=gen)
    wrong = torch.randint(4, vocab, (batch,), generator=gen)
    return PromptPairs(clean, corrupted, answer, wrong, torch.full((batch,), pos - 1), task={"name": "random", "n": batch})


@pytest.fixture
def model():
    return tiny_hooked(seed=0)


@pytest.fixture
def pairs():
    return random_pairs()
