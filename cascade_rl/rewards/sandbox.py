"""Run untrusted Python programs (model-written code) and return a verdict, never an exception.

``run_python(code, stdin=..., timeout=...)`` executes ``code`` as a script in its own process tree
and returns a ``SandboxResult``. Isolation layers, each applied when the kernel allows it (the
``isolation`` field of the result lists the ones that took effect):

* ``session``: own session / process group, killed as a whole on timeout or output overflow.
* ``rlimits``: CPU seconds, address space, file size, open files, processes; no core dumps.
* ``netns``: a new network namespace with no interfaces up (not even loopback). When it is
  unavailable a ``socket_guard`` prelude refuses internet sockets instead; that one is a guard
  against accidents, not a security boundary (``_socket`` / ctypes can bypass it).
* ``mountns`` + ``private_tmp`` + ``readonly_root``: the filesystem is read-only except the
  program's working directory and private, throw-away tmpfs mounts over /tmp, /var/tmp,
  /dev/shm and /run/lock, so nothing written outside the workdir reaches the host.
* ``pidns`` + ``private_proc``: the program is not in the host's pid namespace and cannot see or
  signal host processes; when its supervisor exits the kernel kills every process it left.
* ``uid``: when started as root, the program runs as a random unprivileged uid/gid, so
  RLIMIT_NPROC (which root ignores) caps fork bombs and host files are not writable.
  ``userns`` is used instead when started unprivileged.
* ``no_new_privs``: setuid binaries cannot regain privileges.

The environment is scrubbed (PATH, LANG, HOME = the workdir only) and the interpreter runs with
``-I -S -B`` (isolated mode, no site-packages, no bytecode writes): model code gets the standard
library only unless ``site_packages=True``. Output is read incrementally and capped.

Isolation levels. Layers the kernel refuses are left out silently (e.g. no namespaces inside a
container with the default seccomp profile), so the layers are graded into named, ordered levels
(``ISOLATION_LEVELS``; ``isolation_level(layers)`` grades a set). ``available_isolation()`` probes
once per process what takes effect here, and ``run_python`` refuses, before running anything,
when that is below the process-wide minimum (``set_min_isolation`` / ``min_isolation``, default
from the ``CASCADE_MIN_ISOLATION`` environment variable, else ``"process"``).

A long-lived interpreter in the same sandbox, whose variables persist across calls (the stateful
Python tool), is ``cascade_rl.rewards.sandbox_session.PythonSession``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

_LAUNCHER = str(Path(__file__).with_name("_sandbox_launcher.py"))
_PROG, _WORK = "prog.py", "work"
_UID_BASE, _UID_SPAN = 0x70000000, 1 << 24  # far above any real account
_READ_CHUNK = 1 << 16
# Installed before the program when no network namespace is available (see module docstring).
_SOCKET_GUARD = """\
def _sandbox_guard():
    import socket
    base = socket.socket
    def deny(*args, **kwargs):
        raise PermissionError("network access is disabled in the sandbox")
    class GuardedSocket(base):
        def __init__(self, family=-1, type=-1, proto=-1, fileno=None):
            if fileno is None and family in (-1, socket.AF_INET, socket.AF_INET6):
                deny()
            base.__init__(self, family, type, proto, fileno)
    socket.socket = GuardedSocket
    socket.create_connection = socket.create_server = deny
_sandbox_guard()
del _sandbox_guard
"""


class SandboxError(RuntimeError):
    """The sandbox itself could not be set up (not the program's fault)."""


# Named isolation levels, weakest first; each level's layers include the previous level's.
# "namespaces": no network, a private filesystem view (own mounts, private scratch dirs) and an own
# pid namespace; reached as root or, unprivileged, through a user namespace ("uid" / "userns" are
# alternatives, so neither is required). "full" adds a read-only host filesystem (mount_setattr,
# Linux >= 5.12) and a /proc that shows only the sandbox's processes.
_PROCESS_LAYERS = ("session", "rlimits", "no_new_privs")
_NAMESPACE_LAYERS = (*_PROCESS_LAYERS, "netns", "mountns", "private_tmp", "pidns")
ISOLATION_LEVELS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "none": (),
        "process": _PROCESS_LAYERS,
        "namespaces": _NAMESPACE_LAYERS,
        "full": (*_NAMESPACE_LAYERS, "readonly_root", "private_proc"),
    }
)
_RANK = {level: rank for rank, level in enumerate(ISOLATION_LEVELS)}
MIN_ISOLATION_ENV = "CASCADE_MIN_ISOLATION"  # how the minimum reaches spawned reward workers
_DEFAULT_MIN_ISOLATION = "process"


