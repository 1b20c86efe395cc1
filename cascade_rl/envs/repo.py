"""``swe_agentic``: fix an issue in a repository through tools, graded by the instance's hidden tests.

The prompt's spec is ``{"type": "swe", "instance": {...}}`` (``cascade_rl.swe.instance`` format).
Each episode works on its own in-memory copy of the repository; the tools (Cascade-2 XML calls):

* ``list_files(path?)``: the files under a folder (the whole repository by default);
* ``view_file(path, start_line?, end_line?)``: a file's text, or some of its lines;
* ``search(pattern, path?)``: ``file:line: text`` for every line containing ``pattern`` (plain text);
* ``replace(path, old, new)``: replace the one occurrence of ``old`` (an empty ``old`` creates a file);
* ``run_tests(path?)``: run the visible test files (under ``path``) in the sandbox; the hidden
  tests are not in the repository, so they never run here;
* ``submit()``: end the episode.

The episode ends on ``submit``, on a turn without tool calls, or after ``max_turns`` model turns
(the environment's own budget: set it no higher than the rollout's turn budget, or an episode the
runner cuts short scores 0). At the end the repository as the model left it is graded by
``swe.harness.grade_files``: reward 1 when every FAIL_TO_PASS and PASS_TO_PASS test passes. A call
that cannot be carried out (a missing file, an ``old`` text that is not there or not unique, a
path outside the repository) is an ``error: ...`` response, and the episode goes on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cascade_rl.chat import ParsedCompletion
from cascade_rl.envs.base import StepResult, register_env
from cascade_rl.envs.tools import Tool, ToolEnv, ToolError, tool_schema
from cascade_rl.rewards import SpecError
from cascade_rl.swe.harness import format_report, grade_files, run_tests
from cascade_rl.swe.instance import Snapshot, SweInstance, find_test_files, validate_instance
from cascade_rl.swe.patch import PatchError, clean_path
from cascade_rl.types import Prompt

MAX_SEARCH_HITS = 50
MAX_VIEW_CHARS = 12000


def _s(description: str) -> dict[str, Any]:
    return {"type": "string", "description": description}


def _i(description: str) -> dict[str, Any]:
    return {"type": "integer", "description": description}


TOOLS: dict[str, dict[str, Any]] = {
    t["function"]["name"]: t
    for t in (
        tool_schema("list_files", "List the repository's files (under a folder, if given).",
                    {"path": _s("Folder to list (default: the whole repository)")}, []),
        tool_schema("view_file", "Show a file's text, or the lines start_line..end_line of it (1-based).",
                    {"path": _s("File path"), "start_line": _i("First line"), "end_line": _i("Last line")}, ["path"]),
        tool_schema("search", "Find the lines containing a text, as file:line: text.",
                    {"pattern": _s("Text to look for"), "path": _s("File or folder to search (default: all)")},
                    ["pattern"]),
        tool_schema("replace", "Replace the one occurrence of old in a file by new (empty old creates a new file).",
                    {"path": _s("File path"), "old": _s("Exact text to replace"), "new": _s("Replacement text")},
                    ["path", "old", "new"]),
        tool_schema("run_tests", "Run the repository's test files (under a path, if given) and report each test.",
                    {"path": _s("Test file or folder (default: every test file)")}, []),
        tool_schema("submit", "Submit the repository as it is now; this ends the task.", {}, []),
    )
}  # fmt: skip


def instance_of(spec: Any) -> SweInstance:
    """The instance of a ``swe`` spec; ``SpecError`` naming what is wrong."""
    if not isinstance(spec, Mapping) or spec.get("type") != "swe":
        raise SpecError(f"swe spec: expected an object with type 'swe', got {spec!r:.120}")
    try:
        return validate_instance(spec.get("instance"))
    except ValueError as err:
        raise SpecError(f"swe spec: field 'instance': {err}") from None


class Repository:
    """The files of one episode and the tools over them (the public methods named in ``TOOLS``)."""

    def __init__(self, instance: SweInstance, *, timeout: float, per_test_timeout: float) -> None:
        snapshot = instance.snapshot()
        self.instance, self.files, self.binary = instance, snapshot.text, snapshot.binary
        self.timeout, self.per_test_timeout = timeout, per_test_timeout

    def _path(self, path: str) -> str:
        try:
            return clean_path(path)
        except PatchError as err:
            raise ToolError(str(err)) from None

    def _file(self, path: str) -> tuple[str, str]:
        rel = self._path(path)
        if rel in self.binary:
            raise ToolError(f"{rel} is a binary file")
        if rel not in self.files:
            raise ToolError(f"no file {rel!r}; list_files shows the files")
        return rel, self.files[rel]

    def _under(self, path: str | None) -> list[str]:
        every = sorted({*self.files, *self.binary})
        if path is None or path.strip() in ("", ".", "./"):
            return every
        rel = self._path(path)
        found = [p for p in every if p == rel or p.startswith(rel + "/")]
        if not found:
            raise ToolError(f"nothing at {rel!r}; list_files shows the files")
        return found

    def list_files(self, path: str | None = None) -> str:
        return "\n".join(self._under(path))

    def view_file(self, path: str, start_line: int | None = None, end_line: int | None = None) -> str:
        _, text = self._file(path)
        lines = text.splitlines()
        if start_line is not None or end_line is not None:
            start, end = start_line or 1, end_line or len(lines)
            if start < 1 or end < start:
                raise ToolError(f"bad line range {start}..{end}; the file has {len(lines)} lines")
            lines = lines[start - 1 : end]
        out = "\n".join(lines) or "(empty)"
        return out if len(out) <= MAX_VIEW_CHARS else out[:MAX_VIEW_CHARS] + "\n... (cut; view fewer lines)"

    def search(self, pattern: str, path: str | None = None) -> str:
        if not pattern:
            raise ToolError("the pattern is empty")
        hits = []
        for rel in self._under(path):
            for n, line in enumerate(self.files.get(rel, "").splitlines(), 1):
                if pattern in line:
                    hits.append(f"{rel}:{n}: {line.strip()}")
        if not hits:
            return "no matches"
        more = len(hits) - MAX_SEARCH_HITS
        return "\n".join(hits[:MAX_SEARCH_HITS]) + (f"\n... and {more} more" if more > 0 else "")

    def replace(self, path: str, old: str, new: str) -> str:
        rel = self._path(path)
        if not old:
            if self.files.get(rel) or rel in self.binary:
                raise ToolError(f"{rel} exists; an empty old text only creates a new file")
            self.files[rel] = new
            return f"created {rel}"
        rel, text = self._file(rel)
        count = text.count(old)
        if count != 1:
            where = "is not in" if not count else f"occurs {count} times in"
            raise ToolError(f"the old text {where} {rel}; it must occur exactly once (copy it from view_file)")
        self.files[rel] = text.replace(old, new, 1)
        return f"edited {rel}"

    def visible_test_files(self, path: str | None = None) -> list[str]:
        chosen = find_test_files(self._under(path))
        base = self.instance.visible_tests
        if base is not None:
            original = set(self.instance.snapshot().text)
            chosen = [p for p in chosen if p in base or p not in original]
        return chosen

    def run_tests(self, path: str | None = None) -> str:
        files = self.visible_test_files(path)
        if not files:
            raise ToolError("no test files there (test files are named test_*.py or *_test.py)")
        snapshot = Snapshot(dict(self.files), dict(self.binary))
        run = run_tests(snapshot, discover=files, timeout=self.timeout, per_test_timeout=self.per_test_timeout)
        return format_report(run)

    def submit(self) -> str:
        return "submitted"

    def grade(self) -> tuple[float, dict[str, Any]]:
        snapshot = Snapshot(dict(self.files), dict(self.binary))
        result = grade_files(self.instance, snapshot, timeout=self.timeout, per_test_timeout=self.per_test_timeout)
        return result.score, result.info


@register_env("swe_agentic")
class RepoEnv(ToolEnv):
    """One episode on a fresh copy of the spec's repository (see the module docstring)."""

    rewards_itself = True  # the hidden tests score the episode; the stage's reward function is not asked

    def __init__(
        self, prompt: Prompt, *, max_turns: int = 30, timeout: float = 30.0, per_test_timeout: float = 5.0
    ) -> None:
        self.repo = Repository(instance_of(prompt.spec), timeout=timeout, per_test_timeout=per_test_timeout)
        offered = [t["function"]["name"] for t in prompt.tools] if prompt.tools else list(TOOLS)
        super().__init__(prompt, [Tool(TOOLS[n], getattr(self.repo, n)) for n in offered if n in TOOLS])
        self.max_turns, self.turns = max_turns, 0

    def step(self, turn: ParsedCompletion) -> StepResult:
        self.turns += 1
        submitted = any(c.name == "submit" for c in turn.tool_calls)
        if not turn.tool_calls or submitted:
            return self.finish(turn)
        result = super().step(turn)
        if self.turns >= self.max_turns:
            return self._graded("max_turns")
        return result

    def finish(self, turn: ParsedCompletion) -> StepResult:
        ended = "submit" if any(c.name == "submit" for c in turn.tool_calls) else "no_tool_call"
        if ended == "submit":
            for call in turn.tool_calls:  # edits made in the submitting turn, before the submit, count
                if call.name == "submit":
                    break
                self.run(call)
        return self._graded(ended)

    def _graded(self, ended: str) -> StepResult:
        reward, info = self.repo.grade()
        return StepResult(done=True, reward=reward, info={**self.counts(), **info, "ended_by": ended})

    @staticmethod
    def check_spec(spec: Any) -> None:
        """Raise ``SpecError`` for a spec that is not a usable ``swe`` instance."""
        instance_of(spec)
