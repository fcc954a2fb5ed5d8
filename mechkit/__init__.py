"""mechkit: find which parts of a transformer carry a behaviour, and share what you find.

>>> import mechkit
>>> model = mechkit.load_model("organism:chekhov")    # doctest: +SKIP
>>> pairs = mechkit.organisms.task("chekhov").generate(64, seed=0)    # doctest: +SKIP
>>> circuit = mechkit.discover(model, pairs, method="eap-ig", edges="20%")    # doctest: +SKIP
>>> circuit.faithfulness[0]    # doctest: +SKIP
Faithfulness(ablation='resample', value=0.91..., ci_low=..., ci_high=..., n_prompts=64)

Subpackages: ``models`` (load, components, fingerprint), ``organisms`` (shipped model organisms
and their tasks), ``patching`` (activation, path and attribution patching), ``discovery``
(EAP, EAP-IG, ACDC, oracle, faithfulness), ``artifacts`` (save/load/verify/export circuits),
``viewer`` (offline HTML), ``sae`` (sparse autoencoders through SAELens; imported on first use),
``distributed`` (data parallelism under torchrun).
"""

import importlib

__version__ = "0.1.0"

# Public names and the module each comes from. Nothing heavy is imported until a name is first
# used, so `import mechkit.cli` (and `mechkit --version`) does not pay for torch and TransformerLens.
_SUBMODULES = ("artifacts", "discovery", "distributed", "metrics", "models", "organisms", "patching", "probes", "sae", "tasks",
               "viewer")
_NAMES = {
    "Circuit": "mechkit._types", "Edge": "mechkit._types", "Faithfulness": "mechkit._types",
    "Node": "mechkit._types", "PromptPairs": "mechkit._types",
    "load_circuit": "mechkit.artifacts", "save_circuit": "mechkit.artifacts",
    "discover": "mechkit.discovery",
    "MechkitError": "mechkit.errors",
    "Component": "mechkit.models", "component": "mechkit.models", "components": "mechkit.models",
    "fingerprint": "mechkit.models", "input_hooks_enabled": "mechkit.models", "load_model": "mechkit.models",
}

__all__ = sorted(set(_SUBMODULES) | set(_NAMES))


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"mechkit.{name}")
    if name in _NAMES:
        value = getattr(importlib.import_module(_NAMES[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mechkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
