"""A stateful Python interpreter in the sandbox: one per episode, variables persist across cells.

``PythonSession.execute(code)`` runs one cell, notebook style, and returns a ``CellResult``. The
interpreter is started by the launcher ``run_python`` uses (``_sandbox_launcher``), so it gets the
same isolation layers and the same ``min_isolation()`` refusal; see ``cascade_rl.rewards.sandbox``.

Inside the sandbox a driver program (``_DRIVER``, the sandboxed ``prog.py``) serves requests:

* Requests come on the program's stdin, each an 8-byte big-endian length and a JSON object
  ``{"id", "code"}``. The driver moves them to a private descriptor and gives the cell an empty stdin.
* Responses go on a separate pipe (inherited descriptor) in the same framing: ``ready`` once, then
  per cell any number of ``omit`` progress frames and exactly one ``done`` frame (its traceback, the
  count of omitted output characters, an error message). The cell's stdout/stderr never reach that
  pipe, so nothing a cell prints can pass for a response.
* The cell's ``sys.stdout`` / ``sys.stderr`` forward the first ``max_output`` characters to fd 1 and
  only count the rest, so a huge print costs nothing to transfer. fd 1 (with fd 2 merged into it) is
  read by the host, which keeps what subprocesses and ``os.write`` put there in order with the
  prints, capped again on this side.
* A process the cell forked never serves requests: when it finishes the cell it exits. Once a cell
  is done, every process it started is killed (where a pid namespace or an own uid bound the kill),
  so fork bombs and background children do not outlive their cell; threads do.

Time-outs and crashes. When no ``done`` frame arrives within ``timeout`` seconds (wall clock), or
the interpreter dies, or the response channel carries more than a hard cap, the whole process tree
is killed (the launcher's process group, hence the pid namespace; without one, every process of the
session's uid) and the result says the variables are gone; the next ``execute`` starts a fresh
interpreter. The working directory (and files in it) persists across cells and restarts until
``close()``. Each cell also gets a CPU-time limit of ``timeout`` seconds beyond what the interpreter
has used so far, inherited by the processes it forks.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import os
import selectors
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any

from cascade_rl.rewards import sandbox
from cascade_rl.rewards.sandbox import SandboxError

__all__ = ["CellResult", "PythonSession"]

_START_TIMEOUT = 30.0  # seconds for the interpreter to come up (a loaded machine starts processes slowly)
_KILL_WAIT = 5.0  # seconds to wait for killed processes to be gone
_READ_CHUNK = 1 << 16
_HEADER = 8  # bytes of the big-endian frame length

# The sandboxed program (stdlib only). The host prepends the constants RESPONSE_FD, MAX_OUTPUT,
# TIMEOUT and REAP, and, without a network namespace, the socket guard.
_DRIVER = r'''
import ast
import io
import json
import linecache
import os
import resource
import signal
import sys
import threading
import time
import traceback
import types

# Bound once: a cell that replaces os.write and friends breaks its own code, not the protocol.
_write, _read, _getpid, _exit, _kill, _waitpid = os.write, os.read, os.getpid, os._exit, os.kill, os.waitpid
_PID = _getpid()
_LOCK = threading.Lock()
_REPORT_EVERY = 0.25
_RESP = -1
_G = {}
_reserve = bytearray(1 << 20)  # freed on MemoryError, so the traceback can still be formatted and sent


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[_write(fd, view):]


def _send(message):
    data = json.dumps(message).encode()
    with _LOCK:
        try:
            _write_all(_RESP, len(data).to_bytes(8, "big") + data)
        except OSError:
            _exit(70)  # the host is gone or the cell closed the channel: nobody to answer


def _read_exact(fd, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = _read(fd, n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def _receive(fd):
    header = _read_exact(fd, 8)
    body = None if header is None else _read_exact(fd, int.from_bytes(header, "big"))
    return None if body is None else json.loads(body)


class _Bytes:
    def __init__(self, text):
        self.text = text

    def write(self, data):
        self.text.write(bytes(data).decode("utf-8", "replace"))
        return len(data)

    def flush(self):
        pass


class _Output(io.TextIOBase):
    """sys.stdout / sys.stderr of a cell: the first MAX_OUTPUT characters go to fd 1, the rest is counted."""

    encoding = "utf-8"
    errors = "replace"

    def __init__(self):
        self.start(0)
        self.buffer = _Bytes(self)

    def start(self, cell):
        self.cell, self.budget, self.omitted, self.reported = cell, MAX_OUTPUT, 0, 0.0

    def writable(self):
        return True

    def isatty(self):
        return False

    def flush(self):
        pass

    def close(self):
        pass  # a cell closing sys.stdout must not silence the cells after it

    def write(self, s):
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        keep = s[: max(self.budget, 0)]
        if keep:
            self.budget -= len(keep)
            try:
                _write_all(1, keep.encode("utf-8", "replace"))
            except OSError:
                pass
        if len(keep) < len(s):
            self.omitted += len(s) - len(keep)
            now = time.monotonic()
            # the host learns about omitted output even if the cell then times out
            if _getpid() == _PID and now - self.reported >= _REPORT_EVERY:
                self.reported = now
                _send({"t": "omit", "id": self.cell, "n": self.omitted})
        return len(s)


_OUT = _Output()


def _format(exc):
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next  # the driver's own frames are noise to the model
    try:
        return "".join(traceback.format_exception(type(exc), exc, tb))
    except BaseException:
        return f"{type(exc).__name__} (the traceback could not be formatted)\n"


def _compile(code, name):
    tree = ast.parse(code, name, "exec")
    final = None
    if tree.body and isinstance(tree.body[-1], ast.Expr) and not code.rstrip().endswith(";"):
        final = compile(ast.Expression(tree.body.pop().value), name, "eval", dont_inherit=True)
    return compile(tree, name, "exec", dont_inherit=True), final


def _run_cell(code, cell):
    """(traceback text or None, the SystemExit raised or None)."""
    global _reserve
    name = f"<cell {cell}>"
    linecache.cache[name] = (len(code), None, code.splitlines(True), name)
    try:
        body, final = _compile(code, name)
    except BaseException as exc:
        return "".join(traceback.format_exception_only(type(exc), exc)), None
    try:
        exec(body, _G)
        if final is not None:
            value = eval(final, _G)
            if value is not None:
                _OUT.write(repr(value) + "\n")
    except SystemExit as exc:
        return None, exc
    except BaseException as exc:
        _reserve = None
        return _format(exc), None
    return None, None


def _exit_code(exc):
    code = exc.code
    if code is None or isinstance(code, int):
        return (code or 0) & 0xFF
    _OUT.write(f"{code}\n")
    return 1


def _child_done(tb, exit_exc):
    """A process the cell forked reached the end of the cell: it exits like a script would."""
    if tb:
        _OUT.write(tb)
    for stream in (sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except BaseException:
            pass
    _exit(_exit_code(exit_exc) if exit_exc is not None else 1 if tb else 0)


def _reap():
    """Kill what the cell started and wait until it is gone (REAP: a pid namespace or own uid bounds kill(-1))."""
    deadline = time.monotonic() + 2.0
    while True:
        try:
            # atomic against fork: no child of a killed process gets through. It keeps finding processes
            # until they are reaped (zombies included), so it also says when all are gone.
            _kill(-1, signal.SIGKILL)
        except OSError:
            return  # ESRCH: nothing left
        while True:  # our own children are ours to reap; orphans are reaped by the supervisor
            try:
                pid, _ = _waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
        if time.monotonic() > deadline:
            return
        time.sleep(0.0005)


def _prepare(cell):
    sys.stdout = sys.stderr = _OUT
    sys.stdin = io.StringIO()
    _OUT.start(cell)
    used = sum(os.times()[:2])
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    limit = int(used + TIMEOUT) + 2
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    try:
        resource.setrlimit(resource.RLIMIT_CPU, (limit, hard))
    except (ValueError, OSError):
        pass


def _serve(request):
    global _reserve
    cell = request["id"]
    _prepare(cell)
    tb, exit_exc = _run_cell(request["code"], cell)
    if _getpid() != _PID:
        _child_done(tb, exit_exc)
    for stream in (sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except BaseException:
            pass
    if REAP:
        _reap()
    error = None
    if exit_exc is not None:
        error = f"the code raised SystemExit({exit_exc.code!r}); the cell stopped there, variables are kept"
    if tb and len(tb) > MAX_OUTPUT:
        tail = tb[-MAX_OUTPUT:]
        tail = tail[tail.find("\n") + 1 :] or tail  # from a line start
        tb = f"[traceback truncated: {len(tb) - len(tail)} characters omitted]\n" + tail
    try:
        _send({"t": "done", "id": cell, "omitted": _OUT.omitted, "tb": tb or "", "error": error})
    except MemoryError:
        _send({"t": "done", "id": cell, "omitted": 0, "tb": "MemoryError\n", "error": error})
    if _reserve is None:
        try:
            _reserve = bytearray(1 << 20)
        except MemoryError:
            pass


def _main():
    global _RESP, _G
    requests = os.dup(0)  # private (not inherited by subprocesses); the cell gets an empty stdin
    r, w = os.pipe()
    os.close(w)
    os.dup2(r, 0)
    os.close(r)
    _RESP = os.dup(RESPONSE_FD)
    os.close(RESPONSE_FD)
    sys.path.insert(0, "")  # like a notebook: modules the cells write to the working directory import
    driver = sys.modules["__main__"]  # held by this frame: the driver's globals must outlive the swap
    main = types.ModuleType("__main__")
    sys.modules["__main__"] = main
    _G = main.__dict__
    _send({"t": "ready", "id": 0})
    while driver is not None:
        request = _receive(requests)
        if request is None:
            _exit(0)  # the host closed the session
        _serve(request)


_main()
'''


@dataclass(frozen=True)
class CellResult:
    """One cell's outcome.

    ``output``: stdout and stderr as the model should read them (a traceback of an exception the code
    raised is part of it), at most ``max_output`` characters plus a truncation note. ``error``: a short
    message for a time-out, a crash of the interpreter, a ``SystemExit``. ``restarted``: the interpreter
    was lost (earlier variables are gone); the next cell runs in a fresh one.
    """

    output: str
    error: str | None = None
    timed_out: bool = False
    restarted: bool = False


class _Text:
    """Output read from the interpreter's fd 1: decoded incrementally, the first ``cap`` characters kept."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.parts: list[str] = []
        self.size = self.omitted = self.remote_omitted = 0
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def feed(self, data: bytes, final: bool = False) -> None:
        text = self.decoder.decode(data, final)
        keep = text[: max(self.cap - self.size, 0)]
        if keep:
            self.parts.append(keep)
            self.size += len(keep)
        self.omitted += len(text) - len(keep)

    def compose(self, tb: str = "") -> str:
        """The output with the traceback at the end; prints give way to the traceback beyond ``cap``."""
        self.feed(b"", final=True)
        body, omitted = "".join(self.parts), self.omitted + self.remote_omitted
        if tb and len(body) + len(tb) > self.cap:
            keep = max(self.cap - len(tb), 0)
            omitted += len(body) - keep
            body = body[:keep]
        if omitted:
            sep = "" if not body or body.endswith("\n") else "\n"
            body += f"{sep}[output truncated: {omitted} characters omitted]\n"
        return body + tb


