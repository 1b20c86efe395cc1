"""The sandbox survives hostile programs and still returns a verdict for each."""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from cascade_rl.rewards import sandbox, verify
from cascade_rl.rewards.sandbox import (
    ISOLATION_LEVELS,
    MIN_ISOLATION_ENV,
    SandboxError,
    SandboxResult,
    available_isolation,
    describe_isolation,
    isolation_level,
    min_isolation,
    run_python,
    set_min_isolation,
)

REPO = Path(__file__).resolve().parents[2]
SLACK = 10.0  # timeout where the limit under test is another one: a loaded machine starts processes slowly
HE_SPEC = {
    "type": "code",
    "test": "def check(candidate):\n    assert candidate(2) == 4\n    assert candidate(5) == 10\n",
    "entry_point": "double",
    "timeout": 10,  # generous: a loaded machine starts the sandboxed interpreter slowly
}


def _fenced(code: str) -> str:
    return f"```python\n{code}\n```"


# Other test runs may use the sandbox concurrently: give this process its own uid range.
UID_BASE, UID_SPAN = 0x60000000 + ((os.getpid() & 0xFFFF) << 8), 256


def _sandbox_pids(launchers: bool = True) -> list[int]:
    """Processes running as one of this test's sandbox uids, and (optionally) sandbox launchers."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            uid = os.stat(f"/proc/{entry}").st_uid
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        # Launchers run as root; they are recognised by this test's sandbox dir in their config.
        if UID_BASE <= uid < UID_BASE + UID_SPAN or (launchers and tempfile.gettempdir().encode() in cmdline):
            found.append(int(entry))
    return found


@pytest.fixture(autouse=True)
def no_leaks(tmp_path, monkeypatch):
    """Every test must leave no sandbox process and no sandbox directory behind."""
    monkeypatch.setattr(sandbox, "_UID_BASE", UID_BASE)
    monkeypatch.setattr(sandbox, "_UID_SPAN", UID_SPAN)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    before = set(glob.glob(os.path.join(tempfile.gettempdir(), "cascade-sandbox-*")))
    yield
    deadline = time.monotonic() + SLACK
    while _sandbox_pids() and time.monotonic() < deadline:
        time.sleep(0.05)  # the kernel may still be tearing a pid namespace down
    assert _sandbox_pids() == []
    after = set(glob.glob(os.path.join(tempfile.gettempdir(), "cascade-sandbox-*")))
    assert after - before == set()


def test_plain_program_runs_with_stdin():
    res = run_python("import sys\nprint(sum(int(x) for x in sys.stdin.read().split()))", stdin="1 2 3\n")
    assert (res.returncode, res.stdout, res.killed_reason, res.timed_out) == (0, "6\n", None, False)
    assert res.ok


def test_isolation_layers_as_root():
    layers = set(available_isolation())
    assert {"rlimits", "session", "no_new_privs"} <= layers
    if os.geteuid() == 0:
        expected = {"netns", "mountns", "pidns", "private_tmp", "private_proc", "readonly_root", "uid"}
        assert expected <= layers


def test_infinite_loop_times_out():
    start = time.monotonic()
    res = run_python("while True:\n    pass\n", timeout=1.0)
    assert res.timed_out and res.killed_reason == "timeout"
    assert time.monotonic() - start < SLACK  # enforced, not left to run (margin for a loaded machine)


def test_sleeping_child_does_not_outlive_timeout():
    code = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\ntime.sleep(60)\n"
    res = run_python(code, timeout=1.0)
    assert res.timed_out  # no_leaks checks the setsid'd child is gone too


def test_fork_bomb_is_capped_and_cleaned_up():
    code = (
        "import os, time\n"
        "n = 0\n"
        "for _ in range(500):\n"
        "    try:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(30)\n"
        "            os._exit(0)\n"
        "        n += 1\n"
        "    except OSError:\n"
        "        break\n"
        "print(n, flush=True)\n"
        "while True:\n"
        "    try:\n"
        "        os.fork()\n"
        "    except OSError:\n"
        "        pass\n"
    )
    res = run_python(code, timeout=1.5, max_procs=16)
    assert res.timed_out
    if os.geteuid() == 0:
        assert int(res.stdout.split()[0]) < 16  # RLIMIT_NPROC holds for the unprivileged uid


def test_memory_bomb_fails_without_harming_host():
    res = run_python("x = []\nwhile True:\n    x.append(bytearray(50 << 20))\n", timeout=SLACK, memory_mb=256)
    assert res.returncode == 1 and "MemoryError" in res.stderr


def test_huge_output_is_capped():
    res = run_python("while True:\n    print('x' * 10000)\n", timeout=SLACK, max_output=1 << 16)
    assert res.killed_reason == "output_limit" and res.output_truncated
    assert len(res.stdout) == 1 << 16


def test_segfault_is_a_verdict():
    res = run_python("import ctypes\nctypes.string_at(0)\n", timeout=SLACK)
    assert res.returncode == -signal.SIGSEGV and res.killed_reason == "signal:SIGSEGV"


def test_writes_outside_workdir_do_not_reach_host():
    tmp_target = f"/tmp/cascade_sandbox_escape_{os.getpid()}"
    repo_target = REPO / f"escape_{os.getpid()}.txt"
    code = (
        "import os\n"
        f"for path in ({tmp_target!r}, {str(repo_target)!r}, '/var/tmp/escape', os.path.expanduser('~/f')):\n"
        "    try:\n"
        "        with open(path, 'w') as f:\n"
        "            f.write('pwned')\n"
        "        print('wrote', path)\n"
        "    except OSError as e:\n"
        "        print('denied', path, type(e).__name__)\n"
    )
    res = run_python(code, timeout=SLACK)
    assert res.returncode == 0
    assert not os.path.exists(tmp_target) and not repo_target.exists() and not os.path.exists("/var/tmp/escape")
    assert f"denied {repo_target}" in res.stdout  # the repo is read-only / not writable for the uid


def test_env_secrets_are_not_visible(monkeypatch):
    monkeypatch.setenv("CASCADE_TEST_SECRET", "hunter2-secret-value")
    code = (
        "import os\n"
        "print(dict(os.environ))\n"
        "for pid in os.listdir('/proc'):\n"
        "    try:\n"
        "        print(open(f'/proc/{pid}/environ', 'rb').read())\n"
        "    except OSError:\n"
        "        pass\n"
    )
    res = run_python(code, timeout=SLACK)
    assert res.returncode == 0
    assert "hunter2" not in res.stdout + res.stderr
    assert set(eval(res.stdout.splitlines()[0])) == {"PATH", "LANG", "HOME", "PYTHONIOENCODING"}


def test_network_connection_is_refused():
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.3)
    port = server.getsockname()[1]
    code = (
        "import socket\n"
        "try:\n"
        f"    socket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'leak')\n"
        "    print('connected')\n"
        "except OSError as e:\n"
        "    print('blocked', type(e).__name__)\n"
    )
    try:
        res = run_python(code, timeout=SLACK)
        with pytest.raises(TimeoutError):
            server.accept()
    finally:
        server.close()
    assert res.stdout.startswith("blocked")


def test_killing_parent_or_host_processes_fails():
    me = os.getpid()
    code = (
        "import os, signal\n"
        f"for target in (os.getppid(), 1, {me}, -1):\n"
        "    try:\n"
        "        os.kill(target, signal.SIGKILL)\n"
        "    except OSError as e:\n"
        "        print('denied', target, type(e).__name__)\n"
        "print('alive')\n"
    )
    res = run_python(code, timeout=SLACK)
    assert os.getpid() == me  # still here
    assert res.killed_reason in (None, "signal:SIGKILL")  # at most it killed itself


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("exit_before_tests", "import os\nos._exit(0)\ndef double(x):\n    return 2 * x"),
        ("sys_exit_zero", "import sys\nsys.exit(0)\ndef double(x):\n    return 2 * x"),
        (
            "override_builtins",
            "import builtins, sys\n"
            "builtins.AssertionError = type('Quiet', (Exception,), {})\n"
            "builtins.print = lambda *a, **k: sys.__stdout__.write('PASS\\n')\n"
            "sys.exit = lambda *a: None\n"
            "def double(x):\n    return x + 1",
        ),
        (
            "equal_to_everything",
            "class Any(int):\n    def __eq__(self, other):\n        return True\ndef double(x):\n    return Any(0)",
        ),
        (
            "patch_sys_modules",
            "import sys, types\n"
            "fake = types.ModuleType('os')\n"
            "fake._exit = lambda code: None\n"
            "fake.write = lambda fd, data: None\n"
            "sys.modules['os'] = fake\n"
            "def double(x):\n    raise SystemExit(0)",
        ),
        ("atexit_hook", "import atexit, os\natexit.register(lambda: os._exit(0))\ndef double(x):\n    return 0"),
    ],
)
def test_humaneval_tampering_never_passes(name, code):
    result = verify(_fenced(code), HE_SPEC)
    assert result.score == 0.0, name
    assert result.info["tests"][0]["passed"] is False


def test_humaneval_honest_solution_passes():
    assert verify(_fenced("def double(x):\n    return 2 * x"), HE_SPEC).score == 1.0


def test_large_stdin_is_streamed():
    data = "x" * (3 << 20)
    res = run_python("import sys\nprint(len(sys.stdin.read()))", stdin=data, timeout=5.0)
    assert res.stdout == f"{len(data)}\n"


def test_socket_guard_fallback_refuses_internet_sockets():
    code = sandbox._SOCKET_GUARD + (
        "import socket\n"
        "try:\n"
        "    socket.socket(socket.AF_INET, socket.SOCK_STREAM)\n"
        "except PermissionError as e:\n"
        "    print(e)\n"
        "a, b = socket.socketpair()\n"
        "print('unix ok')\n"
    )
    res = run_python(code, timeout=SLACK)
    assert res.stdout == "network access is disabled in the sandbox\nunix ok\n"


def test_sandbox_dies_with_its_caller(tmp_path):
    """A reward worker killed mid-run must not leave its sandboxed program behind."""

    marker = "cascade-orphan-check"
    driver = (
        "import sys, tempfile\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        f"tempfile.tempdir = {str(tmp_path)!r}\n"
        "from cascade_rl.rewards import sandbox\n"
        f"sandbox._UID_BASE, sandbox._UID_SPAN = {UID_BASE}, {UID_SPAN}\n"
        f"sandbox.run_python('import time\\ntime.sleep(60)  # {marker}', timeout=60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", driver])
    deadline = time.monotonic() + 20
    while not _sandbox_pids(launchers=False) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _sandbox_pids(launchers=False), "the sandboxed program never started"
    proc.kill()
    proc.wait()
    # no_leaks asserts that the sleeping program and its supervisor are gone. The killed caller
    # cannot remove its (small) sandbox directory; that one is expected.
    for leftover in tmp_path.glob("cascade-sandbox-*"):
        shutil.rmtree(leftover)


def test_standard_library_works_without_site():
    modules = "collections heapq itertools functools math re json fractions decimal bisect typing dataclasses"
    modules += " random string datetime statistics hashlib sys os ctypes threading multiprocessing"
    code = f"import importlib\nfor m in {modules.split()!r}:\n    importlib.import_module(m)\nprint('ok')\n"
    assert run_python(code, timeout=5.0).stdout == "ok\n"
    assert "No module named 'jsonschema'" in run_python("import jsonschema", timeout=5.0).stderr
    assert run_python("import jsonschema; print('ok')", timeout=5.0, site_packages=True).stdout == "ok\n"


# --- isolation levels and the minimum isolation -------------------------------------------------

ROOT_LAYERS = (
    "rlimits",
    "session",
    "netns",
    "mountns",
    "pidns",
    "private_tmp",
    "readonly_root",
    "uid",
    "no_new_privs",
    "private_proc",
)
USERNS_LAYERS = ("rlimits", "session", "userns", "netns", "mountns", "pidns", "private_tmp", "no_new_privs")
DEGRADED = ("rlimits", "session", "no_new_privs")  # e.g. a container whose seccomp profile forbids unshare


@pytest.fixture(autouse=True)
def isolation_state(monkeypatch):
    """Start every test from the default minimum; undo set_min_isolation / cache changes afterwards."""
    monkeypatch.delenv(MIN_ISOLATION_ENV, raising=False)  # restored at teardown, also after set_min_isolation
    monkeypatch.setattr(sandbox, "_AVAILABLE", sandbox._AVAILABLE)


class _PopenRecorder:
    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []

    def __call__(self, *args: object, **kwargs: object) -> None:
        self.calls.append(args)
        raise AssertionError("subprocess.Popen was called")


@pytest.mark.parametrize(
    ("layers", "level"),
    [
        ((), "none"),
        (("session", "rlimits"), "none"),
        (DEGRADED, "process"),
        (("rlimits", "session", "no_new_privs", "netns", "mountns", "private_tmp", "uid"), "process"),  # no pidns
        (("rlimits", "session", "no_new_privs", "netns", "pidns", "private_tmp"), "process"),  # no mountns
        (USERNS_LAYERS, "namespaces"),
        ((*USERNS_LAYERS, "private_proc"), "namespaces"),  # no readonly_root
        (ROOT_LAYERS, "full"),
        ((*USERNS_LAYERS, "readonly_root", "private_proc"), "full"),
    ],
)
def test_isolation_level_of_layers(layers, level):
    assert isolation_level(layers) == level
    assert isolation_level(iter(layers)) == level  # any iterable


def test_isolation_levels_are_nested():
    levels = list(ISOLATION_LEVELS.values())
    assert list(ISOLATION_LEVELS)[:3] == ["none", "process", "namespaces"]
    for lower, higher in itertools.pairwise(levels):
        assert set(lower) < set(higher)


def test_min_isolation_default_and_environment(monkeypatch):
    assert min_isolation() == "process"
    monkeypatch.setenv(MIN_ISOLATION_ENV, "namespaces")
    assert min_isolation() == "namespaces"
    monkeypatch.setenv(MIN_ISOLATION_ENV, "sandboxed")
    with pytest.raises(ValueError, match=MIN_ISOLATION_ENV):
        min_isolation()


def test_set_min_isolation_validates_and_sets_environment():
    with pytest.raises(ValueError, match="none, process, namespaces, full"):
        set_min_isolation("strong")
    assert MIN_ISOLATION_ENV not in os.environ
    set_min_isolation("namespaces")
    assert os.environ[MIN_ISOLATION_ENV] == "namespaces"  # how spawned reward workers inherit it
    assert min_isolation() == "namespaces"


def test_below_minimum_refuses_before_running(monkeypatch):
    monkeypatch.setattr(sandbox, "_AVAILABLE", DEGRADED)
    popen = _PopenRecorder()
    monkeypatch.setattr(sandbox.subprocess, "Popen", popen)
    set_min_isolation("namespaces")
    with pytest.raises(SandboxError) as err:
        run_python("print(1)")
    message = str(err.value)
    assert "isolation here is 'process' (missing: netns, mountns, private_tmp, pidns)" in message
    assert "required 'namespaces'" in message
    assert "sandbox.min_isolation" in message and MIN_ISOLATION_ENV in message
    assert popen.calls == []  # refused before anything was launched


def test_at_minimum_runs_normally(monkeypatch):
    monkeypatch.setattr(sandbox, "_AVAILABLE", DEGRADED)
    set_min_isolation("process")
    res = run_python("print(1)")
    assert (res.returncode, res.stdout) == (0, "1\n")


def test_describe_isolation_names_levels(monkeypatch):
    monkeypatch.setattr(sandbox, "_AVAILABLE", DEGRADED)
    assert describe_isolation() == ("sandbox isolation: process (rlimits, session, no_new_privs); required: process")
    set_min_isolation("namespaces")
    line = describe_isolation()
    assert line.startswith("sandbox isolation: process (") and "required: namespaces" in line
    assert "NOT MET" in line


def test_real_probe_runs_once_and_reaches_process(monkeypatch):
    monkeypatch.setattr(sandbox, "_AVAILABLE", None)
    launches: list[str] = []
    real_run = sandbox._run

    def counting_run(code: str, **kwargs: object) -> SandboxResult:
        launches.append(code)
        return real_run(code, **kwargs)

    monkeypatch.setattr(sandbox, "_run", counting_run)
    layers = available_isolation()
    level = isolation_level(layers)
    print(describe_isolation())
    assert available_isolation() == layers
    assert run_python("print(1)").stdout == "1\n"
    assert len(launches) == 2  # one probe, one program: the probe result is cached
    levels = list(ISOLATION_LEVELS)
    assert levels.index(level) >= levels.index("process")
    assert level in describe_isolation()


def test_failed_probe_is_an_error_and_not_cached(monkeypatch):
    monkeypatch.setattr(sandbox, "_AVAILABLE", None)
    failed = SandboxResult(1, "", "boom", False, None, False, 0.0, ())
    monkeypatch.setattr(sandbox, "_run", lambda code, **kwargs: failed)
    with pytest.raises(SandboxError, match=r"probe failed.*boom"):
        run_python("print(1)")
    assert sandbox._AVAILABLE is None
