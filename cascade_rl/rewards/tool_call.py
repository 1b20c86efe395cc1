"""Tool-call verifier.

Spec: ``{"type": "tool_call", "expected": [{"name": "f", "arguments": {...}}, ...], "ordered": false}``
(``arguments`` defaults to ``{}``; ``ordered`` defaults to false).

Score 1 when the completion's parsed tool calls equal the expected ones: same count, names, and
argument keys, with type-tolerant values (``3 == "3" == 3.0``, ``"True" == true``,
``"null" == None``, JSON text == the decoded object; strings are otherwise compared exactly
after stripping; booleans never equal numbers). ``expected: []`` means the model must answer
without calling a tool. A ``<tool_call>`` block that could not be parsed fails the sample.
``info`` names the missing / unexpected calls and, for same-name pairs, the differing arguments.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from cascade_rl.chat import ParsedCompletion
from cascade_rl.rewards._util import require
from cascade_rl.rewards.base import RewardResult, SpecError, register
from cascade_rl.types import ToolCall

_NUM_RE = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_WORDS: dict[str, Any] = {"true": True, "false": False, "none": None, "null": None}


def canonical(value: Any) -> Any:
    """A hashable normal form under which type-tolerant-equal values are ``==``."""
    if isinstance(value, bool) or value is None:
        return ("atom", value)
    if isinstance(value, int | float):
        return ("num", float(value))
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in _WORDS:
            return ("atom", _WORDS[text.lower()])
        if _NUM_RE.fullmatch(text):
            return ("num", float(text))
        if text[:1] in "[{":
            try:
                return canonical(json.loads(text))
            except ValueError:
                pass
        return ("str", text)
    if isinstance(value, Mapping):
        return ("map", tuple(sorted((str(k), canonical(v)) for k, v in value.items())))
    if isinstance(value, list | tuple):
        return ("seq", tuple(canonical(v) for v in value))
    return ("other", repr(value))


def _call_key(name: str, arguments: Mapping[str, Any]) -> Any:
    return (name.strip(), canonical(dict(arguments)))


def _arg_diff(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> dict[str, Any]:
    diff: dict[str, Any] = {}
    for key in sorted(set(expected) | set(actual)):
        if key not in actual:
            diff[key] = "missing"
        elif key not in expected:
            diff[key] = "unexpected"
        elif canonical(expected[key]) != canonical(actual[key]):
            diff[key] = {"expected": expected[key], "got": actual[key]}
    return diff


def _surplus(items: Sequence[Any], keys: list[Any], other: list[Any]) -> list[Any]:
    """The items whose keys are left over after cancelling against ``other`` (multiset minus)."""
    left = Counter(keys) - Counter(other)
    out = []
    for item, key in zip(items, keys, strict=True):
        if left[key] > 0:
            left[key] -= 1
            out.append(item)
    return out


def _mismatch_info(expected: Sequence[Mapping[str, Any]], calls: Sequence[ToolCall]) -> dict[str, Any]:
    exp_keys = [_call_key(e["name"], e.get("arguments") or {}) for e in expected]
    got_keys = [_call_key(c.name, c.arguments) for c in calls]
    missing = _surplus(expected, exp_keys, got_keys)
    unexpected = _surplus(calls, got_keys, exp_keys)
    info: dict[str, Any] = {
        "missing": [e["name"] for e in missing],
        "unexpected": [c.name for c in unexpected],
    }
    diffs = {}
    for e in missing:
        same_name = [c for c in unexpected if c.name.strip() == e["name"].strip()]
        if same_name:
            diffs[e["name"]] = _arg_diff(e.get("arguments") or {}, same_name[0].arguments)
    if diffs:
        info["argument_diffs"] = diffs
    return info


@register("tool_call")
class ToolCallVerifier:
    """See the module docstring."""

    def check_spec(self, spec: Mapping[str, Any]) -> None:
        expected = require(spec, "expected", list, "a list of {name, arguments} objects")
        for i, call in enumerate(expected):
            if not isinstance(call, Mapping) or not isinstance(call.get("name"), str) or not call["name"]:
                raise SpecError(f"tool_call spec: expected[{i}] must be an object with a string 'name'")
            args = call.get("arguments")
            if args is not None and not isinstance(args, Mapping):
                raise SpecError(f"tool_call spec: expected[{i}].arguments must be an object, got {args!r:.100}")
        if not isinstance(spec.get("ordered", False), bool):
            raise SpecError("tool_call spec: field 'ordered' must be a boolean")

    def __call__(self, completion: ParsedCompletion, spec: Mapping[str, Any]) -> RewardResult:
        expected: list[Mapping[str, Any]] = spec["expected"]
        calls = completion.tool_calls
        info: dict[str, Any] = {"n_expected": len(expected), "n_called": len(calls)}
        if completion.malformed_tool_call:
            info["reason"] = "malformed_tool_call"
            return RewardResult(0.0, info)
        if len(calls) != len(expected):
            info["reason"] = "count_mismatch"
            info.update(_mismatch_info(expected, calls))
            return RewardResult(0.0, info)
        exp_keys = [_call_key(e["name"], e.get("arguments") or {}) for e in expected]
        got_keys = [_call_key(c.name, c.arguments) for c in calls]
        if spec.get("ordered", False):
            ok = exp_keys == got_keys
            if not ok and Counter(exp_keys) == Counter(got_keys):
                info["reason"] = "wrong_order"
                return RewardResult(0.0, info)
        else:
            ok = Counter(exp_keys) == Counter(got_keys)
        if not ok:
            info["reason"] = "call_mismatch"
            info.update(_mismatch_info(expected, calls))
            return RewardResult(0.0, info)
        info["reason"] = "match"
        return RewardResult(1.0, info)
