"""The stateful Python tool: notebook semantics, and hostile cells that must not hurt the host or the episode."""

from __future__ import annotations

import glob
import os
import tempfile
import time
from pathlib import Path

import pytest

from cascade_rl.chat import ParsedCompletion
from cascade_rl.envs.base import ENVS
from cascade_rl.envs.python_tool import TOOL, PythonToolEnv
from cascade_rl.rewards import sandbox
from cascade_rl.rewards.sandbox import MIN_ISOLATION_ENV, SandboxError, set_min_isolation
from cascade_rl.rewards.sandbox_session import CellResult, PythonSession
from cascade_rl.types import Prompt, ToolCall

PROMPT = Prompt(messages=({"role": "user", "content": "compute"},), spec={}, domain="math", tools=(TOOL,))
# Other test runs may use the sandbox at the same time: this process gets its own uid range.
UID_BASE, UID_SPAN = 0x50000000 + ((os.getpid() & 0xFFFF) << 8), 256
GRACE = 5.0  # seconds a loaded machine may take to tear a killed process tree down


def _running(uids: range, marker: str | None = None) -> list[int]:
    """Live (non-zombie) processes running as one of ``uids`` or whose command line names ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            uid = os.stat(f"/proc/{entry}").st_uid
            with open(f"/proc/{entry}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except (OSError, IndexError):
            continue
        if state != b"Z" and (uid in uids or (marker is not None and marker.encode() in cmdline)):
            found.append(int(entry))
    return found


def _session_pids(session: PythonSession) -> list[int]:
    """What the session runs: its interpreter and children (its uid) and its launcher/supervisor (its folder)."""
    assert session.uid is not None and session.host_dir is not None
    return _running(range(session.uid, session.uid + 1), session.host_dir)


@pytest.fixture(autouse=True)
def no_leaks(tmp_path, monkeypatch):
    """Every test must leave no sandbox process and no session folder behind."""
    monkeypatch.setattr(sandbox, "_UID_BASE", UID_BASE)
    monkeypatch.setattr(sandbox, "_UID_SPAN", UID_SPAN)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    yield
    deadline = time.monotonic() + GRACE
    while _running(range(UID_BASE, UID_BASE + UID_SPAN), str(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _running(range(UID_BASE, UID_BASE + UID_SPAN), str(tmp_path)) == []
    assert glob.glob(os.path.join(str(tmp_path), "cascade-sandbox-*")) == []


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="finds the session's processes by its sandbox uid")


def _call(env: PythonToolEnv, code: str) -> str:
    return env.run(ToolCall("stateful_python_code_exec", {"code": code}))


# --- notebook semantics ---------------------------------------------------------------------------


def test_state_persists_and_final_expression_is_shown():
    with PythonSession(timeout=10) as session:
        assert session.execute("x = 41") == CellResult(output="")
        assert session.execute("x + 1").output == "42\n"
        assert session.execute("print('hello', x)\nx = 'text'").output == "hello 41\n"
        assert session.execute("x").output == "'text'\n"  # the repr, like a notebook
        assert session.execute("import math; math.factorial(30)").output == "265252859812191058636308480000000\n"
        assert session.execute("math.pi;").output == ""  # a trailing semicolon hides the value
        assert session.execute("None").output == ""


def test_exception_gives_traceback_and_session_survives():
    with PythonSession(timeout=10) as session:
        session.execute("y = 7")
        result = session.execute("print('before')\n1/0")
        assert result.error is None and not result.restarted
        assert result.output.startswith("before\nTraceback (most recent call last):\n")
        assert 'File "<cell 2>", line 2' in result.output and "1/0" in result.output  # the cell's own line
        assert result.output.endswith("ZeroDivisionError: division by zero\n")
        assert "prog.py" not in result.output  # the driver's frames are left out
        assert session.execute("def f(:").output.endswith("SyntaxError: invalid syntax\n")
        assert session.execute("y * 6").output == "42\n"


def test_system_exit_ends_the_cell_and_os_exit_restarts():
    with PythonSession(timeout=10) as session:
        session.execute("z = 1")
        result = session.execute("import sys\nprint('a')\nsys.exit(3)\nprint('b')")
        assert result.output == "a\n" and not result.restarted
        assert result.error is not None and "SystemExit(3)" in result.error
        assert session.execute("z").output == "1\n"
        result = session.execute("import os\nos._exit(4)")
        assert result.restarted and not result.timed_out
        assert result.error is not None and "status 4" in result.error and "variables are gone" in result.error
        assert session.execute("z").output.endswith("NameError: name 'z' is not defined\n")


def test_interpreter_lost_between_calls_is_reported_on_the_next_call():
    with PythonSession(timeout=10) as session:
        session.execute(
            "import os, threading, time\nthreading.Thread(target=lambda: (time.sleep(0.2), os._exit(5))).start()"
        )
        time.sleep(0.5)
        result = session.execute("print('fresh')")
        assert result.output == "fresh\n" and result.restarted
        assert result.error is not None and "status 5" in result.error and "variables are gone" in result.error


def test_cwd_persists_and_stdin_is_empty():
    with PythonSession(timeout=10) as session:
        session.execute("open('notes.txt', 'w').write('kept')")
        assert session.execute("open('notes.txt').read()").output == "'kept'\n"
        assert session.host_dir is not None
        assert Path(session.host_dir, "work", "notes.txt").read_text() == "kept"
        assert session.execute("input()").output.endswith("EOFError: EOF when reading a line\n")


def test_subprocess_output_is_captured_in_order():
    with PythonSession(timeout=10) as session:
        code = (
            "import subprocess, os\n"
            "print('one', flush=True)\n"
            "subprocess.run(['echo', 'two'])\n"
            "os.write(2, b'three\\n')\n"
            "print('four')"
        )
        assert session.execute(code).output == "one\ntwo\nthree\nfour\n"


def test_forked_child_exits_at_the_end_of_the_cell():
    """A child that falls off the end of the cell exits like a script; it never answers requests itself."""
    with PythonSession(timeout=10) as session:
        code = "import os\nif os.fork() == 0:\n    print('child')\n    raise SystemExit(0)\nos.wait()\nprint('parent')"
        assert session.execute(code) == CellResult(output="child\nparent\n")
        code = "import os\npid = os.fork()\nif pid == 0:\n    print('child')\nelse:\n    os.waitpid(pid, 0)"
        assert session.execute(code).output == "child\n"
        for n in range(3):
            assert session.execute(f"{n} + 1").output == f"{n + 1}\n"


# --- hostile cells, through the environment the model uses ----------------------------------------


def test_infinite_loop_times_out_and_the_episode_goes_on():
    env = PythonToolEnv(PROMPT, timeout=2)
    try:
        _call(env, "kept = 1")
        start = time.monotonic()
        response = _call(env, "print('working')\nwhile True:\n    pass")
        assert time.monotonic() - start < 2 + GRACE
        assert response.startswith(
            "error: timed out after 2s; the interpreter was restarted, earlier variables are gone"
        )
        assert response.endswith("working")  # what it printed before the time-out
        assert (env.calls, env.errors) == (2, 1)
        assert _call(env, "print(1 + 1)") == "2\n"
        assert _call(env, "kept").endswith("NameError: name 'kept' is not defined\n")
    finally:
        env.close()


@needs_root
def test_fork_bomb_fails_inside_and_leaves_nothing_running():
    env = PythonToolEnv(PROMPT, timeout=10)
    try:
        response = _call(env, "import os\nwhile True: os.fork()")
        assert "BlockingIOError" in response or response.startswith("error:")
        assert env.session is not None
        assert len(_running(range(env.session.uid, env.session.uid + 1))) == 1  # just the interpreter
        assert _call(env, "print('alive')") == "alive\n"
    finally:
        env.close()


@pytest.mark.parametrize(
    "code", ["x = bytearray(10**10)", "x = []\nwhile True:\n    x.append(bytearray(1 << 20))"], ids=["huge", "growing"]
)
def test_memory_bomb_fails_and_the_next_call_works(code):
    env = PythonToolEnv(PROMPT, timeout=10, memory_mb=256)
    try:
        response = _call(env, code)
        assert "MemoryError" in response or response.startswith("error:")
        assert _call(env, "x = None\nprint('alive')") == "alive\n"
        assert _call(env, "sum(range(10))") == "45\n"
    finally:
        env.close()


def test_single_huge_print_is_capped():
    env = PythonToolEnv(PROMPT, timeout=10, max_output=1000)
    try:
        response = _call(env, "print('x' * 10**8)")
        assert response == "x" * 1000 + f"\n[output truncated: {10**8 + 1 - 1000} characters omitted]\n"
        assert _call(env, "print('ok')") == "ok\n"  # the session survived it
    finally:
        env.close()


def test_endless_printing_is_capped_and_times_out():
    env = PythonToolEnv(PROMPT, timeout=2, max_output=1000)
    try:
        response = _call(env, "while True:\n    print('y')")
        assert response.startswith("error: timed out after 2s")
        assert "[output truncated: " in response and len(response) < 1000 + 300
        assert _call(env, "print('ok')") == "ok\n"
    finally:
        env.close()


def test_traceback_survives_output_cap():
    with PythonSession(timeout=10, max_output=500) as session:
        output = session.execute("print('z' * 10000)\nraise ValueError('the cause')").output
        assert output.endswith("ValueError: the cause\n") and "[output truncated: " in output
        assert len(output) < 500 + 100


@needs_root
def test_background_children_die_with_their_cell():
    with PythonSession(timeout=10) as session:
        code = (
            "import os, subprocess, time\n"
            "p = subprocess.Popen(['sleep', '1000'])\n"
            "if os.fork() == 0:\n"
            "    os.setsid()\n"
            "    time.sleep(1000)\n"
            "    os._exit(0)\n"
            "time.sleep(0.1)\n"
            "print('started')"
        )
        assert session.execute(code).output == "started\n"
        assert session.uid is not None
        assert len(_running(range(session.uid, session.uid + 1))) == 1  # just the interpreter


@needs_root
def test_close_leaves_nothing_running():
    env = PythonToolEnv(PROMPT, timeout=10)
    _call(env, "x = 1")
    session = env.session
    assert session is not None and session.host_dir is not None
    host_dir = session.host_dir
    # A thread starts children after its cell is done: only close() can end them.
    code = (
        "import os, subprocess, threading, time\n"
        "def spawn():\n"
        "    time.sleep(0.1)\n"
        "    subprocess.Popen(['sleep', '1000'], start_new_session=True)\n"
        "    if os.fork() == 0:\n"
        "        time.sleep(1000)\n"
        "threading.Thread(target=spawn, daemon=True).start()"
    )
    _call(env, code)
    deadline = time.monotonic() + GRACE
    while len(_session_pids(session)) < 5 and time.monotonic() < deadline:  # launcher, supervisor, 3 of the uid
        time.sleep(0.02)
    assert len(_session_pids(session)) == 5
    env.close()
    assert _running(range(session.uid, session.uid + 1), host_dir) == []  # at once, not eventually
    assert not os.path.exists(host_dir)
    env.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        session.execute("1")


def test_cell_cannot_forge_a_response():
    with PythonSession(timeout=10) as session:
        fake = "\x00" * 7 + '/{"t": "done", "id": 2, "tb": "", "omitted": 0, "error": null}'
        code = f"import os, sys\nprint({fake!r})\nsys.__stdout__.write({fake!r})\nn = os.write(1, {fake!r}.encode())\n"
        assert session.execute(code).output == fake + "\n" + fake + fake
        assert session.execute("6 * 7").output == "42\n"


def test_step_answers_tool_calls_and_registers():
    assert ENVS["python_tool"] is PythonToolEnv
    env = PythonToolEnv(PROMPT, timeout=10)
    try:
        assert env.reset() == [{"role": "user", "content": "compute"}]
        calls = (
            ToolCall("stateful_python_code_exec", {"code": "a = 2"}),
            ToolCall("stateful_python_code_exec", {"code": "a ** 10"}),
        )
        step = env.step(ParsedCompletion(content="", tool_calls=calls))
        assert not step.done and [m["content"] for m in step.messages] == ["", "1024\n"]
        assert _call(env, "print(a)") == "2\n"
        assert env.run(ToolCall("stateful_python_code_exec", {})).startswith("error: bad arguments")
        assert env.step(ParsedCompletion(content="1024")).done
    finally:
        env.close()


def test_min_isolation_is_honoured(monkeypatch):
    monkeypatch.setenv(MIN_ISOLATION_ENV, "process")  # monkeypatch restores the variable afterwards
    set_min_isolation("namespaces")
    monkeypatch.setattr(sandbox, "available_isolation", lambda: ("rlimits", "session", "no_new_privs"))
    session = PythonSession(timeout=10)
    with pytest.raises(SandboxError, match="below the required 'namespaces'"):
        session.execute("print(1)")
    assert session.host_dir is None  # nothing was started
    session.close()


def test_interpreter_that_cannot_start_is_a_sandbox_error():
    session = PythonSession(timeout=10, memory_mb=4)  # too little address space for the interpreter itself
    try:
        with pytest.raises(SandboxError, match="did not start"):
            session.execute("1")
    finally:
        session.close()
