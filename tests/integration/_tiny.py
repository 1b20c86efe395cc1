"""A tiny instruction-following model that RL can move: settings and helpers shared by the RL and
MOPD integration tests (the session fixtures that train it live in ``conftest.py``).

Why the ``instruct`` domain at difficulty 0: with this model (107K parameters, hidden 64, two
layers, 512-token BPE) 200 SFT steps (~15 s on one thread) land at ~0.48 held-out at T=1 (greedy
~0.78), inside the 20-60% band where GRPO groups carry signal. Measured alternatives: math d0
rose only +0.03-0.05 in 80-150 GRPO steps (its errors are unknown number facts, not a spread-out
distribution), mcqa d0 stays at chance (0.33) after SFT, json_schema d0 stays below 0.05.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from cascade_rl.config import (
    DataConfig,
    EngineConfig,
    EvalConfig,
    ModelConfig,
    MOPDStage,
    OptimConfig,
    RLStage,
    SFTStage,
)
from cascade_rl.engines.backend import LocalBackend
from cascade_rl.eval.runner import evaluate
from cascade_rl.logging import read_metrics

DOMAIN = "instruct"
VOCAB_SIZE = 512
TINY: dict[str, Any] = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=32,
)
MODEL_SEED = 0
# Reference answers are ~14 tokens; 24 leaves room without letting rambling samples cost much.
MAX_NEW_TOKENS = 24
# 400 held-out prompts x 8 samples at T=1: the paired standard error of a before/after difference
# is ~0.013, against the +-0.03-0.05 swing of small evaluations.
EVAL_PROMPTS, EVAL_SAMPLES = 400, 8
START = "tiny:qwen3"  # the seeded random init the SFT stage starts from


def backend() -> LocalBackend:
    """The in-process engines on the tiny model (fp32 on the CPU)."""
    return LocalBackend(EngineConfig(), ModelConfig(spec=START, seed=MODEL_SEED, vocab_size=VOCAB_SIZE, tiny=TINY))


def sft_stage() -> SFTStage:
    # One cosine schedule (MINIATURE.md: restarts and constant lr leave checkpoints in loss spikes).
    return SFTStage(
        data=[DataConfig(task=DOMAIN, n=3000, thinking="off")],
        pack_length=1024,
        packs_per_step=2,
        max_steps=200,
        save_every=1000,
        optim=OptimConfig(lr=3e-3, min_lr=3e-4, warmup_steps=5, warmup_start_lr=3e-4, weight_decay=0.0),
        seed=0,
    )


def _rl_optim(lr: float) -> OptimConfig:
    # Warm-up from lr/10 over 10 steps: the step that would otherwise hit a fresh Adam at full lr is
    # what collapsed policies in MINIATURE.md.
    return OptimConfig(lr=lr, warmup_steps=10, warmup_start_lr=lr / 10, weight_decay=0.0, betas=(0.9, 0.999))


def grpo_stage() -> RLStage:
    # Truncation is penalised here (overlong_filtering off: a truncated answer scores 0 and trains):
    # with a 24-token budget for ~14-token answers, running out of budget is a wrong answer. With
    # overlong filtering on, truncated rollouts leave the loss and the group statistics, nothing
    # pushes against them, and this model drifted into them (measured, lr 3e-4: truncation 5% -> 65%
    # in 100 steps, held-out 0.50 -> 0.25; with a 32-token budget 5% -> 31%, +0.05).
    return RLStage(
        name="grpo",
        prompts=[DataConfig(task=DOMAIN, n=2000)],
        steps=100,
        prompts_per_step=16,
        group_size=8,
        max_new_tokens=MAX_NEW_TOKENS,
        overlong_filtering=False,
        optim=_rl_optim(3e-4),
        save_every=1000,
        seed=0,
    )


def mopd_stage() -> MOPDStage:
    # 4 rollouts per prompt as published; lr 2e-4 and 3e-4 (seeds 0 and 1) all gave +0.09-0.10.
    return MOPDStage(
        prompts=[DataConfig(task=DOMAIN, n=2000)],
        steps=100,
        prompts_per_step=16,
        group_size=4,
        max_new_tokens=MAX_NEW_TOKENS,
        optim=_rl_optim(3e-4),
        save_every=1000,
        seed=0,
    )


@dataclass(frozen=True)
class HeldOut:
    """Held-out score at T=1: the mean over every sample, and each prompt's mean over its samples."""

    avg: float
    per_prompt: dict[str, float]

    @property
    def stderr(self) -> float:
        values = list(self.per_prompt.values())
        return statistics.stdev(values) / len(values) ** 0.5


def held_out(folder: Path, samples_file: Path) -> HeldOut:
    """The saved model's held-out (test split) score, every sample written to ``samples_file``."""
    config = EvalConfig(
        domains=[DataConfig(task=DOMAIN, n=EVAL_PROMPTS)],
        samples=EVAL_SAMPLES,
        max_new_tokens=MAX_NEW_TOKENS,
        temperature=1.0,
        seed=1234,
    )
    engines = backend()
    generator = engines.eval_generator(folder, config.batch_size)
    (score,) = evaluate(
        generator, engines.tokenizer(folder), config, samples_file=samples_file, label=samples_file.stem
    )
    by_prompt: dict[str, list[float]] = {}
    # split on "\n" only: sampled completions can hold U+0085 or U+2028, written raw (ensure_ascii=False),
    # and splitlines() would cut a record there
    for line in samples_file.read_text(encoding="utf-8").split("\n"):
        if not line:
            continue
        row = json.loads(line)
        by_prompt.setdefault(row["uid"], []).append(float(row["score"]))
    assert len(by_prompt) == EVAL_PROMPTS and all(len(v) == EVAL_SAMPLES for v in by_prompt.values())
    return HeldOut(score.avg, {uid: statistics.fmean(v) for uid, v in by_prompt.items()})


def paired_gain(before: HeldOut, after: HeldOut) -> tuple[float, float]:
    """(after - before, its standard error over prompts): both runs score the same prompts, so the
    per-prompt differences carry both the prompt and the sampling noise of the comparison."""
    assert before.per_prompt.keys() == after.per_prompt.keys()
    diffs = [after.per_prompt[uid] - before.per_prompt[uid] for uid in before.per_prompt]
    return after.avg - before.avg, statistics.stdev(diffs) / len(diffs) ** 0.5


@dataclass(frozen=True)
class TrainedModel:
    """A stage's output folder, its run folder (metrics.jsonl), its held-out score and its tokenizer."""

    folder: Path
    run_dir: Path
    score: HeldOut
    tokenizer: PreTrainedTokenizerBase


def metric_rows(run_dir: Path) -> list[dict[str, Any]]:
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == list(range(1, len(rows) + 1)), "one metrics row per step, in order"
    return rows
