"""Procedural SWE instances: a small Python package with one injected bug, an issue, hidden tests.

A repository is a package of one to three modules built from ``units.UNITS`` (names drawn per
repository), an ``__init__`` that re-exports the public functions, and visible tests
(``tests/test_<module>.py``) on inputs where the broken and the correct code agree, so the visible
suite passes on the broken repository as it would in a real project where the bug slipped through.
One unit gets a bug (off-by-one, wrong operator, missing case, swapped arguments, wrong default).

The behaviour of both versions is computed here by running our own template code (never model
output), so the issue quotes what the broken code really returns. The hidden test file
(``tests/test_regression.py``, added by the test patch) holds the FAIL_TO_PASS tests (inputs on
which the versions differ) and a PASS_TO_PASS test of the same function on agreeing inputs; the
visible tests are PASS_TO_PASS too. ``gold`` is the correcting edit; ``patch`` its unified diff.

Difficulty 0: one module of two or three functions, off-by-one and wrong-operator bugs, the issue
names the module. 1: two modules of three functions, every bug kind, the issue names the module.
2: three modules of three or four functions, every bug kind, the issue imports from the package
top level, so the module holding the function has to be found.
"""

from __future__ import annotations

import difflib
import random
from dataclasses import dataclass
from string import Template
from typing import Any

from cascade_rl.swe.instance import SweInstance
from cascade_rl.swe.patch import Edit, make_diff
from cascade_rl.swe.units import UNITS, Bug, Unit

PACKAGES = (
    "tallyho", "pebble", "quill", "sprocket", "ledgerly", "marmot", "tinsel", "bramble", "cobalt", "fennel",
    "gadget", "hollow", "juniper", "kestrel", "lantern", "mosaic", "nimbus", "orchard", "parsnip", "quartz",
    "rivet", "saffron", "thistle", "umber", "velvet", "willow", "yarrow", "zephyr", "acorn", "bobbin",
)  # fmt: skip
MODULES = ("core", "utils", "helpers", "text", "numbers", "lists", "tools", "calc", "series", "report", "misc", "ops")
HIDDEN_TESTS = "tests/test_regression.py"


@dataclass(frozen=True)
class Level:
    modules: int
    units: tuple[int, int]  # functions per module (inclusive range)
    kinds: tuple[str, ...]
    top_level_import: bool  # the issue imports from the package, not the module


LEVELS = (
    Level(1, (2, 3), ("off_by_one", "wrong_operator"), False),
    Level(2, (3, 3), ("off_by_one", "wrong_operator", "missing_case", "swapped_arguments", "wrong_default"), False),
    Level(3, (3, 4), ("off_by_one", "wrong_operator", "missing_case", "swapped_arguments", "wrong_default"), True),
)


@dataclass(frozen=True)
class Generated:
    """One procedural instance with what its reference solutions need."""

    instance: SweInstance
    gold: Edit  # the edit block that fixes the bug
    path: str  # the buggy module
    function: str  # the buggy public function
    bug: Bug
    visible_tests: tuple[str, ...]  # ids of the visible tests, in the order the runner finds them


@dataclass(frozen=True)
class _Placed:
    unit: Unit
    fn: str
    helper: str
    module: str

    def source(self) -> str:
        return Template(self.unit.source).substitute(fn=self.fn, h=self.helper)


Outcome = tuple[str, Any]  # ("ok", value) or ("raise", "TypeError: ...")


def _outcomes(source: str, fn: str, cases: list[tuple[object, ...]]) -> list[Outcome]:
    namespace: dict[str, Any] = {}
    exec(compile(source, f"<{fn}>", "exec"), namespace)  # our own template code, never model output
    out: list[Outcome] = []
    for args in cases:
        try:
            out.append(("ok", namespace[fn](*_copy(args))))
        except Exception as exc:
            out.append(("raise", f"{type(exc).__name__}: {exc}"))
    return out


def _copy(args: tuple[object, ...]) -> tuple[object, ...]:
    return tuple(list(a) if isinstance(a, list) else a for a in args)


def _call(fn: str, args: tuple[object, ...]) -> str:
    return f"{fn}({', '.join(repr(a) for a in args)})"


