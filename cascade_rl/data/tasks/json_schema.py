"""Structured output: facts in the user turn, a JSON schema in the system turn, compact JSON out.

Difficulty 0: a flat object with two fields (a string and a string or integer), facts given in
schema order, so the answer is a near-verbatim copy. Difficulty 1: three or four fields with
booleans, enums and string arrays, facts shuffled. Difficulty 2: nested objects, arrays of
objects, numeric bounds and ``additionalProperties: false``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

from cascade_rl.data.tasks.base import Problem, make_problem
from cascade_rl.data.tasks.vocab import CITIES, COLORS, NAMES, WORDS

SYSTEM = "Reply with JSON that matches this schema:\n{schema}"
PETS = ("dog", "cat", "fish", "bird", "frog", "duck")
SIZES = ("small", "medium", "large")
TAGS = ("new", "old", "big", "cheap", "fast", "quiet", "warm", "soft")

STRING: dict[str, Any] = {"type": "string"}
INTEGER: dict[str, Any] = {"type": "integer"}
BOOLEAN: dict[str, Any] = {"type": "boolean"}

# A field: (key, schema, draw a value, write the value as a fact).
Field = tuple[str, dict[str, Any], Callable[[random.Random], Any], Callable[[Any], str]]


def _plain(value: Any) -> str:
    return str(value)


def _yes_no(value: Any) -> str:
    return "yes" if value else "no"


def _listed(value: Any) -> str:
    return " and ".join(value)


def _name(rng: random.Random) -> str:
    return rng.choice(NAMES).lower()


FLAT_PAIRS: tuple[tuple[Field, Field], ...] = (
    (("name", STRING, _name, _plain), ("age", INTEGER, lambda r: r.randint(2, 90), _plain)),
    (("name", STRING, _name, _plain), ("pet", STRING, lambda r: r.choice(PETS), _plain)),
    (("name", STRING, _name, _plain), ("city", STRING, lambda r: r.choice(CITIES), _plain)),
    (("item", STRING, lambda r: r.choice(WORDS), _plain), ("price", INTEGER, lambda r: r.randint(1, 99), _plain)),
    (("city", STRING, lambda r: r.choice(CITIES), _plain), ("temp", INTEGER, lambda r: r.randint(1, 40), _plain)),
    (("color", STRING, lambda r: r.choice(COLORS), _plain), ("seats", INTEGER, lambda r: r.randint(2, 8), _plain)),
)  # fmt: skip

EXTRA_FIELDS: tuple[Field, ...] = (
    ("member", BOOLEAN, lambda r: r.random() < 0.5, _yes_no),
    ("size", {"type": "string", "enum": list(SIZES)}, lambda r: r.choice(SIZES), _plain),
    ("tags", {"type": "array", "items": STRING}, lambda r: r.sample(TAGS, r.randint(1, 3)), _listed),
    ("count", INTEGER, lambda r: r.randint(0, 50), _plain),
    ("color", STRING, lambda r: r.choice(COLORS), _plain),
)


def _object_schema(fields: list[tuple[str, dict[str, Any]]], strict: bool = False) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {key: sub for key, sub in fields},
        "required": [key for key, _ in fields],
    }
    if strict:
        schema["additionalProperties"] = False
    return schema


def _flat(rng: random.Random, difficulty: int) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """(schema, value, fact phrases) for a flat object."""
    fields = list(rng.choice(FLAT_PAIRS))
    if difficulty >= 1:
        keys = {f[0] for f in fields}
        extras = [f for f in EXTRA_FIELDS if f[0] not in keys]
        fields += rng.sample(extras, rng.randint(1, 2))
    value = {key: draw(rng) for key, _, draw, _ in fields}
    facts = [f"{key}: {say(value[key])}" for key, _, _, say in fields]
    return _object_schema([(f[0], f[1]) for f in fields]), value, facts


def _nested(rng: random.Random) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """A person with an address object and a list of pets (each an object)."""
    name, age = _name(rng), rng.randint(18, 90)
    city, zip_code = rng.choice(CITIES), rng.randint(1000, 9999)
    pets = [{"name": rng.choice(NAMES).lower(), "kind": rng.choice(PETS)} for _ in range(rng.randint(1, 2))]
    address = _object_schema([("city", STRING), ("zip", {"type": "integer", "minimum": 1000, "maximum": 9999})])
    pet = _object_schema([("name", STRING), ("kind", {"type": "string", "enum": list(PETS)})], strict=True)
    schema = _object_schema(
        [
            ("name", STRING),
            ("age", {"type": "integer", "minimum": 0}),
            ("address", address),
            ("pets", {"type": "array", "items": pet, "minItems": 1}),
        ],
        strict=True,
    )
    value = {"name": name, "age": age, "address": {"city": city, "zip": zip_code}, "pets": pets}
    pet_text = " and ".join(f"a {p['kind']} called {p['name']}" for p in pets)
    facts = [f"name: {name}", f"age: {age}", f"lives in {city}, zip {zip_code}", f"pets: {pet_text}"]
    return schema, value, facts


def compact(value: Any) -> str:
    """JSON without spaces: the shortest exact text for a tiny model to copy."""
    return json.dumps(value, separators=(",", ":"))


def bind_facts(schema: dict[str, Any], value: dict[str, Any]) -> dict[str, Any]:
    """The schema the verifier checks: the shown schema plus ``const`` = the stated fact for every
    field, so a well-formed object with made-up values does not pass."""
    properties = {k: {**field, "const": value[k]} if k in value else field for k, field in schema["properties"].items()}
    return {**schema, "properties": properties}


class JsonSchemaTask:
    """Schema-constrained JSON; spec ``{"type": "json_schema", "schema"}``."""

    name = "json_schema"

    def generate(self, rng: random.Random, difficulty: int) -> Problem:
        if difficulty >= 2 and rng.random() < 0.6:
            schema, value, facts = _nested(rng)
        else:
            schema, value, facts = _flat(rng, min(difficulty, 1))
        if difficulty >= 1:
            rng.shuffle(facts)  # the answer follows schema order, not fact order
        facts[0] = facts[0][0].upper() + facts[0][1:]
        user = ", ".join(facts) + ". Reply with JSON."
        answer = compact(value)
        trace = f"Fill {', '.join(schema['properties'])} from the facts."
        return make_problem(
            self.name,
            difficulty,
            user=user,
            system=SYSTEM.format(schema=compact(schema)),
            spec={"type": "json_schema", "schema": bind_facts(schema, value)},
            answer=answer,
            reasoning=trace,
        )
