"""Instruction-following (IFEval-style) verifier.

Spec::

    {"type": "instruct",
     "instruction_id_list": ["punctuation:no_comma", "length_constraints:number_words", ...],
     "kwargs": [{}, {"relation": "less than", "num_words": 50}, ...],
     "strict": true}

``kwargs`` is parallel to ``instruction_id_list`` (optional when no instruction takes arguments);
None-valued kwargs are ignored (IFEval data pads every dict with the union of kwarg names).
Supported ids and kwarg names: ``instruct_checks.CHECKS`` (IFEval's 25).

``strict`` (default true) checks the response as is. Loose mode (``"strict": false``, IFEval's
"loose" accuracy) counts an instruction as followed if any variant passes: the response, with its
first line removed, last line removed, both removed, and each of those with ``*`` removed.
Score = fraction of instructions followed; ``info`` lists ``followed`` and ``failed`` ids.
An empty response follows nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cascade_rl.chat import ParsedCompletion
from cascade_rl.rewards._util import require
from cascade_rl.rewards.base import RewardResult, SpecError, register
from cascade_rl.rewards.instruct_checks import CHECKS, KWARG_TYPES, RELATIONS


def _clean_kwargs(instruction: str, raw: Any, index: int) -> dict[str, Any]:
    """Drop None values, reject unknown / missing / mistyped kwargs."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise SpecError(f"instruct spec: kwargs[{index}] must be an object, got {raw!r:.100}")
    check = CHECKS[instruction]
    kwargs = {k: v for k, v in raw.items() if v is not None}
    allowed = set(check.required) | set(check.optional)
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise SpecError(f"instruct spec: kwargs[{index}] for {instruction!r} has unknown keys {unknown}; "
                        f"expected {sorted(allowed) or 'none'}")  # fmt: skip
    missing = [k for k in check.required if k not in kwargs]
    if missing:
        raise SpecError(f"instruct spec: kwargs[{index}] for {instruction!r} is missing {missing}")
    for key, value in kwargs.items():
        kind = KWARG_TYPES[key]
        if kind is int and isinstance(value, float) and value.is_integer():
            value = kwargs[key] = int(value)  # JSON round-trips may turn 3 into 3.0
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise SpecError(f"instruct spec: kwargs[{index}].{key} must be {kind.__name__}, got {value!r:.100}")
        if key.endswith("relation") and value not in RELATIONS:
            raise SpecError(f"instruct spec: kwargs[{index}].{key} must be one of {RELATIONS}, got {value!r}")
        if kind is list and not all(isinstance(v, str) for v in value):
            raise SpecError(f"instruct spec: kwargs[{index}].{key} must be a list of strings")
    return kwargs


def parse_instructions(spec: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """[(instruction id, cleaned kwargs)]; ``SpecError`` on anything malformed."""
    ids = require(spec, "instruction_id_list", list, "a list of IFEval instruction ids")
    if not ids:
        raise SpecError("instruct spec: field 'instruction_id_list' must not be empty")
    kwargs_list = spec.get("kwargs")
    if kwargs_list is None:
        kwargs_list = [{}] * len(ids)
    if not isinstance(kwargs_list, list) or len(kwargs_list) != len(ids):
        raise SpecError(f"instruct spec: field 'kwargs' must be a list of {len(ids)} objects "
                        f"(one per instruction id), got {kwargs_list!r:.200}")  # fmt: skip
    if not isinstance(spec.get("strict", True), bool):
        raise SpecError(f"instruct spec: field 'strict' must be a boolean, got {spec['strict']!r}")
    out = []
    for i, (instruction, raw) in enumerate(zip(ids, kwargs_list, strict=True)):
        if instruction not in CHECKS:
            raise SpecError(f"instruct spec: unknown instruction id {instruction!r}; expected one of {sorted(CHECKS)}")
        out.append((instruction, _clean_kwargs(instruction, raw, i)))
    return out


def loose_variants(response: str) -> list[str]:
    """IFEval's loose-mode rewrites of a response (the response itself first)."""
    lines = response.split("\n")
    first = "\n".join(lines[1:]).strip()
    last = "\n".join(lines[:-1]).strip()
    both = "\n".join(lines[1:-1]).strip()
    base = [response, first, last, both]
    return base + [v.replace("*", "") for v in base]


def follows(response: str, instruction: str, kwargs: Mapping[str, Any], strict: bool = True) -> bool:
    """Whether ``response`` follows one instruction."""
    check = CHECKS[instruction].fn
    variants = [response] if strict else loose_variants(response)
    return any(v.strip() and check(v, **kwargs) for v in variants)


@register("instruct")
class InstructVerifier:
    """See the module docstring."""

    def check_spec(self, spec: Mapping[str, Any]) -> None:
        parse_instructions(spec)

    def __call__(self, completion: ParsedCompletion, spec: Mapping[str, Any]) -> RewardResult:
        strict = spec.get("strict", True)
        followed, failed = [], []
        instructions = parse_instructions(spec)
        for instruction, kwargs in instructions:
            (followed if follows(completion.content, instruction, kwargs, strict) else failed).append(instruction)
        return RewardResult(
            len(followed) / len(instructions),
            {"followed": followed, "failed": failed, "strict": strict},
        )
