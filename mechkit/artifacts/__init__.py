"""Circuits as shareable artifacts: a versioned JSON schema, atomic save, safe load, verify, interchange.

>>> from mechkit.artifacts import save_circuit, load_circuit   # doctest: +SKIP
>>> save_circuit(circuit, "ioi.circuit.json")                  # doctest: +SKIP
>>> load_circuit("ioi.circuit.json").nodes[:3]                 # doctest: +SKIP
['embed', 'L0H1', 'L1H0']
"""

from mechkit.artifacts.io import load_circuit as load_circuit, save_circuit as save_circuit
from mechkit.artifacts.schema import SCHEMA_VERSION as SCHEMA_VERSION, json_schema as json_schema
