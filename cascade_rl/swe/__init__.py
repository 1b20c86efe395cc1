"""SWE RL: task instances, safe patching, sandboxed grading, procedural repositories.

``instance`` reads SWE-bench / SWE-Gym records (JSONL, ``file:line`` errors); ``patch`` applies edit
blocks and unified diffs inside a repository snapshot; ``harness`` grades a change by the instance's
tests in the sandbox; ``procedural`` generates small buggy packages with issues and hidden tests
(an RL stage's ``curriculum`` retires instances that are always or never solved). The tasks are
``cascade_rl.data.tasks.swe`` (``swe_agentless``, ``swe_agentic``), the environment
``cascade_rl.envs.repo`` and the verifier ``cascade_rl.rewards.swe``.
"""

from cascade_rl.swe.harness import evaluate_diff, evaluate_edits, grade_files, run_tests
from cascade_rl.swe.instance import Snapshot, SweInstance, read_instances, validate_instance
from cascade_rl.swe.patch import Edit, PatchError, apply_diff, apply_edits, make_diff, parse_edit_blocks

__all__ = [
    "Edit",
    "PatchError",
    "Snapshot",
    "SweInstance",
    "apply_diff",
    "apply_edits",
    "evaluate_diff",
    "evaluate_edits",
    "grade_files",
    "make_diff",
    "parse_edit_blocks",
    "read_instances",
    "run_tests",
    "validate_instance",
]
