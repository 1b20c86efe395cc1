"""Code verifier: run the model's program against tests in the sandbox.

Specs (``timeout``: optional seconds per program run, default 5):

* HumanEval style: ``{"type": "code", "test": "def check(candidate): ...", "entry_point": "f"}``;
  the program is the candidate code, then ``test``, then ``check(f)``. Optional ``"prompt"``:
  prepended when the code does not define ``entry_point`` itself (completion-style answers).
* stdin/stdout: ``{"type": "code", "cases": [{"input": "...", "output": "..."}, ...]}``; each case
  runs the program once and compares stripped output lines. Stops at the first failing case.

The code is the last ```python (or ```py) fenced block of the content, else the last unlabelled
fenced block, else the whole content. Score 1 only if every test passes.

HumanEval anti-tampering: a pass needs a per-run random nonce, which the harness reads from stdin
before the candidate's code runs and prints (through references captured up front) only after
``check`` returned, so ``os._exit(0)``, ``sys.exit`` overrides, a patched ``print`` or
``AssertionError`` cannot fake a pass. Candidate return values must be plain built-in data
(exact ``int``/``str``/``list``/... types), which blocks the "object equal to everything" hack.
This harness shares a process with the candidate; code that digs the nonce out of the
interpreter's memory (frame / closure introspection, ctypes) is not stopped by it.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from typing import Any

from cascade_rl.chat import ParsedCompletion
from cascade_rl.rewards._util import optional, require
from cascade_rl.rewards.base import RewardResult, SpecError, register
from cascade_rl.rewards.sandbox import SandboxResult, run_python

DEFAULT_TIMEOUT = 5.0
MEMORY_MB = 1024
_FENCE_RE = re.compile(r"```([\w+-]*)[^\n]*\n(.*?)```", re.S)
_TAIL_CHARS = 1500

# Runs before the candidate's code; everything it needs later is captured in a closure now.
_PRELUDE = """\
def __harness():
    import os, sys, traceback
    nonce = sys.stdin.readline().strip()
    write, exit_now, format_exc, type_of = os.write, os._exit, traceback.format_exc, type
    plain = frozenset((int, float, complex, str, bytes, bool, type(None), list, tuple, dict, set, frozenset))
    containers = frozenset((list, tuple, set, frozenset))
    dict_t, type_error = dict, TypeError

    def check_plain(value, depth=0):
        kind = type_of(value)
        if kind not in plain or depth > 100:
            raise type_error("candidate returned a non-builtin value of type " + kind.__name__)
        if kind in containers:
            for item in value:
                check_plain(item, depth + 1)
        elif kind is dict_t:
            for key, item in value.items():
                check_plain(key, depth + 1)
                check_plain(item, depth + 1)

    def run(namespace, entry_point):
        try:
            candidate = namespace[entry_point]

            def guarded(*args, **kwargs):
                result = candidate(*args, **kwargs)
                check_plain(result)
                return result

            namespace["check"](guarded)
        except BaseException:
            write(2, format_exc()[-4000:].encode("utf-8", "replace"))
            exit_now(1)
        write(1, ("\\n" + nonce + "\\n").encode())
        exit_now(0)

    return run


