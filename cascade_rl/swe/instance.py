"""SWE-bench / SWE-Gym task instances: the record format, its JSONL reader, the repository snapshot.

One instance per JSONL line, with SWE-bench's field names::

    {"instance_id": "pkg__pkg-12",
     "problem_statement": "the issue text",
     "FAIL_TO_PASS": ["tests/test_x.py::test_bug"],            # a list, or SWE-bench's JSON string of one
     "PASS_TO_PASS": ["tests/test_x.py::test_other"],
     "test_patch": "diff --git a/tests/test_x.py ...",           # adds / changes the hidden tests
     "repo_path": "repos/pkg",         # the snapshot: a folder (relative to the JSONL file's folder) ...
     "files": {"pkg/x.py": "..."},     # ... or the files embedded in the record (exactly one of the two)
     "base_commit": "0123abc",         # optional: with a git folder, the snapshot is that commit
     "repo": "owner/pkg",              # optional, informational
     "patch": "diff --git ...",        # optional: the gold patch
     "visible_tests": ["tests/test_x.py"]}   # optional: test files the agent may run (default: every test file)

Other SWE-bench keys (``version``, ``hints_text``, ``created_at``, ...) are accepted and ignored.
A test id is ``path::function`` or ``path::Class::method``. Problems are reported as
``file:line: reason``; with ``on_error="skip"`` bad lines are skipped and counted (``SourceStats``).
"""

from __future__ import annotations

import base64
import functools
import io
import json
import subprocess
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cascade_rl.data.sources import DataSourceError, OnError, RecordError, SourceStats, read_validated
from cascade_rl.swe.patch import PatchError, clean_path, diff_paths, parse_diff

MAX_SNAPSHOT_BYTES = 32 << 20  # what a test run ships into the sandbox
_SKIP_DIRS = frozenset({".git", "__pycache__", ".pytest_cache", ".mypy_cache", ".tox", ".venv", "node_modules"})


@dataclass(frozen=True)
class Snapshot:
    """A repository's files: text by path, and the few binary ones base64-encoded."""

    text: dict[str, str]
    binary: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SweInstance:
    """One task instance (see the module docstring for the fields)."""

    instance_id: str
    problem_statement: str
    fail_to_pass: tuple[str, ...]
    pass_to_pass: tuple[str, ...]
    test_patch: str
    files: Mapping[str, str] | None = None
    repo_path: str | None = None
    base_commit: str | None = None
    repo: str = ""
    patch: str = ""
    visible_tests: tuple[str, ...] | None = None

    @property
    def test_files(self) -> tuple[str, ...]:
        """Files the grading owns: those the test patch touches and those holding the graded tests.

        Before the hidden tests run, these are put back as the instance has them, whatever the
        candidate patch did to them.
        """
        named = {tid.split("::", 1)[0] for tid in (*self.fail_to_pass, *self.pass_to_pass)}
        return tuple(sorted(named | set(diff_paths(self.test_patch))))

    def snapshot(self) -> Snapshot:
        """The repository before any change (read from the folder / commit on each call, cached)."""
        if self.files is not None:
            return Snapshot(dict(self.files))
        assert self.repo_path is not None
        cached = _folder_snapshot(self.repo_path, self.base_commit)
        return Snapshot(dict(cached.text), dict(cached.binary))

    def to_dict(self) -> dict[str, Any]:
        """The record in SWE-bench shape (what ``validate_instance`` reads back)."""
        out: dict[str, Any] = {
            "instance_id": self.instance_id,
            "problem_statement": self.problem_statement,
            "FAIL_TO_PASS": list(self.fail_to_pass),
            "PASS_TO_PASS": list(self.pass_to_pass),
            "test_patch": self.test_patch,
        }
        if self.files is not None:
            out["files"] = dict(self.files)
        if self.repo_path is not None:
            out["repo_path"] = self.repo_path
        optional = {"base_commit": self.base_commit, "repo": self.repo, "patch": self.patch}
        out.update({k: v for k, v in optional.items() if v})
        if self.visible_tests is not None:
            out["visible_tests"] = list(self.visible_tests)
        return out


# -- validation ------------------------------------------------------------------------------------


def _string(obj: Mapping[str, Any], key: str, *, required: bool = True, empty: bool = False) -> str | None:
    value = obj.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (not empty and not value.strip()):
        what = "a string" if empty else "a non-empty string"
        raise RecordError(f"'{key}' must be {what}, got {value!r:.80}")
    return value


