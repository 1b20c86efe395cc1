"""Changes to a repository snapshot: safe paths, search/replace edit blocks, unified diffs.

A snapshot is a mapping from repository-relative POSIX paths to file text. Every path a change
names goes through ``clean_path`` first: absolute paths, ``..`` components, backslashes, NUL bytes
and anything under ``.git`` are refused, so no change can reach outside the repository copy.
Failures raise ``PatchError`` whose ``reason`` is a short code (kept in reward info) and whose
message says what went wrong, for the model or the log.

Edit-block format (the agentless answer format; one or more blocks, text between them ignored)::

    path/to/file.py
    <<<<<<< SEARCH
    lines copied exactly from the file
    =======
    the lines that replace them
    >>>>>>> REPLACE

The path is the last non-blank line before ``<<<<<<< SEARCH`` (a ``###`` prefix, backticks or a
``File:`` label are tolerated; Markdown fence lines between blocks are ignored). The SEARCH lines
must occur exactly once in the file (trailing whitespace on a line is forgiven, indentation is
not). An empty SEARCH creates a file that does not exist yet. A block that is cut short, lacks a
path or a divider, or a stray divider outside a block, makes the whole answer malformed.

Unified diffs (``git diff`` output, as SWE-bench patches are) are applied hunk by hunk; a hunk
whose old lines are not where the header says is looked for elsewhere in the file (nearest
first), as ``patch`` does without fuzz. New and deleted files (``/dev/null``) are supported;
renames, mode changes to symlinks and binary patches are refused.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass

Files = MutableMapping[str, str]

_SEARCH = re.compile(r"^\s*<{5,9} ?SEARCH\s*$")
_DIVIDER = re.compile(r"^\s*={5,9}\s*$")
_REPLACE = re.compile(r"^\s*>{5,9} ?REPLACE\s*$")
_FENCE = re.compile(r"^\s*```")
_PATH_LABEL = re.compile(r"^(?:#+\s*|file:\s*|path:\s*)", re.I)
_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
NO_EOL = "\\ No newline at end of file"


class PatchError(ValueError):
    """A change that cannot be applied; ``reason`` is a short code for reward info."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def clean_path(path: str) -> str:
    """``path`` as a normalised repository-relative POSIX path; ``PatchError("unsafe_path")`` if it could escape."""
    text = path.strip()
    if not text or "\x00" in text or "\\" in text:
        raise PatchError("unsafe_path", f"bad path {path!r}")
    if text.startswith("/") or re.match(r"^[A-Za-z]:", text) or text.startswith("~"):
        raise PatchError("unsafe_path", f"path {path!r} is absolute; paths are relative to the repository root")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise PatchError("unsafe_path", f"path {path!r} leaves the repository")
    if parts[0] == ".git":
        raise PatchError("unsafe_path", f"path {path!r} is inside .git")
    return "/".join(parts)


# -- edit blocks -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Edit:
    """Replace ``search`` (lines copied from the file) by ``replace`` in ``path``."""

    path: str
    search: tuple[str, ...]
    replace: tuple[str, ...]


def _block_path(lines: Sequence[str]) -> str | None:
    for line in reversed(lines):
        if not line.strip() or _FENCE.match(line):
            continue
        text = _PATH_LABEL.sub("", line.strip()).strip().strip("`*").strip()
        return text or None
    return None


def parse_edit_blocks(text: str) -> list[Edit]:
    """Every edit block of ``text`` in order; ``PatchError("malformed_edit")`` for any broken block."""
    lines = text.split("\n")
    edits: list[Edit] = []
    outside: list[str] = []  # lines since the last block: the next block's path is among them
    i = 0
    while i < len(lines):
        line = lines[i]
        if _DIVIDER.match(line) or _REPLACE.match(line):
            raise PatchError("malformed_edit", f"line {i + 1}: {line.strip()!r} outside an edit block")
        if not _SEARCH.match(line):
            outside.append(line)
            i += 1
            continue
        path = _block_path(outside)
        if path is None:
            raise PatchError("malformed_edit", f"line {i + 1}: an edit block without a file path line before it")
        search, i = _until(lines, i + 1, _DIVIDER, "=======")
        replace, i = _until(lines, i, _REPLACE, ">>>>>>> REPLACE")
        edits.append(Edit(clean_path(path), tuple(search), tuple(replace)))
        outside = []
    return edits


def _until(lines: Sequence[str], start: int, end: re.Pattern[str], name: str) -> tuple[list[str], int]:
    """Lines from ``start`` up to the ``end`` marker, and the index after it."""
    body: list[str] = []
    for j in range(start, len(lines)):
        if end.match(lines[j]):
            return body, j + 1
        if _SEARCH.match(lines[j]) or _DIVIDER.match(lines[j]) or _REPLACE.match(lines[j]):
            raise PatchError("malformed_edit", f"line {j + 1}: {lines[j].strip()!r} where {name!r} was expected")
        body.append(lines[j])
    raise PatchError("malformed_edit", f"an edit block is cut short: no {name!r} line")


