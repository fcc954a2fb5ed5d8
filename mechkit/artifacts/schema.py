"""The circuit artifact schema, ``mechkit.circuit/1``: pydantic models of the JSON document.

Every model forbids unknown keys, floats must be finite, strings and lists are bounded, and
node and edge names must parse with :class:`mechkit._types.Node` / :class:`~mechkit._types.Edge`.
The published JSON Schema (``circuits/schema.json``) is generated from these models by
:func:`json_schema`.

Document layout (keys in this order)::

    schema, mechkit_version, created, model{spec, fingerprint},
    task{name, params, seed, n, split, source, source_sha256},
    method{name, hyperparameters}, selection, faithfulness[...],
    nodes[{name, in_circuit, score}], edges{count, n_in_circuit, items | names + sidecar}
"""

import math
import re
from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, JsonValue, model_validator

from mechkit._types import Edge, Node
from mechkit.errors import HookNameError

SCHEMA_VERSION = "mechkit.circuit/1"
SIDECAR_THRESHOLD = 5_000  # more edges than this: scores go to a safetensors sidecar
FLOAT32_MAX = 3.4028234663852886e38

MAX_EDGES = 5_000_000
MAX_NODES = 1_000_000
MAX_TEXT = 4_096
MAX_NAME = 256
MAX_JSON_DEPTH = 8
MAX_JSON_ITEMS = 10_000

Text = Annotated[str, Field(max_length=MAX_TEXT)]
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME)]


def _finite(x: float) -> float:
    if not math.isfinite(x):
        raise ValueError("must be a finite number (NaN and infinity are not allowed)")
    return x


def _score(x: float) -> float:
    _finite(x)
    if abs(x) > FLOAT32_MAX:
        raise ValueError("score overflows float32 (|score| must be below 3.4e38)")
    return x


def _node_name(name: str) -> str:
    try:
        Node.parse(name)
    except HookNameError as err:
        raise ValueError(str(err)) from None
    return name


def _edge_name(name: str) -> str:
    try:
        Edge.parse(name)
    except HookNameError as err:
        raise ValueError(str(err)) from None
    return name


_ORGANISM_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def plain_file_name(name: str) -> str:
    """A file name next to the artifact: no directory part, not ``.`` or ``..``, not absolute."""
    if not name or name in (".", "..") or any(c in name for c in "/\\\x00"):
        raise ValueError(
            f"{name[:80]!r} is not a plain file name: a shared artifact may only reference a file next to it "
            "(no '/', no '..', not absolute) or name a registered task; copy the file next to the artifact "
            "and record its name"
        )
    return name


def model_spec(spec: str) -> str:
    """``organism:NAME`` must name an organism, not a path (``organism:../../x`` is refused)."""
    if spec.startswith("organism:") and not _ORGANISM_NAME.fullmatch(spec[len("organism:"):]):
        raise ValueError(
            f"{spec[:80]!r}: an organism is named by a plain name (letters, digits, '_', '.', '-'), not a path; "
            "a shared artifact may only name a shipped organism, a checkpoint or a pretrained model"
        )
    return spec


def _iso_time(s: str) -> str:
    if s:
        try:
            datetime.fromisoformat(s)
        except ValueError:
            raise ValueError("not an ISO 8601 time such as 2026-01-31T12:00:00+00:00") from None
    return s


def _bounded_json(value: JsonValue) -> JsonValue:
    """Free-form parameters: finite floats, depth <= 8, at most 10,000 items, bounded strings."""
    stack, seen = [(value, 0)], 0
    while stack:
        v, depth = stack.pop()
        seen += 1
        if depth > MAX_JSON_DEPTH or seen > MAX_JSON_ITEMS:
            raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels or more than {MAX_JSON_ITEMS} items")
        if isinstance(v, float):
            _finite(v)
        elif isinstance(v, str) and len(v) > MAX_TEXT:
            raise ValueError(f"string longer than {MAX_TEXT} characters")
        elif isinstance(v, dict):
            stack.extend((x, depth + 1) for x in v.values())
            stack.extend((k, depth + 1) for k in v)
        elif isinstance(v, list):
            stack.extend((x, depth + 1) for x in v)
    return value


