"""Grading an instance: apply the candidate change, put the tests back, run them in the sandbox.

``grade_files(instance, snapshot)`` takes the repository as the candidate left it and:

1. puts every file the grading owns (``SweInstance.test_files``: what the test patch touches and
   the files of the graded tests) back as the instance has it, so deleting or editing the tests
   cannot help (the paths are listed in ``info["restored"]``);
2. applies the instance's test patch (the hidden tests);
3. ships the files into one sandboxed run (``cascade_rl.rewards.sandbox.run_python``: time and
   memory limited, no network, own filesystem view), where a small test runner writes them into
   the sandbox's scratch work folder and runs the named tests.

Score 1 when every FAIL_TO_PASS and every PASS_TO_PASS test passes, else 0; ``info["reason"]``
says why (``ok``, ``tests_failed``, ``timeout``, or the ``PatchError`` code of a change that did
not apply). ``evaluate_diff`` / ``evaluate_edits`` apply a unified diff / edit blocks to the
instance's snapshot first. Paths are checked by ``clean_path`` on the host and again by the runner.

The runner (no pytest): a test id is ``path::function`` or ``path::Class::method``
(``unittest.TestCase`` classes run with setUp / tearDown; plain classes are built without arguments
and get ``setup_method`` / ``teardown_method``). A test passes when it returns; any exception,
``sys.exit`` or a per-test time-out fails it; fixtures and parametrised ids are not supported. A
test file that fails to import fails all its tests. Results come back as lines carrying a random
nonce the runner read before any repository code ran, so the code under test cannot print a pass,
and a run that dies early leaves its remaining tests failed. As in the code verifier, code that digs
the nonce out of the interpreter's memory is not stopped by this.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field

from cascade_rl.rewards.base import RewardResult
from cascade_rl.rewards.sandbox import run_python
from cascade_rl.swe.instance import Snapshot, SweInstance
from cascade_rl.swe.patch import Edit, PatchError, apply_diff, apply_edits

DEFAULT_TIMEOUT = 30.0  # seconds for the whole run
PER_TEST_TIMEOUT = 5.0
MEMORY_MB = 1024
_MAX_LISTED = 10

RUNNER = r"""
def __swe_main():
    import base64, importlib.util, json, os, signal, sys, traceback, unittest

    write, exit_now, realpath = os.write, os._exit, os.path.realpath
    runner_file = __file__
    nonce = sys.stdin.readline().strip()
    payload = json.loads(sys.stdin.read())
    root = realpath(os.getcwd())
    limit = float(payload["per_test_timeout"])

    def place(rel, data):
        target = realpath(os.path.join(root, rel))
        if not target.startswith(root + os.sep):
            raise SystemExit("refusing to write outside the work folder: " + rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as handle:
            handle.write(data)

    for rel, text in payload["text"].items():
        place(rel, text.encode("utf-8"))
    for rel, data in payload["binary"].items():
        place(rel, base64.b64decode(data))
    src = os.path.join(root, "src")
    sys.path[:0] = [root] + ([src] if os.path.isdir(src) else [])
    sys.dont_write_bytecode = True

    def format_exc():
        try:
            return describe()
        except BaseException:
            return "the failure could not be described"

    def describe():
        # the failure as the test's author would read it: no runner frames, paths relative to the repository
        kind, value, tb = sys.exc_info()
        frames = [f for f in traceback.extract_tb(tb) if f.filename != runner_file]
        text = "".join(traceback.format_list(frames)) + "".join(traceback.format_exception_only(kind, value))
        lines = [ln for ln in text.split("\n") if ln.strip() and ln.strip(" ^~") != ""]
        return "\n".join(lines).replace(root + os.sep, "")

    def report(tid, ok, detail):
        status = "pass" if ok is True else "fail"
        write(1, ("\n" + nonce + "\t" + status + "\t" + tid + "\n").encode("utf-8", "replace"))
        if detail:
            write(2, ("\n=== " + tid + "\n" + detail[-3000:] + "\n").encode("utf-8", "replace"))

    def on_alarm(signum, frame):
        raise TimeoutError("the test took longer than " + str(limit) + " seconds")

    signal.signal(signal.SIGALRM, on_alarm)
    setitimer, real = signal.setitimer, signal.ITIMER_REAL

    def timed(fn):
        setitimer(real, limit)
        try:
            fn()
        finally:
            setitimer(real, 0)

    modules = {}

    def load(path):
        if path not in modules:
            try:
                name = "swe_test_module_" + str(len(modules))
                spec = importlib.util.spec_from_file_location(name, os.path.join(root, path))
                if spec is None or spec.loader is None:
                    raise ImportError("cannot import " + path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                timed(lambda: spec.loader.exec_module(module))
                modules[path] = (module, "")
            except BaseException:
                modules[path] = (None, "import of " + path + " failed:\n" + format_exc())
        return modules[path]

    def target(module, name):
        parts = name.split("::")
        owner = getattr(module, parts[0])
        if len(parts) == 1:
            return owner
        if len(parts) != 2 or not isinstance(owner, type):
            raise LookupError("not a test id this runner knows: " + name)
        if issubclass(owner, unittest.TestCase):
            return owner(parts[1]).debug
        instance = owner()

        def method():
            getattr(instance, "setup_method", lambda m: None)(getattr(instance, parts[1]))
            try:
                getattr(instance, parts[1])()
            finally:
                getattr(instance, "teardown_method", lambda m: None)(getattr(instance, parts[1]))

        return method

    def run(tid):
        path, _, name = tid.partition("::")
        module, error = load(path)
        if module is None:
            return report(tid, False, error)
        try:
            timed(target(module, name))
        except BaseException:
            return report(tid, False, format_exc())
        report(tid, True, "")

    def discover(path):
        module, error = load(path)
        if module is None:
            return [path + "::<import>"], error
        found = []
        for name, obj in vars(module).items():
            if name.startswith("test") and callable(obj) and not isinstance(obj, type):
                found.append((getattr(getattr(obj, "__code__", None), "co_firstlineno", 0), name))
            elif name.startswith("Test") and isinstance(obj, type):
                line = min((getattr(getattr(m, "__code__", None), "co_firstlineno", 0)
                            for m in vars(obj).values() if callable(m)), default=0)
                for m in sorted(k for k in dir(obj) if k.startswith("test") and callable(getattr(obj, k))):
                    found.append((line, name + "::" + m))
        return [path + "::" + n for _, n in sorted(found, key=lambda f: f[0])], ""

    tests = list(payload["tests"])
    for path in payload["discover"]:
        ids, error = discover(path)
        if error:
            report(ids[0], False, error)
        tests += ids
    for tid in tests:
        run(tid)
    exit_now(0)


__swe_main()
"""


@dataclass(frozen=True)
class TestRun:
    """What one sandboxed run reported: each test's verdict in run order, and failure details."""

    results: dict[str, bool]
    details: dict[str, str] = field(default_factory=dict)
    killed_reason: str | None = None
    returncode: int = 0

    def passed(self, tid: str) -> bool:
        return self.results.get(tid) is True


def _details(stderr: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for block in stderr.split("\n=== ")[1:]:
        tid, _, body = block.partition("\n")
        out[tid] = body.strip()
    return out


def run_tests(
    snapshot: Snapshot,
    tests: Sequence[str] = (),
    *,
    discover: Sequence[str] = (),
    timeout: float = DEFAULT_TIMEOUT,
    per_test_timeout: float = PER_TEST_TIMEOUT,
    memory_mb: int = MEMORY_MB,
    site_packages: bool = False,
) -> TestRun:
    """Run ``tests`` (ids) and every test found in the ``discover`` files on ``snapshot``, in the sandbox."""
    nonce = secrets.token_hex(16)
    payload = {
        "text": snapshot.text,
        "binary": snapshot.binary,
        "tests": list(tests),
        "discover": list(discover),
        "per_test_timeout": per_test_timeout,
    }
    res = run_python(
        RUNNER,
        stdin=nonce + "\n" + json.dumps(payload),
        timeout=timeout,
        memory_mb=memory_mb,
        max_output=1 << 20,
        site_packages=site_packages,
    )
    results: dict[str, bool] = {}
    for line in res.stdout.split("\n"):
        parts = line.split("\t")
        if len(parts) == 3 and parts[0] == nonce:
            # a test reported twice (it cannot be, unless something replays lines) counts as failed
            results[parts[2]] = parts[1] == "pass" and parts[2] not in results
    return TestRun(results, _details(res.stderr), res.killed_reason, res.returncode)


def _tally(run: TestRun, ids: Sequence[str]) -> str:
    return f"{sum(run.passed(t) for t in ids)}/{len(ids)}"


def _restore_tests(instance: SweInstance, snapshot: Snapshot) -> list[str]:
    """Put the files the grading owns back as the instance has them; returns those that had changed."""
    base = instance.snapshot()
    changed = []
    for path in instance.test_files:
        before_text, before_bin = base.text.get(path), base.binary.get(path)
        if snapshot.text.get(path) != before_text or snapshot.binary.get(path) != before_bin:
            changed.append(path)
        for store, value in ((snapshot.text, before_text), (snapshot.binary, before_bin)):
            store.pop(path, None)
            if value is not None:
                store[path] = value
    return changed


def grade_files(
    instance: SweInstance,
    snapshot: Snapshot,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    per_test_timeout: float = PER_TEST_TIMEOUT,
    site_packages: bool = False,
) -> RewardResult:
    """Score the repository as the candidate left it (``snapshot`` is changed: tests restored and patched)."""
    restored = _restore_tests(instance, snapshot)
    try:
        apply_diff(snapshot.text, instance.test_patch)
    except PatchError as err:
        return RewardResult(0.0, {"reason": "test_patch_does_not_apply", "detail": str(err), "restored": restored})
    graded = list(dict.fromkeys((*instance.fail_to_pass, *instance.pass_to_pass)))
    run = run_tests(snapshot, graded, timeout=timeout, per_test_timeout=per_test_timeout, site_packages=site_packages)
    failed = [t for t in graded if not run.passed(t)]
    if not failed:
        reason = "ok"
    elif run.killed_reason is not None and any(t not in run.results for t in failed):
        reason = run.killed_reason
    else:
        reason = "tests_failed"
    info = {
        "reason": reason,
        "fail_to_pass": _tally(run, instance.fail_to_pass),
        "pass_to_pass": _tally(run, instance.pass_to_pass),
        "failed": failed[:_MAX_LISTED],
        "errors": {t: run.details.get(t, "no result")[-500:] for t in failed[:3]},
        "restored": restored,
    }
    return RewardResult(0.0 if failed else 1.0, info)


def _patched(instance: SweInstance, change: str | Sequence[Edit]) -> Snapshot | RewardResult:
    snapshot = instance.snapshot()
    try:
        if isinstance(change, str):
            touched = apply_diff(snapshot.text, change)
        else:
            apply_edits(snapshot.text, change)
            touched = [e.path for e in change]
    except PatchError as err:
        return RewardResult(0.0, {"reason": err.reason, "detail": str(err)})
    binary_hit = sorted(set(touched) & set(snapshot.binary))
    if binary_hit:
        return RewardResult(0.0, {"reason": "binary_file", "detail": f"cannot edit binary files {binary_hit}"})
    return snapshot


def evaluate_diff(instance: SweInstance, diff: str, **options: float | bool) -> RewardResult:
    """Score a unified diff (an empty one runs the tests on the unchanged repository)."""
    patched = _patched(instance, diff)
    return patched if isinstance(patched, RewardResult) else grade_files(instance, patched, **options)  # type: ignore[arg-type]


def evaluate_edits(instance: SweInstance, edits: Sequence[Edit], **options: float | bool) -> RewardResult:
    """Score search/replace edits applied to the instance's snapshot."""
    patched = _patched(instance, edits)
    return patched if isinstance(patched, RewardResult) else grade_files(instance, patched, **options)  # type: ignore[arg-type]


def format_report(run: TestRun, *, max_chars: int = 3000) -> str:
    """A test run as the agent reads it: a count line, then one line per test, failures with their last lines."""
    passed = sum(run.results.values())
    lines = [f"{passed} passed, {len(run.results) - passed} failed"]
    if run.killed_reason:
        lines[0] += f" (the run was stopped: {run.killed_reason})"
    for tid, ok in run.results.items():
        lines.append(f"{'PASS' if ok else 'FAIL'} {tid}")
        if not ok:
            tail = run.details.get(tid, "").splitlines()[-3:]
            lines.extend(f"    {t.strip()}" for t in tail)
    text = "\n".join(lines)
    return text if len(text) <= max_chars else text[: max_chars - 20] + "\n... (cut)"