def format_edit_block(edit: Edit) -> str:
    """The block text ``parse_edit_blocks`` reads back as ``edit``."""
    body = [edit.path, "<<<<<<< SEARCH", *edit.search, "=======", *edit.replace, ">>>>>>> REPLACE"]
    return "\n".join(body) + "\n"


def _split(text: str) -> tuple[list[str], bool]:
    """Lines without their endings, and whether the text ends with a newline."""
    if not text:
        return [], True
    return text.split("\n")[:-1] if text.endswith("\n") else text.split("\n"), text.endswith("\n")


def _join(lines: Sequence[str], final_newline: bool) -> str:
    if not lines:
        return ""
    return "\n".join(lines) + ("\n" if final_newline else "")


def apply_edit(files: Files, edit: Edit) -> None:
    """Apply one edit to ``files`` in place (see the module docstring for the matching rule)."""
    if not edit.search:
        if files.get(edit.path):
            raise PatchError("search_not_found", f"{edit.path}: an empty SEARCH only creates a new file")
        files[edit.path] = _join(edit.replace, True)
        return
    if edit.path not in files:
        raise PatchError("file_not_found", f"{edit.path}: no such file")
    lines, final_newline = _split(files[edit.path])
    wanted = [s.rstrip() for s in edit.search]
    k = len(wanted)
    hits = [i for i in range(len(lines) - k + 1) if [s.rstrip() for s in lines[i : i + k]] == wanted]
    if not hits:
        raise PatchError("search_not_found", f"{edit.path}: the SEARCH lines are not in the file")
    if len(hits) > 1:
        raise PatchError("ambiguous_search", f"{edit.path}: the SEARCH lines occur {len(hits)} times; add context")
    i = hits[0]
    files[edit.path] = _join([*lines[:i], *edit.replace, *lines[i + k :]], final_newline or i + k < len(lines))


def apply_edits(files: Files, edits: Sequence[Edit]) -> None:
    """Apply edits in order; on an error ``files`` is left unchanged."""
    scratch = dict(files)
    for edit in edits:
        apply_edit(scratch, edit)
    files.clear()
    files.update(scratch)


# -- unified diffs ---------------------------------------------------------------------------------


@dataclass
class _Hunk:
    old_start: int
    old: list[str]
    new: list[str]
    new_no_eol: bool = False


@dataclass
class FilePatch:
    """One file's part of a unified diff; ``old`` / ``new`` are None for a created / deleted file."""

    old: str | None
    new: str | None
    hunks: list[_Hunk]


def _diff_path(raw: str) -> str | None:
    name = raw.split("\t")[0].strip()
    if name == "/dev/null":
        return None
    if name.startswith(("a/", "b/")):
        name = name[2:]
    return clean_path(name)


