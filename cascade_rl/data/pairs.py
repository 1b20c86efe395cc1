"""Preference pairs for reward-model training: JSONL files or a task's generated pairs.

A file holds one pair per line::

    {"prompt": [{"role": "user", "content": "..."}] or "...", "chosen": "..." or {"role": "assistant", ...},
     "rejected": ..., "domain": "..."?}

A string prompt is one user message; a string response is the assistant turn's content. Problems are
reported as ``file:line: reason`` and, with ``on_error: skip``, skipped and counted (as ``sources``
does for chat records). A task entry (``task: chat``) generates its pairs from the task's ``split`` of
the prompt space (``make_split``), so train and test pairs never share a prompt text; the task must
have a ``pair_of(problem, rng)`` method.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cascade_rl.config import DataConfig
from cascade_rl.data.sources import DataSourceError, RecordError, SourceStats, read_validated, validate_record
from cascade_rl.data.tasks import get_task, make_split
from cascade_rl.logging import console


@dataclass(frozen=True)
class Pair:
    """One preference: the conversation so far, and two assistant turns of which ``chosen`` is preferred."""

    prompt: tuple[dict[str, Any], ...]
    chosen: dict[str, Any]  # an assistant message (OpenAI shape)
    rejected: dict[str, Any]
    domain: str = "general"
    kind: str = ""  # how a generated pair was made ("reference>too_long"); empty for file pairs
    where: str = ""  # file:line, or task:uid


def _prompt(value: Any) -> tuple[dict[str, Any], ...]:
    if isinstance(value, str):
        if not value.strip():
            raise RecordError("'prompt' is an empty string")
        value = [{"role": "user", "content": value}]
    if not isinstance(value, list):
        raise RecordError(f"'prompt' must be a list of messages or a string, got {type(value).__name__}")
    try:
        record = validate_record({"messages": value}, require_assistant=False)
    except RecordError as err:
        raise RecordError(f"'prompt': {err}") from None
    if record.messages[-1]["role"] == "assistant":
        raise RecordError("'prompt' ends with an assistant turn; the responses are 'chosen' and 'rejected'")
    return record.messages


def _response(obj: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = obj.get(key)
    if value is None:
        raise RecordError(f"missing '{key}'")
    if isinstance(value, str):
        value = {"role": "assistant", "content": value}
    if not isinstance(value, Mapping) or value.get("role", "assistant") != "assistant":
        raise RecordError(f"'{key}' must be a string or an assistant message, got {value!r:.100}")
    try:
        (message,) = validate_record({"messages": [{"role": "assistant", **value}]}).messages
    except RecordError as err:
        raise RecordError(f"'{key}': {err}") from None
    return message


def validate_pair(obj: Any, *, where: str = "", domain: str | None = None, default_domain: str = "general") -> Pair:
    """One raw pair record, checked and normalised; ``RecordError`` names what is wrong.

    Its domain: ``domain`` when given (the data entry's), else the record's own, else ``default_domain``.
    """
    if not isinstance(obj, Mapping):
        raise RecordError(f"expected an object with 'prompt', 'chosen' and 'rejected', got {type(obj).__name__}")
    prompt = _prompt(obj.get("prompt"))
    chosen, rejected = _response(obj, "chosen"), _response(obj, "rejected")
    if chosen == rejected:
        raise RecordError("'chosen' and 'rejected' are the same response (no preference to learn)")
    record_domain = obj.get("domain")
    if record_domain is not None and (not isinstance(record_domain, str) or not record_domain):
        raise RecordError(f"'domain' must be a non-empty string, got {record_domain!r}")
    return Pair(prompt, chosen, rejected, domain or record_domain or default_domain, str(obj.get("kind", "")), where)


def _file_pairs(config: DataConfig) -> tuple[list[Pair], SourceStats]:
    path = Path(config.path or "")
    if not path.is_file():
        raise DataSourceError(f"{path}: pair file not found")
    pairs, stats = read_validated(
        path,
        lambda obj, where: validate_pair(obj, where=where, domain=config.domain, default_domain=path.stem),
        on_error=config.on_error,
    )
    if not pairs:
        detail = f"all {stats.read} lines were malformed and skipped" if stats.read else "it holds no pairs"
        raise DataSourceError(f"{path}: no usable preference pairs ({detail})")
    return pairs, stats


def _task_pairs(config: DataConfig, split: str) -> tuple[list[Pair], SourceStats]:
    assert config.task is not None
    task = get_task(config.task)
    pair_of = getattr(task, "pair_of", None)
    if pair_of is None:
        raise DataSourceError(f"task {config.task!r} makes no preference pairs (a task needs a pair_of method)")
    chosen_split = config.split or split
    problems = make_split(config.task, chosen_split, config.n, seed=config.seed, difficulty=config.difficulty)  # type: ignore[arg-type]
    domain = config.domain or config.task
    pairs = []
    for i, problem in enumerate(problems):
        # seeded per problem and position: a larger n keeps the smaller n's pairs as its prefix
        rng = random.Random(f"cascade-rl/pairs/{config.seed}/{problem.uid}/{i}")
        raw = pair_of(problem, rng)
        pairs.append(validate_pair(raw, where=f"task:{config.task}:{problem.uid}", domain=domain))
    name = f"task:{config.task}@{config.difficulty}/{chosen_split}"
    return pairs, SourceStats(name=name, read=len(pairs), used=len(pairs))


def pair_source(config: DataConfig, split: str) -> tuple[list[Pair], SourceStats]:
    """The pairs of one data entry and what happened to its lines (read, used, skipped and why)."""
    return _task_pairs(config, split) if config.task is not None else _file_pairs(config)


def read_pairs(config: DataConfig, split: str) -> list[Pair]:
    """The pairs of one data entry: a task's ``config.split`` (default ``split``) or every line of a file.

    Skipped lines (``on_error: skip``) are counted and the first one is named on the console.
    """
    pairs, stats = pair_source(config, split)
    if stats.skipped:
        console.print(
            f"{stats.name}: {stats.used} pairs used, {stats.skipped} malformed lines skipped "
            f"(first: {stats.reasons[0]})",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    return pairs
