"""The real model's tokenizer, shared by the task tests (the model itself: the session-scoped
``smollm2`` fixture of tests/conftest.py, loaded once per test session)."""

import pytest


@pytest.fixture(scope="session")
def tokenizer(smollm2):
    """SmolLM2-135M's own tokenizer."""
    return smollm2.tokenizer
