"""``python_tool``: tool-integrated reasoning with the model card's ``stateful_python_code_exec`` tool.

Each episode holds one sandboxed interpreter session (``cascade_rl.rewards.sandbox_session``),
started on the episode's first call, so variables persist from one call to the next. A call answers
with what the code printed (tracebacks included) and the value of a final expression. An interpreter
that had to be restarted is reported with an ``error: ...`` line first; a time-out is a tool error
(``ToolError``), counted in ``tool_errors``. Tasks list ``TOOL`` in their prompts' ``tools``.
"""

from __future__ import annotations

from cascade_rl.envs.base import register_env
from cascade_rl.envs.tools import Tool, ToolEnv, ToolError, tool_schema
from cascade_rl.rewards.sandbox_session import PythonSession
from cascade_rl.types import Prompt

__all__ = ["TOOL", "PythonToolEnv"]

TOOL = tool_schema(
    "stateful_python_code_exec",
    "Runs Python code in a stateful interpreter: variables, functions and imports persist between calls. "
    "Returns what the code prints (including errors and tracebacks) and the value of the final expression, "
    "if the code ends with one. There is no network access.",
    {"code": {"type": "string", "description": "The Python code to run."}},
    ["code"],
)


@register_env("python_tool")
class PythonToolEnv(ToolEnv):
    """One ``PythonSession`` per episode; ``close()`` ends it and everything it started."""

    def __init__(
        self,
        prompt: Prompt,
        *,
        timeout: float = 120.0,
        memory_mb: int = 1024,
        max_output: int = 4096,
        site_packages: bool = False,
    ) -> None:
        super().__init__(prompt, [Tool(TOOL, self._exec)])
        self._options = {
            "timeout": timeout,
            "memory_mb": memory_mb,
            "max_output": max_output,
            "site_packages": site_packages,
        }
        self._session: PythonSession | None = None

    @property
    def session(self) -> PythonSession | None:
        """The episode's interpreter session (None until the first call, and after ``close``)."""
        return self._session

    def _exec(self, code: str) -> str:
        if self._session is None:
            self._session = PythonSession(**self._options)
        result = self._session.execute(code)
        if result.timed_out:
            raise ToolError(f"{result.error}\n{result.output}".rstrip("\n"))
        if result.error is not None:
            return f"error: {result.error}\n{result.output}"
        return result.output

    def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            session.close()