def _test_ids(obj: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = obj.get(key, [])
    if isinstance(value, str):  # SWE-bench stores the lists as JSON strings
        try:
            value = json.loads(value)
        except ValueError:
            raise RecordError(f"'{key}' is a string but not a JSON list of test ids") from None
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise RecordError(f"'{key}' must be a list of test ids, got {value!r:.80}")
    for tid in value:
        path, sep, name = tid.partition("::")
        if not sep or not name or any(c in tid for c in "\t\n\r"):
            raise RecordError(f"'{key}': test id {tid!r} is not 'path::name'")
        try:
            clean_path(path)
        except PatchError as err:
            raise RecordError(f"'{key}': test id {tid!r}: {err}") from None
    return tuple(value)


def _embedded_files(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping) or not value:
        raise RecordError(f"'files' must be a non-empty object of path -> text, got {value!r:.80}")
    out: dict[str, str] = {}
    for path, text in value.items():
        if not isinstance(path, str) or not isinstance(text, str):
            raise RecordError(f"'files': entry {path!r:.80} must map a path to its text")
        try:
            out[clean_path(path)] = text
        except PatchError as err:
            raise RecordError(f"'files': {err}") from None
    return out


def _diff(obj: Mapping[str, Any], key: str, required: bool) -> str:
    text = _string(obj, key, required=required, empty=not required) or ""
    if text:
        try:
            parse_diff(text)
        except PatchError as err:
            raise RecordError(f"'{key}' is not a usable unified diff: {err}") from None
    return text


def validate_instance(obj: Any, *, base_dir: Path | None = None) -> SweInstance:
    """One raw instance record, checked; ``RecordError`` names the bad field. ``repo_path`` is made
    absolute against ``base_dir`` (the JSONL file's folder) and must be a folder."""
    if not isinstance(obj, Mapping):
        raise RecordError(f"expected an instance object, got {type(obj).__name__}")
    instance_id = _string(obj, "instance_id")
    statement = _string(obj, "problem_statement")
    f2p, p2p = _test_ids(obj, "FAIL_TO_PASS"), _test_ids(obj, "PASS_TO_PASS")
    if not f2p:
        raise RecordError("'FAIL_TO_PASS' is empty: there is nothing the fix must make pass")
    has_files, has_path = obj.get("files") is not None, obj.get("repo_path") is not None
    if has_files == has_path:
        raise RecordError("exactly one of 'files' (embedded snapshot) or 'repo_path' (a folder) is required")
    files = _embedded_files(obj["files"]) if has_files else None
    repo_path = None
    if has_path:
        raw = Path(_string(obj, "repo_path") or "")
        folder = raw if raw.is_absolute() or base_dir is None else base_dir / raw
        if not folder.is_dir():
            raise RecordError(f"'repo_path': {folder} is not a folder")
        repo_path = str(folder.resolve())
    visible = obj.get("visible_tests")
    if visible is not None and (not isinstance(visible, list) or not all(isinstance(v, str) for v in visible)):
        raise RecordError(f"'visible_tests' must be a list of test file paths, got {visible!r:.80}")
    try:
        visible_paths = None if visible is None else tuple(clean_path(v) for v in visible)
    except PatchError as err:
        raise RecordError(f"'visible_tests': {err}") from None
    return SweInstance(
        instance_id=instance_id or "",
        problem_statement=statement or "",
        fail_to_pass=f2p,
        pass_to_pass=p2p,
        test_patch=_diff(obj, "test_patch", True),
        files=files,
        repo_path=repo_path,
        base_commit=_string(obj, "base_commit", required=False),
        repo=_string(obj, "repo", required=False, empty=True) or "",
        patch=_diff(obj, "patch", False),
        visible_tests=visible_paths,
    )


def read_instances(path: str | Path, *, on_error: OnError = "raise") -> tuple[list[SweInstance], SourceStats]:
    """Every instance of a JSONL file, and what happened to its lines.

    A bad line raises ``DataSourceError("file:line: reason")``, or with ``on_error="skip"`` is skipped,
    counted in ``stats.skipped`` and named in ``stats.reasons`` (the first ``MAX_KEPT_REASONS``).
    Duplicate instance ids are an error of the later line.
    """
    path = Path(path)
    if not path.is_file():
        raise DataSourceError(f"{path}: instance file not found")
    seen: set[str] = set()

    def validate(obj: dict[str, Any], where: str) -> SweInstance:
        instance = validate_instance(obj, base_dir=path.parent)
        if instance.instance_id in seen:
            raise RecordError(f"duplicate instance_id {instance.instance_id!r}")
        seen.add(instance.instance_id)
        return instance

    return read_validated(path, validate, on_error=on_error)


# -- snapshots of folders --------------------------------------------------------------------------


def _add_file(snapshot: Snapshot, rel: str, data: bytes, budget: list[int]) -> None:
    budget[0] -= len(data)
    if budget[0] < 0:
        raise DataSourceError(f"repository snapshot is larger than {MAX_SNAPSHOT_BYTES >> 20} MiB")
    try:
        snapshot.text[rel] = data.decode("utf-8")
    except UnicodeDecodeError:
        snapshot.binary[rel] = base64.b64encode(data).decode("ascii")


def _skipped(rel: str) -> bool:
    return any(part in _SKIP_DIRS for part in rel.split("/")) or rel.endswith((".pyc", ".pyo"))


@functools.lru_cache(maxsize=8)
def _folder_snapshot(folder: str, commit: str | None) -> Snapshot:
    """A folder's files (symlinks are left out: they could point anywhere), or a commit's via ``git archive``."""
    snapshot, budget = Snapshot({}), [MAX_SNAPSHOT_BYTES]
    root = Path(folder)
    if commit:
        archive = subprocess.run(
            ["git", "-C", folder, "archive", "--format=tar", commit], capture_output=True, timeout=120, check=False
        )
        if archive.returncode != 0:
            raise DataSourceError(f"{folder}: git archive {commit} failed: {archive.stderr.decode()[-300:]}")
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            for member in tar.getmembers():
                if member.isfile() and not _skipped(member.name):
                    data = tar.extractfile(member)
                    assert data is not None
                    _add_file(snapshot, clean_path(member.name), data.read(), budget)
        return snapshot
    for item in sorted(root.rglob("*")):
        rel = item.relative_to(root).as_posix()
        if item.is_symlink() or not item.is_file() or _skipped(rel):
            continue
        _add_file(snapshot, clean_path(rel), item.read_bytes(), budget)
    return snapshot


def find_test_files(paths: Sequence[str]) -> list[str]:
    """The paths that look like test files (``test_*.py`` / ``*_test.py``), sorted."""
    out = []
    for path in paths:
        name = path.rsplit("/", 1)[-1]
        if name.endswith(".py") and (name.startswith("test_") or name.endswith("_test.py")):
            out.append(path)
    return sorted(out)
