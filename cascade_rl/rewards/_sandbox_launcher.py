"""Sandbox launcher: isolates one untrusted Python program, then execs it.

Run by ``cascade_rl.rewards.sandbox`` as ``python -I -S -B _sandbox_launcher.py CONFIG_JSON`` in a
fresh session. It imports nothing from the package (stdlib only) so it starts fast and cannot be
influenced by the package's import state. Process tree::

    launcher (caller's uid, host pid namespace; unshares net/mount/pid namespaces)
      supervisor (pid 1 of the new pid namespace: mounts /proc, reaps, reports the exit status)
        program (unprivileged uid, rlimits, no_new_privs, read-only filesystem but its workdir)

When the supervisor exits, the kernel kills everything left in the pid namespace, so forked or
daemonized children cannot outlive the run. Every isolation step is best effort: a step the
kernel refuses is left out of the ``isolation`` list reported on the status pipe instead of
aborting, and the caller decides what that means.

CONFIG_JSON keys: parent (caller pid), host_dir, prog (file name in host_dir), work (sub-directory name used as cwd),
python (interpreter path), python_args (flags before the script), expose (directories that must
stay reachable for the program's uid), uid (int or null: drop to this uid/gid), limits
{cpu, as, nproc, fsize, nofile}, env (mapping), status_fd (int), tmpfs_mb (int).
Status line (JSON) written to status_fd: {"status": wait_status, "isolation": [...]} or {"error": str}.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import sys
from typing import Any

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x2, 0x4, 0x8
MS_BIND, MS_REC, MS_PRIVATE = 0x1000, 0x4000, 0x40000
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
SYS_MOUNT_SETATTR = 442  # same number on every architecture (added after the syscall table merge)
AT_FDCWD, AT_RECURSIVE = -100, 0x8000
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID = 0x1, 0x2
SANDBOX_DIR = "/tmp/sandbox"
# World-writable places a program could leave files in; each gets a private tmpfs.
SCRATCH_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _MountAttr(ctypes.Structure):
    _fields_ = (
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    )


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = [s.encode() if s is not None else None for s in (source, target, fstype, data)]
    _check(_libc.mount(enc[0], enc[1], enc[2], ctypes.c_ulong(flags), enc[3]), f"mount {target}")


def _setattr(path: str, attr_set: int, attr_clr: int) -> None:
    attr = _MountAttr(attr_set, attr_clr, 0, 0)
    ret = _libc.syscall(
        SYS_MOUNT_SETATTR, AT_FDCWD, path.encode(), AT_RECURSIVE, ctypes.byref(attr), ctypes.sizeof(attr)
    )
    _check(int(ret), f"mount_setattr {path}")


def _write_file(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _unshare(iso: list[str]) -> None:
    """Enter new namespaces; unprivileged callers need a user namespace to be allowed to."""
    if os.geteuid() != 0:
        uid, gid = os.getuid(), os.getgid()
        if _libc.unshare(CLONE_NEWUSER) != 0:
            return
        iso.append("userns")
        # Identity map: after execve the program is an ordinary uid again and loses the
        # namespace capabilities this process uses for the mounts below.
        _write_file("/proc/self/setgroups", "deny")
        _write_file("/proc/self/uid_map", f"{uid} {uid} 1")
        _write_file("/proc/self/gid_map", f"{gid} {gid} 1")
    for flag, name in ((CLONE_NEWNET, "netns"), (CLONE_NEWNS, "mountns"), (CLONE_NEWPID, "pidns")):
        if _libc.unshare(flag) == 0:
            iso.append(name)


def _world_reachable(path: str) -> bool:
    """Whether any uid can traverse every directory down to ``path``."""
    prefix = ""
    for part in path.strip("/").split("/"):
        prefix += "/" + part
        if os.stat(prefix).st_mode & 0o001 == 0:
            return False
    return True


def _expose(path: str, fd: int) -> bool:
    """Make ``path`` reachable again: under a private scratch tmpfs (e.g. a venv in /tmp), or after its
    first non-traversable ancestor was hidden. Returns whether ``path`` is now a bind mount."""
    if not os.path.isdir(path):
        os.makedirs(path, mode=0o755, exist_ok=True)
        _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
        return True
    prefix = ""
    for part in path.strip("/").split("/"):
        prefix += "/" + part
        if os.stat(prefix).st_mode & 0o001 == 0:
            _mount("tmpfs", prefix, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=64k")
            os.makedirs(path, mode=0o755, exist_ok=True)
            _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
            return True
    return False  # reachable as it is: part of a mount the read-only pass over "/" covers


def _setup_mounts(cfg: dict[str, Any], iso: list[str]) -> str:
    """Private /tmp-like dirs, read-only everything else; returns the sandbox dir path to use."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    host_fd = os.open(cfg["host_dir"], os.O_PATH | os.O_DIRECTORY)
    expose = [(p, os.open(p, os.O_PATH | os.O_DIRECTORY)) for p in cfg["expose"]]
    size = f"size={int(cfg['tmpfs_mb'])}m"
    scratch = [d for d in SCRATCH_DIRS if os.path.isdir(d) and not os.path.islink(d)]
    for d in scratch:
        _mount("tmpfs", d, "tmpfs", MS_NOSUID | MS_NODEV, f"mode=1777,{size}")
    iso.append("private_tmp")
    os.mkdir(SANDBOX_DIR, 0o755)
    _mount(f"/proc/self/fd/{host_fd}", SANDBOX_DIR, None, MS_BIND | MS_REC)
    bound = [path for path, fd in expose if _expose(path, fd)]
    try:
        _setattr("/", MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID, 0)
        for d in scratch:
            _setattr(d, 0, MOUNT_ATTR_RDONLY)
        # An exposed tree inside a scratch dir stays read-only. Only bind mounts: mount_setattr
        # refuses (EINVAL) a path that is not a mount point.
        for path in bound:
            _setattr(path, MOUNT_ATTR_RDONLY, 0)
        iso.append("readonly_root")
    except OSError:
        pass
    return SANDBOX_DIR