FiniteFloat = Annotated[float, AfterValidator(_finite)]
Score = Annotated[float, AfterValidator(_score)]
NodeName = Annotated[Name, AfterValidator(_node_name)]
EdgeName = Annotated[str, Field(min_length=1, max_length=2 * MAX_NAME + 8), AfterValidator(_edge_name)]
Params = Annotated[dict[str, JsonValue], AfterValidator(_bounded_json)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class ModelInfo(_Strict):
    """Which weights the circuit was found in."""

    spec: Annotated[str, Field(min_length=1, max_length=MAX_TEXT), AfterValidator(model_spec)] = Field(
        description="load_model spec: organism:NAME, a checkpoint directory or a pretrained name"
    )
    fingerprint: Annotated[str, Field(pattern=r"^(sha256:[0-9a-f]{64})?$")] = Field(
        description="mechkit.fingerprint of the weights; empty when unknown (verify then fails)"
    )


class TaskInfo(_Strict):
    """How to regenerate the prompts the circuit was found and measured on (empty: unknown)."""

    name: Name | None = Field(default=None, description="organism task name (mechkit.organisms.task)")
    params: Params = Field(default_factory=dict, description="generator parameters")
    seed: Annotated[int, Field(ge=-(2**63), le=2**64 - 1)] | None = None
    n: Annotated[int, Field(ge=0)] | None = Field(default=None, description="number of prompts")
    split: Annotated[str, Field(max_length=64)] | None = None
    source: Annotated[Text, AfterValidator(plain_file_name)] | None = Field(
        default=None, description="path of a user prompt file (mechkit.patching.read_pairs)"
    )
    source_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = Field(
        default=None, description="sha256 of that file, checked by verify when present"
    )


class MethodInfo(_Strict):
    name: Name = Field(description="discovery method, e.g. eap-ig, eap, exact, acdc, oracle")
    hyperparameters: Params = Field(default_factory=dict)


class FaithfulnessInfo(_Strict):
    """Measured normalised faithfulness, (circuit - corrupted) / (clean - corrupted)."""

    ablation: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")] = Field(
        description="resample, mean or zero"
    )
    value: FiniteFloat
    ci_low: FiniteFloat | None = None
    ci_high: FiniteFloat | None = None
    n_prompts: Annotated[int, Field(ge=1)] | None = None

    @model_validator(mode="after")
    def _ci_ordered(self) -> "FaithfulnessInfo":
        if self.ci_low is not None and self.ci_high is not None and self.ci_low > self.ci_high:
            raise ValueError("ci_low is above ci_high")
        return self


class NodeRecord(_Strict):
    name: NodeName
    in_circuit: bool
    score: Score | None = None


class EdgeRecord(_Strict):
    name: EdgeName
    score: Score
    in_circuit: bool


class Sidecar(_Strict):
    """A safetensors file next to the JSON holding ``scores`` (F32) and ``in_circuit`` (U8)."""

    file: Annotated[str, Field(pattern=r"^[\w.-]{1,200}\.scores\.safetensors$")] = Field(
        description="file name in the same directory as the JSON (no directories)"
    )
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class Edges(_Strict):
    """Either every edge inline (``items``) or the names inline and the scores in a sidecar."""

    count: Annotated[int, Field(ge=0, le=MAX_EDGES)]
    n_in_circuit: Annotated[int, Field(ge=0, le=MAX_EDGES)]
    items: Annotated[list[EdgeRecord], Field(max_length=MAX_EDGES)] | None = None
    names: Annotated[list[EdgeName], Field(max_length=MAX_EDGES)] | None = None
    sidecar: Sidecar | None = None

    @model_validator(mode="after")
    def _one_layout(self) -> "Edges":
        if (self.items is None) == (self.names is None):
            raise ValueError("give either items (inline scores) or names with a sidecar, not both or neither")
        if (self.names is None) != (self.sidecar is None):
            raise ValueError("names and sidecar go together")
        listed = self.items if self.items is not None else self.names
        if len(listed) != self.count:
            raise ValueError(f"count is {self.count} but {len(listed)} edges are listed")
        if self.items is not None and sum(e.in_circuit for e in self.items) != self.n_in_circuit:
            raise ValueError("n_in_circuit does not match the in_circuit flags")
        return self


class CircuitDocument(_Strict):
    """A circuit artifact, ``mechkit.circuit/1``."""

    model_config = ConfigDict(title="mechkit circuit artifact", json_schema_extra={"$id": SCHEMA_VERSION})

    schema_: Annotated[str, Field(alias="schema", pattern=r"^mechkit\.circuit/1$")] = SCHEMA_VERSION
    mechkit_version: Annotated[str, Field(max_length=64)]
    created: Annotated[str, Field(max_length=64), AfterValidator(_iso_time)]
    model: ModelInfo
    task: TaskInfo
    method: MethodInfo
    selection: Params = Field(default_factory=dict, description='how edges were selected, e.g. {"rule": "top-n"}')
    faithfulness: Annotated[list[FaithfulnessInfo], Field(max_length=64)] = Field(default_factory=list)
    nodes: Annotated[list[NodeRecord], Field(max_length=MAX_NODES)]
    edges: Edges

    @model_validator(mode="after")
    def _consistent(self) -> "CircuitDocument":
        names = [n.name for n in self.nodes]
        if len(set(names)) != len(names):
            raise ValueError("nodes: a node is listed twice")
        edge_names = [e.name for e in self.edges.items] if self.edges.items is not None else self.edges.names
        if len(set(edge_names)) != len(edge_names):
            raise ValueError("edges: an edge is listed twice")
        known = set(names)
        for e in edge_names:
            edge = Edge.parse(e)
            for end in (edge.src, edge.dst):
                if end not in known:
                    raise ValueError(f"edges: {e!r} uses node {end!r}, which is not in nodes")
        return self


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the artifact (what ``circuits/schema.json`` holds)."""
    schema = CircuitDocument.model_json_schema(by_alias=True, mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


def first_error(err: Exception) -> str:
    """One line from a pydantic ValidationError: the field path and what is wrong."""
    errors = getattr(err, "errors", None)
    if not callable(errors):
        return str(err).splitlines()[0]
    e = errors(include_url=False)[0]
    loc = ".".join(str(p) for p in e["loc"])
    msg = re.sub(r"^(Value|Assertion) error, ", "", e["msg"])
    return f"{loc or 'document'}: {msg}"


def schema_text() -> str:
    """``circuits/schema.json`` exactly as committed."""
    import json

    return json.dumps(json_schema(), indent=2, sort_keys=False) + "\n"