def _place(rng: random.Random, level: Level) -> tuple[str, list[str], list[_Placed]]:
    package = rng.choice(PACKAGES)
    modules = rng.sample(MODULES, level.modules)
    counts = [rng.randint(*level.units) for _ in modules]
    units = rng.sample(UNITS, sum(counts))
    if not any(b.kind in level.kinds for u in units for b in u.bugs):
        units[0] = rng.choice([u for u in UNITS if any(b.kind in level.kinds for b in u.bugs) and u not in units])
    placed, k = [], 0
    for module, count in zip(modules, counts, strict=True):
        for unit in units[k : k + count]:
            placed.append(_Placed(unit, rng.choice(unit.names), rng.choice(unit.helpers or ("",)), module))
        k += count
    return package, modules, placed


def _module_text(package: str, module: str, placed: list[_Placed], override: dict[str, str]) -> str:
    parts = [f'"""{module.capitalize()} helpers of {package}."""\n']
    parts += [override.get(p.fn, p.source()) for p in placed if p.module == module]
    return "\n\n".join(parts)


def _test_function(name: str, fn: str, cases: list[tuple[tuple[object, ...], Any]]) -> str:
    body = "".join(f"    assert {_call(fn, args)} == {value!r}\n" for args, value in cases)
    return f"def {name}():\n{body}"


def _test_file(package: str, module: str, fns: list[str], functions: list[str]) -> str:
    header = f"from {package}.{module} import {', '.join(fns)}\n"
    return "\n\n".join([header, *functions])


@dataclass(frozen=True)
class _Behaviour:
    agree: list[tuple[tuple[object, ...], Any]]  # (args, value) where both versions return value
    differ: list[tuple[tuple[object, ...], Any, Outcome]]  # (args, correct value, broken outcome)


def _behaviour(good: str, bad: str, fn: str, cases: list[tuple[object, ...]]) -> _Behaviour:
    unique = list({_call(fn, c): c for c in cases}.values())
    agree, differ = [], []
    for args, want, got in zip(unique, _outcomes(good, fn, unique), _outcomes(bad, fn, unique), strict=True):
        if want[0] != "ok":
            continue
        # judged as the tests will judge it, with ==: 1 and 1.0 agree, so such a case is no use either way
        same = got[0] == "ok" and got[1] == want[1]
        if same and type(got[1]) is type(want[1]):
            agree.append((args, want[1]))
        elif not same:
            differ.append((args, want[1], got))
    return _Behaviour(agree, differ)


def _gold_edit(path: str, bad_text: str, good_text: str) -> Edit:
    """The smallest edit block that turns ``bad_text`` into ``good_text`` with a unique SEARCH."""
    bad, good = bad_text.splitlines(), good_text.splitlines()
    ops = [op for op in difflib.SequenceMatcher(a=bad, b=good, autojunk=False).get_opcodes() if op[0] != "equal"]
    i1, i2, j1, j2 = ops[0][1], ops[-1][2], ops[0][3], ops[-1][4]
    if i1 == i2:  # a pure insertion: anchor it on the line before
        i1, j1 = i1 - 1, j1 - 1
    # unique as text, not only as a run of lines: the agentic ``replace`` tool matches substrings
    while bad_text.count("\n".join(bad[i1:i2])) != 1 or not "".join(bad[i1:i2]).strip():
        if i1 > 0:
            i1, j1 = i1 - 1, j1 - 1
        else:
            i2, j2 = i2 + 1, j2 + 1
    return Edit(path, tuple(bad[i1:i2]), tuple(good[j1:j2]))


def generate(rng: random.Random, difficulty: int) -> Generated:
    """One procedural instance at ``difficulty`` (0-2; higher is treated as 2)."""
    level = LEVELS[min(max(difficulty, 0), len(LEVELS) - 1)]
    for _ in range(100):
        made = _attempt(rng, level, difficulty)
        if made is not None:
            return made
    raise RuntimeError("procedural SWE generator bug: no bug with a visible symptom after 100 tries")


