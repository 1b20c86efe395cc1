"""Structured-output (JSON schema) verifier.

Spec: ``{"type": "json_schema", "schema": {...}}`` (any JSON Schema draft; ``$schema`` selects the
draft, default 2020-12).

The content, with one optional surrounding Markdown code fence (```json ... ```) removed, must
parse as a single JSON document and validate against the schema. Prose around the JSON fails:
structured output means the whole answer is the document. ``info["error"]`` holds the parse error
or the best-matching validation error with its JSON path.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import jsonschema
from jsonschema.exceptions import best_match

from cascade_rl.chat import ParsedCompletion
from cascade_rl.rewards._util import require
from cascade_rl.rewards.base import RewardResult, SpecError, register

_FENCE_RE = re.compile(r"^```[\w+-]*[ \t]*\n(.*)\n```$", re.S)


def strip_fence(text: str) -> str:
    """The body of a single fenced block spanning the whole text, else the stripped text."""
    text = text.strip()
    match = _FENCE_RE.match(text)
    return match.group(1).strip() if match else text


@lru_cache(maxsize=512)
def _validator(schema_json: str) -> Any:
    schema = json.loads(schema_json)
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def _get_validator(schema: Mapping[str, Any] | bool) -> Any:
    try:
        return _validator(json.dumps(schema, sort_keys=True))
    except jsonschema.SchemaError as exc:
        raise SpecError(f"json_schema spec: field 'schema' is not a valid JSON Schema: {exc.message}") from None
    except (TypeError, ValueError) as exc:
        raise SpecError(f"json_schema spec: field 'schema' must be JSON-serialisable: {exc}") from None


@register("json_schema")
class JSONSchemaVerifier:
    """See the module docstring."""

    def check_spec(self, spec: Mapping[str, Any]) -> None:
        schema = require(spec, "schema", (dict, bool), "a JSON Schema object")
        _get_validator(schema)

    def __call__(self, completion: ParsedCompletion, spec: Mapping[str, Any]) -> RewardResult:
        body = strip_fence(completion.content)
        try:
            document = json.loads(body)
        except ValueError as exc:
            return RewardResult(0.0, {"reason": "invalid_json", "error": str(exc)[:300]})
        error = best_match(_get_validator(spec["schema"]).iter_errors(document))
        if error is not None:
            path = "$" + "".join(f"[{p!r}]" for p in error.absolute_path)
            return RewardResult(0.0, {"reason": "schema_violation", "error": f"{path}: {error.message}"[:500]})
        return RewardResult(1.0, {"reason": "valid"})
