"""mechkit's exceptions: one hierarchy, one-line messages that say what is wrong and what to do.

Public functions raise these (``from None`` when they wrap an internal error), so a user
sees the reason and the fix rather than a traceback from deep inside a dependency.
"""

import difflib
from collections.abc import Iterable


class MechkitError(Exception):
    """Base class of every error mechkit raises on purpose."""


class SpecError(MechkitError):
    """A model spec that cannot be resolved: unknown name, missing or broken files."""


class HookNameError(MechkitError, KeyError):
    """An unknown component or hook name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ShapeError(MechkitError, ValueError):
    """Tensors or prompts whose shapes do not fit together."""


class ArtifactError(MechkitError, ValueError):
    """A circuit or SAE artifact that is corrupted, hostile or from an unknown schema."""


class DataError(MechkitError, ValueError):
    """User-supplied prompt data that cannot be used as given."""


def one_line(err: BaseException, limit: int = 300) -> str:
    """An exception's message on one line, at most ``limit`` characters."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def did_you_mean(name: str, valid: Iterable[str], n: int = 3) -> str:
    """A short hint listing the closest valid names, or a few valid names when none is close."""
    valid = list(valid)
    close = difflib.get_close_matches(name, valid, n=n, cutoff=0.5)
    if close:
        return "did you mean " + " or ".join(repr(c) for c in close) + "?"
    shown = ", ".join(valid[:8]) + (", ..." if len(valid) > 8 else "")
    return f"valid names: {shown}"