@dataclass(frozen=True)
class SandboxResult:
    """Outcome of one program run.

    ``returncode`` follows ``subprocess``: negative means killed by that signal. ``killed_reason``
    is ``"timeout"``, ``"output_limit"``, ``"cpu_limit"``, ``"file_size_limit"`` or
    ``"signal:<NAME>"`` when the program did not exit on its own, else ``None``.
    """

    returncode: int
    stdout: str
    stderr: str
    timed_out: bool
    killed_reason: str | None
    output_truncated: bool
    wall_time: float
    isolation: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.killed_reason is None


def _python_prefix() -> str:
    """Installation prefix of the real interpreter (venv symlinks resolved)."""
    exe = os.path.realpath(sys.executable)
    return os.path.dirname(os.path.dirname(exe))


def _make_dir(code: str, uid: int | None) -> str:
    host_dir = tempfile.mkdtemp(prefix="cascade-sandbox-")
    os.chmod(host_dir, 0o755)
    prog = os.path.join(host_dir, _PROG)
    with open(prog, "w", encoding="utf-8") as f:
        f.write(code)
    os.chmod(prog, 0o644)
    work = os.path.join(host_dir, _WORK)
    os.mkdir(work, 0o700)
    if uid is not None:
        os.chown(work, uid, uid)
    return host_dir


def _remove_dir(path: str) -> None:
    def make_writable(func: object, p: str, _exc: object) -> None:
        # A program may leave directories without write/exec permission for their owner.
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
        with contextlib.suppress(OSError):
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p, ignore_errors=True)
            else:
                os.unlink(p)

    shutil.rmtree(path, onerror=make_writable)


