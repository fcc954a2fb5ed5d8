"""mechkit: find which parts of a transformer carry a behaviour, and share what you find.

>>> import mechkit
>>> model = mechkit.load_model("organism:chekhov")   # doctest: +SKIP
>>> [c.name for c in mechkit.components(model)][:3]  # doctest: +SKIP
['embed', 'pos_embed', 'L0H0']
"""

from mechkit.errors import MechkitError as MechkitError
from mechkit.models import (
    Component as Component,
    component as component,
    components as components,
    fingerprint as fingerprint,
    input_hooks_enabled as input_hooks_enabled,
    load_model as load_model,
)

__version__ = "0.1.0"
from mechkit.discovery import discover as discover  # noqa: E402
from mechkit.artifacts import load_circuit as load_circuit, save_circuit as save_circuit  # noqa: E402
