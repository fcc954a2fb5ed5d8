"""Circuits as shareable artifacts: a versioned JSON schema, atomic save, safe load, verify, interchange.

>>> from mechkit.artifacts import save_circuit, load_circuit   # doctest: +SKIP
>>> save_circuit(circuit, "ioi.circuit.json")                  # doctest: +SKIP
>>> load_circuit("ioi.circuit.json").nodes[:3]                 # doctest: +SKIP
['embed', 'L0H1', 'L1H0']
>>> verify_circuit("ioi.circuit.json").passed                  # doctest: +SKIP
True

Modules: ``schema`` (pydantic models of ``mechkit.circuit/1``, the JSON Schema), ``io``
(save/load, safetensors sidecar), ``verify`` (re-measure against model and task),
``interchange`` (EAP-IG graph JSON, MIB submissions), ``ship`` (the circuits under ``circuits/``).
"""

from mechkit.artifacts.interchange import (
    read_eap_ig as read_eap_ig,
    write_eap_ig as write_eap_ig,
    write_mib as write_mib,
)
from mechkit.artifacts.io import load_circuit as load_circuit, save_circuit as save_circuit
from mechkit.artifacts.schema import SCHEMA_VERSION as SCHEMA_VERSION, json_schema as json_schema
from mechkit.artifacts.verify import VerifyResult as VerifyResult, verify_circuit as verify_circuit