def _kill_uid(uid: int) -> None:
    """Kill every process running as ``uid`` (cleanup when no pid namespace was available)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid == uid:
                os.kill(int(entry), signal.SIGKILL)
        except OSError:
            continue


class _Pipes:
    """Reads stdout/stderr (capped) and the status line while feeding stdin, without threads."""

    def __init__(self, proc: subprocess.Popen[bytes], stdin: bytes, status_fd: int, cap: int) -> None:
        self.sel = selectors.DefaultSelector()
        self.buf: dict[int, bytearray] = {}
        self.cap = cap
        self.overflow = False
        self.status = bytearray()
        self.status_fd = status_fd
        assert proc.stdout is not None and proc.stderr is not None and proc.stdin is not None
        self.out_fd, self.err_fd = proc.stdout.fileno(), proc.stderr.fileno()
        for fd in (self.out_fd, self.err_fd, status_fd):
            self.buf[fd] = bytearray()
            self.sel.register(fd, selectors.EVENT_READ)
        self.stdin_file = proc.stdin
        self.pending = memoryview(stdin)
        if stdin:
            os.set_blocking(proc.stdin.fileno(), False)
            self.sel.register(proc.stdin.fileno(), selectors.EVENT_WRITE)
        else:
            proc.stdin.close()

    def pump(self, deadline: float) -> bool:
        """Transfer data until every pipe is closed (True) or the deadline / cap is hit (False)."""
        while self.sel.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            for key, _ in self.sel.select(min(remaining, 1.0)):
                fd = int(key.fd)
                if key.events & selectors.EVENT_WRITE:
                    self._write(fd)
                    continue
                chunk = os.read(fd, _READ_CHUNK)
                if not chunk:
                    self.sel.unregister(fd)
                elif fd == self.status_fd:
                    self.status += chunk[:4096]
                else:
                    keep = self.cap - len(self.buf[fd])
                    self.buf[fd] += chunk[: max(keep, 0)]
                    if len(chunk) > keep:
                        self.overflow = True
                        return False
        return True

    def _write(self, fd: int) -> None:
        try:
            n = os.write(fd, self.pending[:_READ_CHUNK])
        except BlockingIOError:
            return
        except OSError:  # the program closed stdin or exited: the rest is not wanted
            n = len(self.pending)
        self.pending = self.pending[n:]
        if not self.pending:
            self.sel.unregister(fd)
            with contextlib.suppress(OSError):
                self.stdin_file.close()

    def close(self) -> None:
        self.sel.close()
        with contextlib.suppress(OSError):
            self.stdin_file.close()


def _decode_status(raw: bytes) -> tuple[int | None, tuple[str, ...]]:
    if not raw.strip():
        return None, ()
    data = json.loads(raw.decode().splitlines()[0])
    if "error" in data:
        raise SandboxError(f"sandbox setup failed: {data['error']}")
    status = data["status"]
    code = None if status is None else os.waitstatus_to_exitcode(status)
    return code, tuple(data["isolation"])


def _killed_reason(returncode: int) -> str | None:
    if returncode >= 0:
        return None
    sig = -returncode
    named = {signal.SIGXCPU: "cpu_limit", signal.SIGXFSZ: "file_size_limit"}
    try:
        return named.get(signal.Signals(sig), f"signal:{signal.Signals(sig).name}")
    except ValueError:
        return f"signal:{sig}"


def run_python(
    code: str,
    *,
    stdin: str = "",
    timeout: float = 5.0,
    memory_mb: int = 512,
    max_procs: int = 32,
    max_output: int = 1 << 16,
    site_packages: bool = False,
) -> SandboxResult:
    """Run ``code`` as ``__main__`` in the sandbox; see the module docstring for the isolation.

    Args:
        code: Python source of the whole program.
        stdin: text fed to the program's standard input (then closed).
        timeout: wall-clock seconds; the CPU-time limit is ``int(timeout) + 1`` seconds.
        memory_mb: address-space limit of each process.
        max_procs: process/thread limit (enforced when running as root via the uid switch).
        max_output: bytes kept per stream; more output kills the program (``output_limit``).
        site_packages: expose the host's installed packages (off: standard library only).

    Raises:
        SandboxError: when the isolation available here is below ``min_isolation()`` (checked
            before anything runs), or when the isolation machinery itself fails to start.
        ValueError: when ``CASCADE_MIN_ISOLATION`` names no isolation level.
    """
    layers = available_isolation()
    _require_min_isolation(layers)
    prefix = "" if "netns" in layers else _SOCKET_GUARD
    return _run(
        prefix + code,
        stdin=stdin,
        timeout=timeout,
        memory_mb=memory_mb,
        max_procs=max_procs,
        max_output=max_output,
        site_packages=site_packages,
    )


def _run(
    code: str,
    *,
    stdin: str,
    timeout: float,
    memory_mb: int,
    max_procs: int,
    max_output: int,
    site_packages: bool,
) -> SandboxResult:
    """Launch ``code`` unchecked: ``run_python`` without the isolation check and socket guard."""
    uid = _random_uid()
    host_dir = _make_dir(code, uid)
    status_r, status_w = os.pipe()
    cfg = _launcher_config(
        host_dir,
        uid,
        cpu=int(timeout) + 1,
        memory_mb=memory_mb,
        max_procs=max_procs,
        site_packages=site_packages,
        status_fd=status_w,
    )
    start = time.monotonic()
    try:
        proc = _spawn_launcher(cfg)
    except BaseException:
        os.close(status_r)
        os.close(status_w)
        _remove_dir(host_dir)
        raise
    os.close(status_w)
    return _collect(proc, stdin.encode(), status_r, start + timeout, max_output, uid, host_dir, start)


def _random_uid() -> int | None:
    """A fresh unprivileged uid for one sandbox when started as root (None: no uid switch)."""
    return _UID_BASE + secrets.randbelow(_UID_SPAN) if os.geteuid() == 0 else None


def _launcher_config(
    host_dir: str,
    uid: int | None,
    *,
    cpu: int | None,
    memory_mb: int,
    max_procs: int,
    site_packages: bool,
    status_fd: int,
) -> dict[str, Any]:
    """The launcher's CONFIG_JSON for a program in ``host_dir`` (``cpu=None``: no CPU-time limit)."""
    return {
        "parent": os.getpid(),
        "host_dir": host_dir,
        "prog": _PROG,
        "work": _WORK,
        "python": sys.executable if site_packages else os.path.realpath(sys.executable),
        "python_args": ["-I", "-B"] if site_packages else ["-I", "-S", "-B"],
        # a virtual environment may live under /tmp, which the sandbox replaces by a private tmpfs
        "expose": [_python_prefix(), *([sys.prefix] if site_packages else [])],
        "uid": uid,
        "limits": {
            "cpu": cpu,
            "as": memory_mb << 20,
            "nproc": max_procs,
            "fsize": 32 << 20,
            "nofile": 256,
        },
        "env": {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8"},
        "status_fd": status_fd,
        "tmpfs_mb": 64,
    }


def _spawn_launcher(
    cfg: dict[str, Any], *, pass_fds: tuple[int, ...] = (), merge_stderr: bool = False
) -> subprocess.Popen[bytes]:
    """Start the launcher on ``cfg`` in a new session, with pipes for the program's stdin/stdout/stderr.

    ``pass_fds``: further descriptors the program inherits (besides the status fd); ``merge_stderr``:
    stderr goes to the stdout pipe.
    """
    return subprocess.Popen(
        [os.path.realpath(sys.executable), "-I", "-S", "-B", _LAUNCHER, json.dumps(cfg)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
        pass_fds=(cfg["status_fd"], *pass_fds),
        start_new_session=True,
        cwd=cfg["host_dir"],
        env=cfg["env"],
    )


def _collect(
    proc: subprocess.Popen[bytes],
    stdin: bytes,
    status_r: int,
    deadline: float,
    cap: int,
    uid: int | None,
    host_dir: str,
    start: float,
) -> SandboxResult:
    pipes = _Pipes(proc, stdin, status_r, cap)
    try:
        finished = pipes.pump(deadline)
        if not finished:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        code, isolation = _decode_status(bytes(pipes.status))
        if uid is not None and "pidns" not in isolation:
            _kill_uid(uid)  # stragglers that left the process group (setsid, double fork)
    finally:
        pipes.close()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        os.close(status_r)
        _remove_dir(host_dir)
    timed_out = not finished and not pipes.overflow
    if code is None:
        code = -signal.SIGKILL
    reason = "timeout" if timed_out else "output_limit" if pipes.overflow else _killed_reason(code)
    return SandboxResult(
        returncode=code,
        stdout=pipes.buf[pipes.out_fd].decode("utf-8", "replace"),
        stderr=pipes.buf[pipes.err_fd].decode("utf-8", "replace"),
        timed_out=timed_out,
        killed_reason=reason,
        output_truncated=pipes.overflow,
        wall_time=time.monotonic() - start,
        isolation=isolation,
    )


_PROBE_LOCK = threading.Lock()
_AVAILABLE: tuple[str, ...] | None = None  # layers that take effect here; probed once per process


def available_isolation() -> tuple[str, ...]:
    """The isolation layers that take effect on this machine.

    Probed once per process by running a trivial trusted program (which bypasses the minimum-isolation
    check: it is what the check is based on), then cached. A failed probe is not cached.
    """
    global _AVAILABLE
    if _AVAILABLE is not None:
        return _AVAILABLE
    with _PROBE_LOCK:  # concurrent first calls must not each launch a probe
        if _AVAILABLE is None:
            probe = _run(
                "pass", stdin="", timeout=10.0, memory_mb=512, max_procs=32, max_output=1 << 16, site_packages=False
            )
            if not probe.ok:
                reason = probe.killed_reason or f"returncode {probe.returncode}"
                raise SandboxError(f"sandbox probe failed ({reason}): {probe.stderr[-500:]}")
            _AVAILABLE = probe.isolation
        return _AVAILABLE


def isolation_level(layers: Iterable[str]) -> str:
    """The highest level of ``ISOLATION_LEVELS`` whose layers are all in ``layers``."""
    have = set(layers)
    for level in reversed(ISOLATION_LEVELS):
        if have.issuperset(ISOLATION_LEVELS[level]):
            return level
    return "none"  # unreachable: "none" needs no layer


def _check_level(level: str, source: str) -> str:
    if level not in ISOLATION_LEVELS:
        levels = ", ".join(ISOLATION_LEVELS)
        raise ValueError(f"unknown sandbox isolation level {level!r} ({source}); choose one of: {levels}")
    return level


def set_min_isolation(level: str) -> None:
    """Refuse to run programs (``run_python``) where isolation is below ``level``, in this process and in
    processes it spawns afterwards (the setting travels in ``CASCADE_MIN_ISOLATION``)."""
    os.environ[MIN_ISOLATION_ENV] = _check_level(level, "set_min_isolation")


def min_isolation() -> str:
    """The minimum isolation level ``run_python`` requires: ``CASCADE_MIN_ISOLATION``, else "process"."""
    # The environment variable is the single source of truth, so this process and its reward
    # workers cannot disagree.
    level = os.environ.get(MIN_ISOLATION_ENV) or _DEFAULT_MIN_ISOLATION
    return _check_level(level, f"environment variable {MIN_ISOLATION_ENV}")


def _require_min_isolation(layers: tuple[str, ...]) -> None:
    need = min_isolation()
    have = isolation_level(layers)
    if _RANK[have] >= _RANK[need]:
        return
    missing = ", ".join(layer for layer in ISOLATION_LEVELS[need] if layer not in layers)
    raise SandboxError(
        f"sandbox isolation here is {have!r} (missing: {missing}), below the required {need!r}; "
        "run where user namespaces are allowed (e.g. a container without the default seccomp profile), "
        f"or lower sandbox.min_isolation in the recipe (environment variable {MIN_ISOLATION_ENV})"
    )


def describe_isolation() -> str:
    """One line for logs: the level available here, its layers, and the level required."""
    layers = available_isolation()
    have, need = isolation_level(layers), min_isolation()
    below = " (NOT MET: run_python will refuse)" if _RANK[have] < _RANK[need] else ""
    return f"sandbox isolation: {have} ({', '.join(layers) or 'no layers'}); required: {need}{below}"
