"""Verifier registry and the ``verify`` / ``verify_batch`` entry points.

A reward spec is a JSON-able mapping whose ``"type"`` selects the verifier; the remaining keys
are verifier-specific (see each module's docstring)::

    {"type": "math", "answer": "42"}
    {"type": "mcqa", "answer": "B", "options": ["...", "..."]}
    {"type": "instruct", "instruction_id_list": [...], "kwargs": [{...}, ...], "strict": true}
    {"type": "json_schema", "schema": {...}}
    {"type": "tool_call", "expected": [{"name": "...", "arguments": {...}}], "ordered": false}
    {"type": "code", "test": "def check(candidate): ...", "entry_point": "f"}
    {"type": "code", "cases": [{"input": "...", "output": "..."}], "timeout": 2}

Common optional key: ``"score_truncated": true`` judges a truncated completion (hit the length
limit) instead of scoring it 0.

Verifiers judge the final answer only (``content`` / ``tool_calls`` of the parsed completion),
never the reasoning inside ``<think>``.
"""

from __future__ import annotations

import atexit
import importlib
import json
import logging
import multiprocessing
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from cascade_rl.chat import ParsedCompletion, parse_completion
from cascade_rl.rewards.sandbox import SandboxError

logger = logging.getLogger(__name__)

_BUILTIN_MODULES = ("math", "mcqa", "instruct", "structured", "tool_call", "code", "rubric", "swe")


class SpecError(ValueError):
    """A reward spec is malformed (a data bug, not a model failure)."""


@dataclass(frozen=True)
class RewardResult:
    """``score`` in [0, 1]; ``info`` is JSON-able detail on how the score came about."""

    score: float
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0.0 <= self.score <= 1.0:
            raise ValueError(f"score must be in [0, 1], got {self.score}")


class Verifier(Protocol):
    """Judges one parsed completion against a spec of its type."""

    def check_spec(self, spec: Mapping[str, Any]) -> None:
        """Raise ``SpecError`` naming the bad field and what was expected."""

    def __call__(self, completion: ParsedCompletion, spec: Mapping[str, Any]) -> RewardResult:
        """Score a completion; must not raise on any model output."""


_REGISTRY: dict[str, Verifier] = {}
_loaded = False
_load_lock = threading.Lock()
V = TypeVar("V")


def register(name: str) -> Callable[[type[V]], type[V]]:
    """Class decorator: instantiate the verifier class (no arguments) under spec type ``name``."""

    def decorator(cls: type[V]) -> type[V]:
        if name in _REGISTRY:
            raise ValueError(f"verifier type {name!r} is already registered")
        _REGISTRY[name] = cls()  # type: ignore[assignment]
        return cls

    return decorator


def _load_builtins() -> None:
    global _loaded
    if _loaded:
        return
    with _load_lock:
        if not _loaded:
            for module in _BUILTIN_MODULES:
                importlib.import_module(f"cascade_rl.rewards.{module}")
            _loaded = True


def get_verifier(name: str) -> Verifier:
    """The verifier registered under ``name``; ``SpecError`` if there is none."""
    _load_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise SpecError(f"unknown reward spec type {name!r}; expected one of {sorted(_REGISTRY)}") from None


def check_spec(spec: Any) -> Verifier:
    """Validate ``spec`` and return its verifier."""
    if not isinstance(spec, Mapping):
        raise SpecError(f"reward spec must be a mapping with a 'type' key, got {type(spec).__name__}")
    kind = spec.get("type")
    if not isinstance(kind, str):
        raise SpecError(f"reward spec field 'type' must be a string, got {kind!r}")
    verifier = get_verifier(kind)
    verifier.check_spec(spec)
    return verifier


