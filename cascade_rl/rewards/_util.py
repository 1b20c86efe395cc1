"""Small helpers shared by the verifiers: spec field checks, ``\\boxed{}`` extraction."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from cascade_rl.rewards.base import SpecError

_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")


def require(spec: Mapping[str, Any], key: str, kind: type | tuple[type, ...], what: str) -> Any:
    """``spec[key]`` if it is an instance of ``kind``; else ``SpecError`` saying ``what`` was expected."""
    if key not in spec:
        raise SpecError(f"{spec.get('type')} spec: missing field {key!r} ({what})")
    value = spec[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
        raise SpecError(f"{spec.get('type')} spec: field {key!r} must be {what}, got {value!r:.200}")
    return value


def optional(spec: Mapping[str, Any], key: str, kind: type | tuple[type, ...], what: str) -> Any:
    """Like ``require`` but a missing or null field gives ``None``."""
    if spec.get(key) is None:
        return None
    return require(spec, key, kind, what)


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def last_boxed(text: str) -> str | None:
    """Contents of the last ``\\boxed{...}`` / ``\\fbox{...}`` (nested braces respected), if closed."""
    found = None
    for match in _BOXED_RE.finditer(text):
        depth, i = 1, match.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            found = text[match.end() : i - 1]
    return found
