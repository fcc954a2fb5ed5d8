"""Circuit viewer: a self-contained, offline HTML page drawn by a small inline script.

>>> from mechkit.viewer import write_html                     # doctest: +SKIP
>>> write_html(load_circuit("ioi.circuit.json"), "ioi.html")  # doctest: +SKIP
"""

import os
from pathlib import Path

from mechkit._types import Circuit
from mechkit.viewer.html import circuit_html as circuit_html, payload as payload


def write_html(circuit: Circuit, path: str | os.PathLike) -> Path:
    """Write the viewer page for ``circuit`` to ``path`` (UTF-8) and return the path."""
    path = Path(path)
    path.write_text(circuit_html(circuit), encoding="utf-8")
    return path
