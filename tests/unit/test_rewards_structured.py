"""JSON-schema verifier."""

from __future__ import annotations

import pytest

from cascade_rl.rewards import SpecError, verify
from cascade_rl.rewards.structured import strip_fence

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}
SPEC = {"type": "json_schema", "schema": SCHEMA}


@pytest.mark.parametrize(
    ("text", "expected", "reason"),
    [
        ('{"name": "Ada", "age": 36}', 1.0, "valid"),
        ('```json\n{"name": "Ada", "age": 36, "tags": ["x"]}\n```', 1.0, "valid"),
        ('<think>{"bad": 1}</think>\n```\n{"name": "Ada", "age": 0}\n```', 1.0, "valid"),
        ('{"name": "Ada"}', 0.0, "schema_violation"),
        ('{"name": "Ada", "age": -1}', 0.0, "schema_violation"),
        ('{"name": "Ada", "age": 3, "extra": true}', 0.0, "schema_violation"),
        ("{'name': 'Ada', 'age': 3}", 0.0, "invalid_json"),
        ('Here you go: {"name": "Ada", "age": 3}', 0.0, "invalid_json"),
        ("", 0.0, "invalid_json"),
    ],
)
def test_json_schema_scores(text, expected, reason):
    result = verify(text + "<|im_end|>", SPEC)
    assert (result.score, result.info["reason"]) == (expected, reason)


def test_validation_error_names_the_path():
    result = verify('{"name": "Ada", "age": 3, "tags": ["ok", 5]}', SPEC)
    assert result.info["error"] == "$['tags'][1]: 5 is not of type 'string'"


def test_strip_fence_only_whole_answer():
    assert strip_fence("```json\n[1]\n```") == "[1]"
    assert strip_fence("text\n```json\n[1]\n```") == "text\n```json\n[1]\n```"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"type": "json_schema"}, "missing field 'schema'"),
        ({"type": "json_schema", "schema": "object"}, "field 'schema' must be"),
        ({"type": "json_schema", "schema": {"type": "objekt"}}, "not a valid JSON Schema"),
    ],
)
def test_bad_specs(spec, message):
    with pytest.raises(SpecError, match=message):
        verify("{}", spec)