def _set_limits(limits: dict[str, int]) -> None:
    for res, key in (
        (resource.RLIMIT_CPU, "cpu"),
        (resource.RLIMIT_AS, "as"),
        (resource.RLIMIT_FSIZE, "fsize"),
        (resource.RLIMIT_NOFILE, "nofile"),
        (resource.RLIMIT_NPROC, "nproc"),
    ):
        value = limits.get(key)
        if value is not None:
            hard = value + 1 if res == resource.RLIMIT_CPU else value  # soft CPU limit -> SIGXCPU first
            resource.setrlimit(res, (value, hard))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _exec_program(cfg: dict[str, Any], base: str, status_fd: int) -> None:
    """Runs in the program's process; never returns."""
    try:
        os.close(status_fd)
        os.chdir(os.path.join(base, cfg["work"]))
        _set_limits(cfg["limits"])
        uid = cfg["uid"]
        if uid is not None:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
        _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        env = dict(cfg["env"], HOME=os.path.join(base, cfg["work"]))
        argv = [cfg["python"], *cfg["python_args"], os.path.join(base, cfg["prog"])]
        os.execve(cfg["python"], argv, env)
    except BaseException as exc:  # anything here must become an exit code, not a traceback
        os.write(2, f"sandbox: cannot start program: {exc}\n".encode())
    os._exit(127)


def _supervise(cfg: dict[str, Any], base: str, iso: list[str]) -> None:
    """Pid 1 of the sandbox: start the program, reap everything, report its exit status."""
    status_fd = cfg["status_fd"]
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if "pidns" in iso and "mountns" in iso:
        try:
            # A /proc of this namespace only: the program cannot see (or signal) host processes.
            _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
            iso.append("private_proc")
        except OSError:
            pass
    child = os.fork()
    if child == 0:
        _exec_program(cfg, base, status_fd)
    status = None
    while status is None:
        try:
            pid, wstatus = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        if pid == child:
            status = wstatus
    os.write(status_fd, (json.dumps({"status": status, "isolation": iso}) + "\n").encode())
    os._exit(0)


def main() -> None:
    cfg = json.loads(sys.argv[1])
    # If the caller dies, take the sandbox down with it (the supervisor follows this process).
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != cfg["parent"]:
        os._exit(1)
    iso: list[str] = ["rlimits", "session"]
    base = cfg["host_dir"]
    try:
        _unshare(iso)
        if "mountns" in iso:
            base = _setup_mounts(cfg, iso)
    except OSError as exc:
        os.write(cfg["status_fd"], (json.dumps({"error": str(exc)}) + "\n").encode())
        os._exit(1)
    if cfg["uid"] is not None and "mountns" not in iso and not all(map(_world_reachable, cfg["expose"])):
        cfg["uid"] = None  # the interpreter would be unreadable for the unprivileged uid
    if cfg["uid"] is not None:
        iso.append("uid")
    elif "userns" not in iso:
        # RLIMIT_NPROC counts every process of the uid: without a uid or user namespace of
        # its own the program would share the count with the caller's processes.
        cfg["limits"]["nproc"] = None
    iso.append("no_new_privs")
    supervisor = os.fork()
    if supervisor == 0:
        _supervise(cfg, base, iso)
    os.waitpid(supervisor, 0)
    os._exit(0)


if __name__ == "__main__":
    main()