def _attempt(rng: random.Random, level: Level, difficulty: int) -> Generated | None:
    package, modules, placed = _place(rng, level)
    target = rng.choice([p for p in placed if any(b.kind in level.kinds for b in p.unit.bugs)])
    bug = rng.choice([b for b in target.unit.bugs if b.kind in level.kinds])
    sub = {"fn": target.fn, "h": target.helper}
    good_src = target.source()
    bad_src = good_src.replace(Template(bug.good).substitute(sub), Template(bug.bad).substitute(sub))
    behaviours = {p.fn: _behaviour(p.source(), p.source(), p.fn, p.unit.cases(rng)) for p in placed}
    behaviours[target.fn] = _behaviour(good_src, bad_src, target.fn, target.unit.cases(rng))
    if not behaviours[target.fn].differ:
        return None
    path = f"{package}/{target.module}.py"
    files = {f"{package}/{m}.py": _module_text(package, m, placed, {target.fn: bad_src}) for m in modules}
    exports = "".join(
        f"from {package}.{m} import {', '.join(p.fn for p in placed if p.module == m)}\n" for m in modules
    )
    files[f"{package}/__init__.py"] = exports
    visible: list[str] = []
    for m in modules:
        here = [p for p in placed if p.module == m and behaviours[p.fn].agree]
        if here:
            tests = [_test_function(f"test_{p.fn}", p.fn, behaviours[p.fn].agree[:3]) for p in here]
            files[f"tests/test_{m}.py"] = _test_file(package, m, [p.fn for p in here], tests)
            visible += [f"tests/test_{m}.py::test_{p.fn}" for p in here]
    files["README.md"] = f"# {package}\n\nSmall helpers: {', '.join(sorted(p.fn for p in placed))}.\n"
    fixed = {**files, path: _module_text(package, target.module, placed, {})}
    hidden, f2p, p2p = _hidden_tests(package, target, behaviours[target.fn])
    issue = _issue(rng, package, target, bug, behaviours[target.fn], level.top_level_import)
    instance = SweInstance(
        instance_id=f"{package}__{target.fn}-{bug.kind}",
        problem_statement=issue,
        fail_to_pass=tuple(f2p),
        pass_to_pass=tuple(sorted(visible) + p2p),
        test_patch=make_diff({}, {HIDDEN_TESTS: hidden}),
        files=files,
        repo=f"procedural/{package}",
        patch=make_diff(files, fixed),
    )
    gold = _gold_edit(path, files[path], fixed[path])
    # the runner's order: test files by path, each file's tests as defined
    found = sorted(visible, key=lambda tid: (tid.split("::")[0], visible.index(tid)))
    return Generated(instance, gold, path, target.fn, bug, tuple(found))


def _hidden_tests(package: str, target: _Placed, behaviour: _Behaviour) -> tuple[str, list[str], list[str]]:
    fn = target.fn
    failing = [(args, want) for args, want, _ in behaviour.differ[:4]]
    functions = [_test_function(f"test_{fn}_issue", fn, failing[:2])]
    f2p = [f"{HIDDEN_TESTS}::test_{fn}_issue"]
    if len(failing) > 2:
        functions.append(_test_function(f"test_{fn}_issue_more", fn, failing[2:]))
        f2p.append(f"{HIDDEN_TESTS}::test_{fn}_issue_more")
    p2p = []
    if behaviour.agree:
        functions.append(_test_function(f"test_{fn}_unchanged", fn, behaviour.agree[-3:]))
        p2p.append(f"{HIDDEN_TESTS}::test_{fn}_unchanged")
    return _test_file(package, target.module, [fn], functions), f2p, p2p


_TITLES = (
    "`{fn}` returns the wrong result",
    "Bug in {fn}",
    "{fn}() gives an unexpected answer",
    "Wrong output from {fn}",
    "Unexpected behaviour of `{fn}`",
)
_OPENERS = (
    "I'm using {package} and ran into this.",
    "Hi! I think there is a bug in {package}.",
    "Not sure if this is intended, but it looks wrong to me.",
    "Found this while using {package} in a script.",
    "",
)


def _issue(rng: random.Random, package: str, target: _Placed, bug: Bug, behaviour: _Behaviour, top: bool) -> str:
    fn = target.fn
    args, want, got = behaviour.differ[0]
    where = package if top else f"{package}.{target.module}"
    call = _call(fn, args)
    said = f"raises `{got[1]}`" if got[0] == "raise" else f"returns `{got[1]!r}`"
    doc = target.source().split('"""')[1]
    lines = [
        f"## {rng.choice(_TITLES).format(fn=fn)}",
        "",
        rng.choice(_OPENERS).format(package=package),
        "",
        "```python",
        f"from {where} import {fn}",
        f"print({call})",
        "```",
        "",
        f"`{call}` {said}, but I expected `{want!r}`.",
        f"The docstring says: {doc}",
    ]
    if bug.kind == "wrong_default":
        lines.append("I did not pass every argument, so the default should apply.")
    text = "\n".join(lines)
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return text.strip() + "\n"