__harness_run = __harness()
del __harness
"""


def extract_code(content: str) -> str:
    """Last ```python block, else last unlabelled block, else the whole content."""
    blocks = _FENCE_RE.findall(content)
    for want in (("python", "py", "python3"), ("",)):
        picked = [body for lang, body in blocks if lang.lower() in want]
        if picked:
            return picked[-1]
    return content


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.strip().splitlines()]


def _tail(text: str) -> str:
    return text[-_TAIL_CHARS:]


def _humaneval(code: str, spec: Mapping[str, Any], timeout: float) -> RewardResult:
    entry = spec["entry_point"]
    prompt = spec.get("prompt")
    if prompt and not re.search(rf"^\s*(async\s+)?def\s+{re.escape(entry)}\s*\(", code, re.M):
        code = prompt + code
    nonce = secrets.token_hex(16)
    program = f"{_PRELUDE}\n{code}\n\n{spec['test']}\n\n__harness_run(globals(), {entry!r})\n"
    # Generous output cap: debug prints must not push the pass marker out of the kept output.
    res = run_python(program, stdin=nonce + "\n", timeout=timeout, memory_mb=MEMORY_MB, max_output=1 << 20)
    passed = res.returncode == 0 and res.killed_reason is None and nonce in res.stdout.splitlines()
    error = "" if passed else _tail(res.stderr) or _describe(res)
    info = {
        "tests": [{"name": "check", "passed": passed, "error": error}],
        "returncode": res.returncode,
        "killed_reason": res.killed_reason,
    }
    return RewardResult(float(passed), info)


def _describe(res: SandboxResult) -> str:
    if res.killed_reason:
        return res.killed_reason
    return f"exit code {res.returncode} without the pass marker"


def _stdio(code: str, cases: list[Mapping[str, str]], timeout: float) -> RewardResult:
    tests: list[dict[str, Any]] = []
    for case in cases:
        expected = case["output"]
        res = run_python(
            code,
            stdin=case["input"],
            timeout=timeout,
            memory_mb=MEMORY_MB,
            max_output=max(1 << 16, 2 * len(expected) + 4096),
        )
        if res.killed_reason:
            verdict = res.killed_reason
        elif res.returncode != 0:
            verdict = "runtime_error"
        else:
            verdict = "ok" if _lines(res.stdout) == _lines(expected) else "wrong_answer"
        test = {"passed": verdict == "ok", "verdict": verdict}
        if verdict != "ok":
            test["stderr"] = _tail(res.stderr)
            test["stdout"] = _tail(res.stdout)
        tests.append(test)
        if verdict != "ok":
            break
    passed = len(tests) == len(cases) and all(t["passed"] for t in tests)
    return RewardResult(float(passed), {"tests": tests, "skipped": len(cases) - len(tests)})


@register("code")
class CodeVerifier:
    """See the module docstring."""

    def check_spec(self, spec: Mapping[str, Any]) -> None:
        timeout = optional(spec, "timeout", (int, float), "a positive number of seconds")
        if timeout is not None and not 0 < timeout <= 120:
            raise SpecError(f"code spec: field 'timeout' must be in (0, 120] seconds, got {timeout!r}")
        if ("test" in spec) == ("cases" in spec):
            raise SpecError("code spec: exactly one of 'test' (+ 'entry_point') or 'cases' is required")
        if "test" in spec:
            require(spec, "test", str, "HumanEval test code defining check(candidate)")
            entry = require(spec, "entry_point", str, "the name of the function under test")
            if not entry.isidentifier():
                raise SpecError(f"code spec: field 'entry_point' must be a Python identifier, got {entry!r}")
            optional(spec, "prompt", str, "the function prompt prepended to completion-style code")
            return
        cases = require(spec, "cases", list, "a non-empty list of {input, output} objects")
        if not cases:
            raise SpecError("code spec: field 'cases' must be a non-empty list of {input, output} objects")
        for i, case in enumerate(cases):
            if not isinstance(case, Mapping) or not all(isinstance(case.get(k), str) for k in ("input", "output")):
                raise SpecError(f"code spec: cases[{i}] must be an object with string 'input' and 'output'")

    def __call__(self, completion: ParsedCompletion, spec: Mapping[str, Any]) -> RewardResult:
        code = extract_code(completion.content)
        if not code.strip():
            return RewardResult(0.0, {"reason": "no_code", "tests": []})
        timeout = float(spec.get("timeout") or DEFAULT_TIMEOUT)
        if "test" in spec:
            return _humaneval(code, spec, timeout)
        return _stdio(code, spec["cases"], timeout)
