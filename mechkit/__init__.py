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
``viewer`` (offline HTML), ``sae`` (sparse autoencoders through SAELens; imported on first use).
"""

import importlib

from mechkit import artifacts, discovery, metrics, models, organisms, patching, viewer
from mechkit._types import Circuit, Edge, Faithfulness, Node, PromptPairs
from mechkit.artifacts import load_circuit, save_circuit
from mechkit.discovery import discover
from mechkit.errors import MechkitError
from mechkit.models import Component, component, components, fingerprint, input_hooks_enabled, load_model

__version__ = "0.1.0"

__all__ = [
    "Circuit", "Component", "Edge", "Faithfulness", "MechkitError", "Node", "PromptPairs",
    "artifacts", "component", "components", "discover", "discovery", "fingerprint",
    "input_hooks_enabled", "load_circuit", "load_model", "metrics", "models", "organisms",
    "patching", "sae", "save_circuit", "viewer",
]


def __getattr__(name: str):
    # SAELens is heavy to import: load mechkit.sae only when it is first used
    if name == "sae":
        return importlib.import_module("mechkit.sae")
    raise AttributeError(f"module 'mechkit' has no attribute {name!r}")
