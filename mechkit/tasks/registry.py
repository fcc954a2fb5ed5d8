"""The task registry: every task (organism or real-model) under one name.

- ``register(*names)``: class decorator that makes a task class available under ``names``.
- ``task(name, **params)``: a task instance; ``task_names()``: every registered name.
- ``regenerate(task_dict, model=None)``: the exact pairs a ``PromptPairs.task`` dict describes;
  tasks over a real model's tokenizer need that ``model`` (or its tokenizer) again.

The organisms' tasks register when :mod:`mechkit.organisms` is imported; lookups import it, so
``task("chekhov")`` works without importing the organisms first.
"""

import importlib
from typing import Any

from mechkit._types import PromptPairs
from mechkit.errors import DataError, SpecError, did_you_mean

_REGISTRY: dict[str, type] = {}
# modules whose import registers tasks; the organisms last (importing them loads TransformerLens)
_PROVIDERS = ("mechkit.tasks.ioi", "mechkit.tasks.repeated_tokens", "mechkit.tasks.capitals", "mechkit.organisms")


def register(*names: str):
    """Class decorator: make a task class available under ``names``."""

    def deco(cls: type) -> type:
        for name in names:
            if name in _REGISTRY:
                raise ValueError(f"task {name!r} registered twice")
            _REGISTRY[name] = cls
        return cls

    return deco


def merge_params(name: str, defaults: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """``defaults`` updated with ``params``; an unknown parameter is a SpecError."""
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise SpecError(
            f"unknown parameter {unknown[0]!r} for task {name!r}: " + did_you_mean(unknown[0], list(defaults))
        )
    return {**defaults, **params}


def _load_providers(until: str | None = None) -> None:
    """Import the modules that register tasks, stopping once ``until`` is registered."""
    for module in _PROVIDERS:
        if until is not None and until in _REGISTRY:
            return
        importlib.import_module(module)


def task(name: str, **params: Any):
    """The task registered as ``name`` (:func:`task_names`), optionally with other parameters."""
    _load_providers(until=name)
    if name not in _REGISTRY:
        raise SpecError(f"unknown task {name!r}: " + did_you_mean(name, sorted(_REGISTRY)))
    return _REGISTRY[name](name, **params)


def task_names() -> list[str]:
    """Every registered task name."""
    _load_providers()
    return list(_REGISTRY)


def needs_model(name: str) -> bool:
    """Whether task ``name`` generates from a model's tokenizer (``generate(..., model=...)``)."""
    _load_providers(until=name)
    return bool(getattr(_REGISTRY.get(name), "needs_model", False))


def regenerate(task_dict: dict[str, Any], model: Any = None) -> PromptPairs:
    """Rebuild the exact pairs described by a ``PromptPairs.task`` dict. Tasks over a real
    model's tokenizer need the ``model`` (or tokenizer) they were generated with."""
    missing = [k for k in ("name", "seed", "n", "split") if k not in task_dict]
    if missing:
        raise DataError(f"task dict lacks {missing[0]!r}: pass PromptPairs.task as written by Task.generate")
    t = task(task_dict["name"], **task_dict.get("params", {}))
    return t.generate(int(task_dict["n"]), seed=int(task_dict["seed"]), split=task_dict["split"], model=model)