def _frame(message: dict[str, Any]) -> bytes:
    data = json.dumps(message).encode()
    return len(data).to_bytes(_HEADER, "big") + data


def _kill_running(uid: int) -> int:
    """SIGKILL every process of ``uid`` that is not a zombie; returns how many there were."""
    count = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != uid:
                continue
            with open(f"/proc/{entry}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
            if state not in (b"Z", b"X"):
                os.kill(int(entry), signal.SIGKILL)
                count += 1
        except (OSError, IndexError):
            continue
    return count


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


class _Interpreter:
    """One launched driver process tree, its pipes, and the host side of the protocol."""

    def __init__(self, proc: subprocess.Popen[bytes], resp_r: int, status_r: int, uid: int | None, pidns: bool) -> None:
        self.proc, self.resp_r, self.status_r, self.uid, self.pidns = proc, resp_r, status_r, uid, pidns
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self.out_fd, self.in_fd = self.proc.stdout.fileno(), self.proc.stdin.fileno()
        for fd in (self.out_fd, self.in_fd, resp_r, status_r):
            os.set_blocking(fd, False)
        self.sel = selectors.DefaultSelector()
        for fd in (self.out_fd, resp_r, status_r):
            self.sel.register(fd, selectors.EVENT_READ)
        self.frames, self.status = bytearray(), bytearray()
        self.dead = False

    def exited(self) -> bool:
        """Whether the driver is gone (its supervisor reported or the pipes closed), without waiting."""
        if not self.dead and any(key.fd == self.status_r for key, _ in self.sel.select(0)):
            self._read_status()
        return self.dead

    def _read_status(self) -> None:
        with contextlib.suppress(BlockingIOError):
            chunk = os.read(self.status_r, 4096)
            self.status += chunk[:4096]
            self.dead = True  # a status line or EOF: the driver has exited

    def pump(self, deadline: float, want: int, text: _Text, cap: int, request: bytes = b"") -> tuple[str, dict]:
        """Move data until the ``ready``/``done`` frame ``want`` arrives.

        Returns ``("done", frame)`` or a failure kind with ``{}``: ``timeout``, ``died``, ``overflow``
        (more than ``cap`` bytes on the response channel) or ``corrupt`` (a frame that breaks the protocol).
        """
        pending, received = memoryview(request), 0
        if pending:
            self.sel.register(self.in_fd, selectors.EVENT_WRITE)
        try:
            while True:
                try:
                    frame = self._next_frame(want, text, cap)
                except (ValueError, TypeError):
                    return "corrupt", {}
                if frame is not None:
                    return "done", frame
                if self.dead:
                    return "died", {}
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return "timeout", {}
                for key, _ in self.sel.select(remaining):
                    if key.fd == self.in_fd:
                        pending = self._write(pending)
                    elif key.fd == self.status_r:
                        self._read_status()
                    elif key.fd == self.resp_r:
                        received += self._read_resp()
                    else:
                        self._read_out(text)
                if received > cap:
                    return "overflow", {}
        finally:
            if self.in_fd in self.sel.get_map():
                self.sel.unregister(self.in_fd)

    def _write(self, pending: memoryview) -> memoryview:
        try:
            n = os.write(self.in_fd, pending[:_READ_CHUNK])
        except BlockingIOError:
            return pending
        except OSError:  # the driver is gone; its status will say how
            n, self.dead = len(pending), True
        pending = pending[n:]
        if not pending:
            self.sel.unregister(self.in_fd)
        return pending

    def _read_resp(self) -> int:
        try:
            chunk = os.read(self.resp_r, _READ_CHUNK)
        except BlockingIOError:
            return 0
        if not chunk:
            self.dead = True
            self.sel.unregister(self.resp_r)
        self.frames += chunk
        return len(chunk)

    def _read_out(self, text: _Text) -> bool:
        """Read one chunk of fd 1 into ``text``; False when nothing more is there now."""
        try:
            chunk = os.read(self.out_fd, _READ_CHUNK)
        except BlockingIOError:
            return False
        if not chunk:
            if self.out_fd in self.sel.get_map():
                self.sel.unregister(self.out_fd)
            return False
        text.feed(chunk)
        return True

    def drain(self, text: _Text) -> None:
        """What fd 1 holds now; written before the ``done`` frame, so it is all there."""
        while self._read_out(text):
            pass

    def _next_frame(self, want: int, text: _Text, cap: int) -> dict | None:
        while len(self.frames) >= _HEADER:
            size = int.from_bytes(self.frames[:_HEADER], "big")
            if size > cap:
                raise ValueError(f"frame of {size} bytes")
            if len(self.frames) < _HEADER + size:
                return None
            message = json.loads(bytes(self.frames[_HEADER : _HEADER + size]))
            del self.frames[: _HEADER + size]
            if not isinstance(message, dict):
                raise ValueError("frame is not an object")
            if message.get("id") != want:
                continue  # not about this cell (a forked child's leftovers): ignored
            if message.get("t") == "omit":
                text.remote_omitted = max(text.remote_omitted, int(message.get("n", 0)))
            elif message.get("t") in ("ready", "done"):
                return message
        return None

    def kill(self) -> int | None:
        """Kill the whole tree and wait until none of it runs; returns the driver's exit code when it had one.

        The driver and what it started go first (by uid, or with the supervisor, whose exit ends the pid
        namespace), so the supervisor and launcher exit on their own and are reaped by their parents
        rather than orphaned to the host's init.
        """
        deadline = time.monotonic() + _KILL_WAIT
        if self.uid is not None:
            # Reaches setsid'd children without a pid namespace; with one, waits out the kernel's tear-down.
            while _kill_running(self.uid) and time.monotonic() < deadline:
                time.sleep(0.002)
        else:
            for pid in _children(self.proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        try:
            self.proc.wait(timeout=max(min(deadline - time.monotonic(), 1.0), 0.1))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        if not self.pidns and self.uid is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # the driver, orphaned when its supervisor died
        self._read_status()
        try:
            code, _ = sandbox._decode_status(bytes(self.status))
        except (SandboxError, ValueError, KeyError):
            code = None
        return code

    def close_fds(self) -> None:
        self.sel.close()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        for fd in (self.resp_r, self.status_r):
            with contextlib.suppress(OSError):
                os.close(fd)


def _lost(how: str) -> str:
    return f"{how}; the interpreter was restarted, earlier variables are gone"


def _crash_message(code: int | None) -> str:
    if code is None:
        return _lost("the interpreter process died")
    if code >= 0:
        return _lost(f"the interpreter process exited with status {code}")
    reason = sandbox._killed_reason(code)
    what = {"cpu_limit": "the CPU-time limit", "file_size_limit": "the file-size limit"}.get(reason or "", "")
    return _lost(f"the interpreter process was killed by {what or (reason or '').removeprefix('signal:')}")


class PythonSession:
    """A long-lived, sandboxed Python interpreter whose cells share one globals dict (see the module docstring).

    Args:
        timeout: wall-clock seconds per cell; past it the interpreter is killed and restarted.
        memory_mb: address-space limit (RLIMIT_AS) of the interpreter and each process it starts.
        max_procs: process/thread limit (RLIMIT_NPROC, enforced through the uid switch as root).
        max_output: characters of output a cell returns (a truncation note says how many were left out).
        site_packages: expose the host's installed packages (off: standard library only, as ``run_python``).

    Not safe to share between threads beyond one call at a time (calls are serialised).
    """

    def __init__(
        self,
        *,
        timeout: float = 120.0,
        memory_mb: int = 1024,
        max_procs: int = 32,
        max_output: int = 8192,
        site_packages: bool = False,
    ) -> None:
        if timeout <= 0 or memory_mb <= 0 or max_procs <= 0 or max_output < 0:
            raise ValueError("timeout, memory_mb and max_procs must be positive and max_output non-negative")
        self.timeout, self.memory_mb, self.max_procs, self.max_output = timeout, memory_mb, max_procs, max_output
        self.site_packages = site_packages
        # bytes a cell may send on the response channel: its traceback JSON-escaped, progress frames
        self._channel_cap = 16 * max_output + (64 << 10)
        self._lock = threading.Lock()
        self._interp: _Interpreter | None = None
        self._host_dir: str | None = None
        self._uid: int | None = None
        self._cells = 0
        self._closed = False

    @property
    def host_dir(self) -> str | None:
        """The session's folder on the host (``work/`` in it is the cells' working directory); None until started."""
        return self._host_dir

    @property
    def uid(self) -> int | None:
        """The unprivileged uid the interpreter runs as (None: not started, or no uid switch)."""
        return self._uid

    def execute(self, code: str) -> CellResult:
        """Run one cell; a failure of the code or the interpreter is a result, not an exception.

        Raises:
            SandboxError: the isolation here is below ``min_isolation()`` (checked before anything
                starts), or the sandbox itself could not start the interpreter.
            RuntimeError: the session is closed.
        """
        if not isinstance(code, str):
            raise TypeError(f"code must be str, not {type(code).__name__}")
        with self._lock:
            if self._closed:
                raise RuntimeError("the Python session is closed")
            lost = None
            if self._interp is not None and self._interp.exited():
                # e.g. a thread of an earlier cell called os._exit: this cell runs in a fresh interpreter
                lost = self._discard()
            if self._interp is None:
                self._interp = self._start()
            result = self._run(self._interp, code)
            if lost is not None and not result.restarted:
                error = lost if result.error is None else f"{lost}\n{result.error}"
                result = CellResult(result.output, error=error, timed_out=result.timed_out, restarted=True)
            return result

    def _run(self, interp: _Interpreter, code: str) -> CellResult:
        self._cells += 1
        cell = self._cells
        text = _Text(self.max_output)
        deadline = time.monotonic() + self.timeout
        try:
            kind, frame = interp.pump(deadline, cell, text, self._channel_cap, _frame({"id": cell, "code": code}))
        except BaseException:
            self._stop()  # e.g. KeyboardInterrupt here: a half-served cell must not run into the next one
            raise
        if kind == "done":
            interp.drain(text)
            text.remote_omitted = max(text.remote_omitted, int(frame.get("omitted") or 0))
            error = frame.get("error")
            return CellResult(text.compose(str(frame.get("tb") or "")), error=None if error is None else str(error))
        code_or_none = self._stop(text)
        if kind == "timeout":
            error = _lost(f"timed out after {self.timeout:g}s")
        elif kind == "died":
            error = _crash_message(code_or_none)
        else:
            error = _lost(f"the interpreter broke the response protocol ({kind})")
        return CellResult(text.compose(), error=error, timed_out=kind == "timeout", restarted=True)

    def _start(self) -> _Interpreter:
        layers = sandbox.available_isolation()
        sandbox._require_min_isolation(layers)
        if self._host_dir is None:
            self._uid = sandbox._random_uid()
            self._host_dir = sandbox._make_dir("", self._uid)
        resp_r, resp_w = os.pipe()
        status_r, status_w = os.pipe()
        try:
            self._write_driver(resp_w, layers)
            cfg = sandbox._launcher_config(
                self._host_dir,
                self._uid,
                cpu=None,  # per cell, set by the driver: a session's CPU time adds up over its cells
                memory_mb=self.memory_mb,
                max_procs=self.max_procs,
                site_packages=self.site_packages,
                status_fd=status_w,
            )
            proc = sandbox._spawn_launcher(cfg, pass_fds=(resp_w,), merge_stderr=True)
        except BaseException:
            for fd in (resp_r, status_r):
                os.close(fd)
            raise
        finally:
            for fd in (resp_w, status_w):
                os.close(fd)
        interp = _Interpreter(proc, resp_r, status_r, self._uid, "pidns" in layers)
        self._await_ready(interp)
        return interp

    def _write_driver(self, resp_fd: int, layers: tuple[str, ...]) -> None:
        assert self._host_dir is not None
        reap = "pidns" in layers or self._uid is not None  # where kill(-1) reaches only the session's processes
        source = (
            f"RESPONSE_FD = {resp_fd}\nMAX_OUTPUT = {self.max_output}\nTIMEOUT = {float(self.timeout)!r}\n"
            f"REAP = {reap}\n" + ("" if "netns" in layers else sandbox._SOCKET_GUARD) + _DRIVER
        )
        # Replaced, not rewritten in place: the folder may hold what an earlier interpreter left there.
        fd, tmp = tempfile.mkstemp(dir=self._host_dir, prefix=".prog-")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(source)
        os.chmod(tmp, 0o644)
        os.replace(tmp, os.path.join(self._host_dir, sandbox._PROG))

    def _await_ready(self, interp: _Interpreter) -> None:
        text = _Text(4096)
        kind, _ = interp.pump(time.monotonic() + _START_TIMEOUT, 0, text, 1 << 16)
        if kind == "done":
            return
        self._interp = interp
        self._stop(text)
        with contextlib.suppress(ValueError, KeyError):
            sandbox._decode_status(bytes(interp.status))  # raises with the launcher's own reason, if any
        raise SandboxError(f"the sandboxed interpreter did not start ({kind}): {text.compose()[-500:]}")

    def _stop(self, text: _Text | None = None) -> int | None:
        """Kill the running interpreter, if any (what it wrote last goes to ``text``); returns its exit code."""
        interp, self._interp = self._interp, None
        if interp is None:
            return None
        try:
            code = interp.kill()
            if text is not None:
                interp.drain(text)
            return code
        finally:
            interp.close_fds()

    def _discard(self) -> str:
        return _crash_message(self._stop())

    def close(self) -> None:
        """Kill the interpreter and everything it started, remove the session's folder; idempotent."""
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._stop()
        finally:
            if self._host_dir is not None:
                sandbox._remove_dir(self._host_dir)
                self._host_dir = None

    def __enter__(self) -> PythonSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # Best effort for sessions nobody closed; never blocks on a cell running in another thread.
        with contextlib.suppress(Exception):
            if not self._closed and self._lock.acquire(blocking=False):
                try:
                    self._close_locked()
                finally:
                    self._lock.release()
