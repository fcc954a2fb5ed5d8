"""The published JSON Schema matches the pydantic models, and saved artifacts satisfy it."""

import json
from pathlib import Path

from mechkit.artifacts.schema import SCHEMA_VERSION, json_schema, schema_text

ROOT = Path(__file__).resolve().parents[2]


def test_committed_schema_is_generated_one():
    committed = (ROOT / "circuits" / "schema.json").read_text()
    assert committed == schema_text(), "regenerate: python -m mechkit.artifacts.ship --schema-only"


def test_schema_forbids_unknown_keys_everywhere():
    schema = json_schema()
    assert schema["$id"] == SCHEMA_VERSION
    assert schema["additionalProperties"] is False
    for name, sub in schema["$defs"].items():
        if sub.get("type") == "object" and "properties" in sub:
            assert sub.get("additionalProperties") is False, name
    assert {"schema", "model", "task", "method", "nodes", "edges", "faithfulness", "created"} <= set(schema["properties"])
    json.dumps(schema)  # plain JSON


def test_saved_artifacts_satisfy_the_published_schema(tmp_path):
    import jsonschema

    from mechkit.artifacts import save_circuit
    from tests.artifacts.helpers import make_circuit

    schema = json.loads((ROOT / "circuits" / "schema.json").read_text())
    for i, sidecar in enumerate((False, True)):
        doc = json.loads(save_circuit(make_circuit(), tmp_path / f"{i}.circuit.json", sidecar=sidecar).read_text())
        jsonschema.validate(doc, schema)
    doc["colour"] = "red"
    try:
        jsonschema.validate(doc, schema)
    except jsonschema.ValidationError as err:
        assert "colour" in err.message
    else:
        raise AssertionError("an unknown key passed the published schema")
