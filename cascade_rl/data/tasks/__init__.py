"""Procedural task domains: SFT data, RL prompts and held-out evaluation for every domain.

Domains: math, instruct, mcqa, tool_call, json_schema, code. Each task generates ``Problem``s
at difficulty 0 (learnable by a ~1M-parameter model trained from scratch in minutes), 1 and 2
(multi-step problems for bigger models); ``make_split`` gives deterministic, disjoint sft / rl /
validation / test sets.
"""

from cascade_rl.data.tasks.base import Problem, Task, assistant_text, render_tool_calls
from cascade_rl.data.tasks.registry import SPLITS, TASKS, get_task, make_split, split_of

__all__ = [
    "SPLITS",
    "TASKS",
    "Problem",
    "Task",
    "assistant_text",
    "get_task",
    "make_split",
    "render_tool_calls",
    "split_of",
]
