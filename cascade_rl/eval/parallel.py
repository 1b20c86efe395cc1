"""Evaluations of saved models, in this process or spread over worker processes.

On a CPU, decoding a small model gains little from a second torch thread (measured on the demo's model:
1.4x from two threads), less than from a second process with one thread of its own (the demo's whole
evaluation: 44 s in one process with two threads, 36 s over two single-thread processes). With
``eval.processes > 1`` (local engine) an evaluation's jobs (one per domain, mode and split) are handed out to
that many workers, one torch thread each, which verify their own completions (sandboxed code runs in a
process of its own either way) and keep their loaded model between the jobs of one evaluation. Scores and
the samples file come back in the order one process would write them.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Collection, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed, wait
from pathlib import Path
from typing import Any, Protocol

from cascade_rl.config import EngineConfig, EvalConfig, ModelConfig
from cascade_rl.data.build import prompts_for
from cascade_rl.engines.backend import Backend
from cascade_rl.eval.runner import DomainScore, EvalJob, eval_jobs, evaluate, evaluate_prompts
from cascade_rl.logging import progress_bar


class Evaluator(Protocol):
    def evaluate(
        self, model_dir: Path, config: EvalConfig, *, validation: Collection[str], samples_file: Path, label: str
    ) -> list[DomainScore]:
        """Score a saved model on every configured domain (and the validation sets of ``validation``)."""
        ...

    def close(self) -> None: ...


class InProcessEvaluator:
    """The backend's own evaluation engine, in this process."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def evaluate(
        self, model_dir: Path, config: EvalConfig, *, validation: Collection[str], samples_file: Path, label: str
    ) -> list[DomainScore]:
        generator = self.backend.eval_generator(model_dir, config.batch_size)
        tokenizer = self.backend.tokenizer(model_dir)
        return evaluate(generator, tokenizer, config, validation=validation, samples_file=samples_file, label=label)

    def close(self) -> None:
        """The backend is the caller's to close."""


class ProcessEvaluator:
    """Jobs spread over worker processes with one torch thread each (local engine on a CPU)."""

    def __init__(self, processes: int, engine: EngineConfig, model: ModelConfig) -> None:
        self.engine, self.model = engine, model
        context = multiprocessing.get_context("spawn")  # never fork a process that holds torch threads
        self._pool = ProcessPoolExecutor(processes, mp_context=context, initializer=_one_thread)

    def evaluate(
        self, model_dir: Path, config: EvalConfig, *, validation: Collection[str], samples_file: Path, label: str
    ) -> list[DomainScore]:
        jobs = eval_jobs(config, validation)
        parts = [samples_file.with_name(f"{samples_file.name}.part{i}") for i in range(len(jobs))]
        for path in [samples_file, *parts]:
            path.unlink(missing_ok=True)  # a re-run replaces, never appends to, an unfinished evaluation
        futures: dict[Future, EvalJob] = {
            self._pool.submit(_run_job, self.engine, self.model, str(model_dir), config, job, part): job
            for job, part in zip(jobs, parts, strict=True)
        }
        try:
            with progress_bar(len(jobs), label) as bar:
                for future in as_completed(futures):
                    bar.update(**futures[future].label(future.result()))
            with samples_file.open("w", encoding="utf-8") as out:
                for part in parts:
                    if part.exists():
                        out.write(part.read_text(encoding="utf-8"))
        finally:
            for future in futures:
                future.cancel()  # a failed job ends the evaluation: the queued ones need not run
            wait(futures)  # and the running ones must stop writing before their parts are removed
            for part in parts:
                part.unlink(missing_ok=True)
        return [score for future in futures for score in future.result()]

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def make_evaluator(config: EvalConfig, engine: EngineConfig, model: ModelConfig, backend: Backend) -> Evaluator:
    """Worker processes where the recipe asks for them (``eval.processes``, local engine), else in-process."""
    if config.processes > 1 and engine.kind == "local":
        return ProcessEvaluator(config.processes, engine, model)
    return InProcessEvaluator(backend)


# --------------------------------------------------------------------------- worker side

_engines: dict[str, tuple[Any, Any]] = {}  # the model a worker has loaded: folder -> (generator, tokenizer)


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)

    os.environ["TOKENIZERS_PARALLELISM"] = "false"


def _run_job(
    engine: EngineConfig, model: ModelConfig, model_dir: str, config: EvalConfig, job: EvalJob, part: Path
) -> Sequence[DomainScore]:
    from cascade_rl.engines.backend import LocalBackend
    from cascade_rl.rewards.reward_fn import VerifierReward

    if model_dir not in _engines:
        _engines.clear()
        backend = LocalBackend(engine, model)
        _engines[model_dir] = (backend.eval_generator(model_dir, config.batch_size), backend.tokenizer(model_dir))
    generator, tokenizer = _engines[model_dir]
    prompts = prompts_for(job.data, job.split)
    # Verified here, not in a pool of its own: the evaluation workers are the parallelism, and a pool inside a
    # pool worker would keep that worker from exiting (multiprocessing joins a child's own children at exit).
    reward_fn = VerifierReward(workers=0)
    return evaluate_prompts(
        generator, tokenizer, prompts, config, job.thinking, reward_fn=reward_fn, split=job.split, samples_file=part
    )