def verify(text: str, spec: Mapping[str, Any], *, truncated: bool = False, thinking: bool = False) -> RewardResult:
    """Score one raw assistant completion (may contain ``<think>`` and a final ``<|im_end|>``).

    ``thinking`` means the generation prompt already opened ``<think>``: text the model never
    closed stays reasoning, so it can never be mistaken for (or rewarded as) the answer.

    ``truncated`` means generation hit the length limit: score 0 (``info["reason"] ==
    "truncated"``) unless the spec sets ``score_truncated``. Raises ``SpecError`` for a malformed
    spec; a verifier bug on odd model output is logged and scored 0 rather than raised, so one
    sample cannot take down a rollout batch.
    """
    verifier = check_spec(spec)
    if truncated and not spec.get("score_truncated"):
        return RewardResult(0.0, {"reason": "truncated"})
    parsed = parse_completion(text, thinking=thinking)
    try:
        result = verifier(parsed, spec)
    except (SpecError, SandboxError):  # a data bug or a sandbox that cannot run: stop, never score 0
        raise
    except Exception as exc:
        logger.exception("verifier %r failed on a completion", spec["type"])
        return RewardResult(0.0, {"reason": "verifier_error", "error": repr(exc)[:500]})
    if parsed.errors:
        result.info.setdefault("parse_errors", list(parsed.errors))
    return result


def _verify_chunk(items: list[tuple[str, Mapping[str, Any], bool, bool]]) -> list[RewardResult]:
    return [verify(text, spec, truncated=trunc, thinking=think) for text, spec, trunc, think in items]


_pools: dict[int, ProcessPoolExecutor] = {}
_pool_lock = threading.Lock()


def _pool(workers: int) -> ProcessPoolExecutor:
    with _pool_lock:
        pool = _pools.get(workers)
        if pool is None:
            # spawn, not fork: the caller may hold CUDA contexts, threads or locks.
            ctx = multiprocessing.get_context("spawn")
            pool = _pools[workers] = ProcessPoolExecutor(max_workers=workers, mp_context=ctx)
        return pool


def shutdown_pools() -> None:
    """Stop the worker processes ``verify_batch`` keeps alive between calls."""
    with _pool_lock:
        for pool in _pools.values():
            pool.shutdown(wait=True, cancel_futures=True)
        _pools.clear()


atexit.register(shutdown_pools)


def verify_batch(
    texts: Sequence[str],
    specs: Sequence[Mapping[str, Any]],
    truncated: Sequence[bool] | None = None,
    *,
    workers: int = 0,
    thinking: bool = False,
) -> list[RewardResult]:
    """``verify`` over a batch, in order. ``workers > 0`` spreads it over that many processes.

    Specs are validated up front in the caller (a ``SpecError`` is raised before any work).
    Worker processes are started once (spawn) and reused by later calls with the same count.
    """
    if len(texts) != len(specs) or (truncated is not None and len(truncated) != len(texts)):
        raise ValueError("texts, specs and truncated must have the same length")
    for spec in specs:
        check_spec(spec)
    flags = list(truncated) if truncated is not None else [False] * len(texts)
    # Verifiers are deterministic, and a group's samples often repeat one another (a policy that has
    # learned a task answers it the same way): judge each distinct completion once.
    keys = [(t, json.dumps(s, sort_keys=True, default=str), f) for t, s, f in zip(texts, specs, flags, strict=True)]
    first: dict[tuple[str, str, bool], int] = {}
    for i, key in enumerate(keys):
        first.setdefault(key, i)
    unique = list(first.values())
    results = _verify_items([(texts[i], specs[i], flags[i], thinking) for i in unique], workers)
    by_key = dict(zip(first, results, strict=True))
    return [RewardResult(by_key[key].score, dict(by_key[key].info)) for key in keys]


def _verify_items(items: list[tuple[str, Mapping[str, Any], bool, bool]], workers: int) -> list[RewardResult]:
    if workers <= 0 or len(items) <= 1:
        return _verify_chunk(items)
    # Small chunks: code specs vary from milliseconds to seconds, so balance dynamically.
    size = max(1, min(16, len(items) // (workers * 4)))
    chunks = [items[i : i + size] for i in range(0, len(items), size)]
    for attempt in range(2):
        try:
            results: list[RewardResult] = []
            for part in _pool(workers).map(_verify_chunk, chunks):
                results.extend(part)
            return results
        except BrokenProcessPool:
            with _pool_lock:
                _pools.pop(workers, None)
            if attempt:
                raise
    raise AssertionError("unreachable")