def parse_diff(text: str) -> list[FilePatch]:
    """The file patches of a unified diff; ``PatchError("malformed_patch")`` when it cannot be read."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    patches: list[FilePatch] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith(("rename from", "rename to", "copy from", "copy to")):
            raise PatchError("unsupported_patch", f"line {i + 1}: renames and copies are not supported")
        if line.startswith(("new file mode 12", "new mode 12", "GIT binary patch", "Binary files")):
            raise PatchError("unsupported_patch", f"line {i + 1}: symlinks and binary patches are not supported")
        if line.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ "):
            old, new = _diff_path(line[4:]), _diff_path(lines[i + 1][4:])
            if old is None and new is None:
                raise PatchError("malformed_patch", f"line {i + 1}: both sides are /dev/null")
            if old is not None and new is not None and old != new:
                raise PatchError("unsupported_patch", f"line {i + 1}: {old} -> {new} renames are not supported")
            patch = FilePatch(old, new, [])
            i += 2
            while i < len(lines) and lines[i].startswith("@@"):
                hunk, i = _read_hunk(lines, i)
                patch.hunks.append(hunk)
            if not patch.hunks and new is not None:
                raise PatchError("malformed_patch", f"line {i + 1}: a file header without hunks")
            patches.append(patch)
            continue
        if line.startswith(("@@", "+", "-")) and not line.startswith(("---", "+++")):
            raise PatchError("malformed_patch", f"line {i + 1}: {line[:60]!r} outside a file's hunks")
        i += 1
    return patches


def _read_hunk(lines: Sequence[str], i: int) -> tuple[_Hunk, int]:
    match = _HUNK.match(lines[i])
    if match is None:
        raise PatchError("malformed_patch", f"line {i + 1}: bad hunk header {lines[i][:60]!r}")
    old_len = int(match.group(2) if match.group(2) is not None else 1)
    new_len = int(match.group(4) if match.group(4) is not None else 1)
    hunk = _Hunk(int(match.group(1)), [], [])
    i += 1
    last = ""
    while len(hunk.old) < old_len or len(hunk.new) < new_len:
        if i >= len(lines):
            raise PatchError("malformed_patch", "a hunk is cut short")
        line = lines[i]
        tag, body = (line[:1], line[1:]) if line else (" ", "")  # a blank line is blank context
        if tag == "\\":
            hunk.new_no_eol |= last in (" ", "+")
        elif tag in (" ", "-", "+"):
            if tag != "+":
                hunk.old.append(body)
            if tag != "-":
                hunk.new.append(body)
            last = tag
        else:
            raise PatchError("malformed_patch", f"line {i + 1}: unexpected {line[:60]!r} inside a hunk")
        i += 1
    if len(hunk.old) != old_len or len(hunk.new) != new_len:
        raise PatchError("malformed_patch", f"line {i}: the hunk's lines do not match its header")
    if i < len(lines) and lines[i].startswith("\\"):
        hunk.new_no_eol |= last in (" ", "+")
        i += 1
    return hunk, i


def _find(lines: Sequence[str], block: Sequence[str], expected: int) -> int | None:
    """Where ``block`` occurs in ``lines``, nearest to ``expected`` first; None if nowhere."""
    k = len(block)
    candidates = range(len(lines) - k + 1)
    for i in sorted(candidates, key=lambda j: (abs(j - expected), j)):
        if list(lines[i : i + k]) == list(block):
            return i
    return None


def _patch_text(path: str, text: str, hunks: Sequence[_Hunk]) -> str:
    lines, final_newline = _split(text)
    offset = 0
    for n, hunk in enumerate(hunks, 1):
        # an insertion-only hunk (-s,0) goes after original line s; any other starts at line s
        origin = hunk.old_start if not hunk.old else max(hunk.old_start - 1, 0)
        if not hunk.old:
            at = min(origin + offset, len(lines))
        else:
            found = _find(lines, hunk.old, origin + offset)
            if found is None:
                raise PatchError("patch_does_not_apply", f"{path}: hunk {n} does not match the file")
            at = found
        ends_file = at + len(hunk.old) >= len(lines)
        lines[at : at + len(hunk.old)] = hunk.new
        offset = at - origin + len(hunk.new) - len(hunk.old)
        if ends_file:
            final_newline = not hunk.new_no_eol
    return _join(lines, final_newline)


def apply_diff(files: Files, text: str) -> list[str]:
    """Apply a unified diff to ``files`` in place (unchanged on error); returns the paths it touched."""
    scratch = dict(files)
    touched: list[str] = []
    for patch in parse_diff(text):
        path = patch.new or patch.old
        assert path is not None
        if patch.old is None:
            if scratch.get(path):
                raise PatchError("patch_does_not_apply", f"{path}: the patch creates a file that exists")
            scratch[path] = _patch_text(path, "", patch.hunks)
        elif patch.old not in scratch:
            raise PatchError("patch_does_not_apply", f"{patch.old}: no such file")
        elif patch.new is None:
            remaining = _patch_text(path, scratch[patch.old], patch.hunks) if patch.hunks else ""
            if remaining:
                raise PatchError("patch_does_not_apply", f"{path}: the deleted file's content does not match")
            del scratch[patch.old]
        else:
            scratch[path] = _patch_text(path, scratch[path], patch.hunks)
        touched.append(path)
    files.clear()
    files.update(scratch)
    return touched


def diff_paths(text: str) -> list[str]:
    """The paths a unified diff names (either side)."""
    return [p for patch in parse_diff(text) for p in (patch.old, patch.new) if p is not None]


def _side(text: str | None) -> list[str]:
    if not text:
        return []
    lines = text.splitlines(keepends=True)
    if not lines[-1].endswith("\n"):
        lines[-1] += "\n" + NO_EOL + "\n"
    return lines


def make_diff(old: Mapping[str, str], new: Mapping[str, str]) -> str:
    """A ``git diff``-style unified diff from ``old`` to ``new`` (files missing on a side are created / deleted)."""
    out: list[str] = []
    for path in sorted(set(old) | set(new)):
        before, after = old.get(path), new.get(path)
        if before == after:
            continue
        out.append(f"diff --git a/{path} b/{path}\n")
        if before is None:
            out.append("new file mode 100644\n")
        elif after is None:
            out.append("deleted file mode 100644\n")
        body = list(
            difflib.unified_diff(
                _side(before),
                _side(after),
                "/dev/null" if before is None else f"a/{path}",
                "/dev/null" if after is None else f"b/{path}",
                n=3,
            )
        )
        out.extend(line if line.endswith("\n") else line + "\n" for line in body)
    return "".join(out)
