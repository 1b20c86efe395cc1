"""SWE verifier: apply the answer's change to the instance's repository and run its tests.

Spec::

    {"type": "swe", "instance": {...SWE-bench instance, see cascade_rl.swe.instance...},
     "format": "edit_blocks",      # or "diff": the answer is a unified diff (in a ```diff fence or bare)
     "timeout": 30}                # optional: seconds for the whole test run

``edit_blocks`` answers are read by ``cascade_rl.swe.patch.parse_edit_blocks`` (the format is in its
docstring). Score 1 when every FAIL_TO_PASS and PASS_TO_PASS test passes after the change (tests
restored and the test patch applied first, see ``cascade_rl.swe.harness``), else 0. An answer
without a change scores 0 (``no_edits``) without running anything; a malformed block, an unsafe
path or a change that does not apply scores 0 with the ``PatchError`` reason and its detail.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from cascade_rl.chat import ParsedCompletion
from cascade_rl.rewards._util import optional
from cascade_rl.rewards.base import RewardResult, SpecError, register
from cascade_rl.swe.harness import DEFAULT_TIMEOUT, evaluate_diff, evaluate_edits
from cascade_rl.swe.instance import validate_instance
from cascade_rl.swe.patch import PatchError, parse_edit_blocks

FORMATS = ("edit_blocks", "diff")
_DIFF_FENCE = re.compile(r"```(?:diff|patch)[^\n]*\n(.*?)```", re.S)


def extract_diff(content: str) -> str:
    """The last ```diff / ```patch fenced block, else the text from the first diff header on."""
    blocks = _DIFF_FENCE.findall(content)
    if blocks:
        return str(blocks[-1])
    match = re.search(r"^(diff --git |--- )", content, re.M)
    return content[match.start() :] if match else ""


@register("swe")
class SweVerifier:
    """See the module docstring."""

    def check_spec(self, spec: Mapping[str, Any]) -> None:
        fmt = spec.get("format", "edit_blocks")
        if fmt not in FORMATS:
            raise SpecError(f"swe spec: field 'format' must be one of {', '.join(FORMATS)}, got {fmt!r}")
        timeout = optional(spec, "timeout", (int, float), "a positive number of seconds")
        if timeout is not None and not 0 < timeout <= 600:
            raise SpecError(f"swe spec: field 'timeout' must be in (0, 600] seconds, got {timeout!r}")
        try:
            validate_instance(spec.get("instance"))
        except ValueError as err:
            raise SpecError(f"swe spec: field 'instance': {err}") from None

    def __call__(self, completion: ParsedCompletion, spec: Mapping[str, Any]) -> RewardResult:
        instance = validate_instance(spec["instance"])
        timeout = float(spec.get("timeout") or DEFAULT_TIMEOUT)
        if spec.get("format", "edit_blocks") == "diff":
            diff = extract_diff(completion.content)
            if not diff.strip():
                return RewardResult(0.0, {"reason": "no_edits"})
            return evaluate_diff(instance, diff, timeout=timeout)
        try:
            edits = parse_edit_blocks(completion.content)
        except PatchError as err:
            return RewardResult(0.0, {"reason": err.reason, "detail": str(err)})
        if not edits:
            return RewardResult(0.0, {"reason": "no_edits"})
        return evaluate_edits(instance, edits, timeout=timeout)
