"""The SFT stage: packed chat data, loss = mean over every supervised token of the optimizer step.

Data order is a pure function of the stage seed and the step index (packs are built once with
best-fit decreasing, then shuffled per epoch), so resuming at step k replays exactly the batches
an uninterrupted run would have seen.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from cascade_rl.chat import tokenize_conversation
from cascade_rl.config import SFTStage
from cascade_rl.data.build import sft_records
from cascade_rl.data.packing import pack
from cascade_rl.data.sources import apply_length_policy, domain_token_report, format_report
from cascade_rl.engines.backend import Backend, ModelSource
from cascade_rl.engines.base import TrainBatch, TrainSequence
from cascade_rl.logging import MetricsLogger, console, progress_bar
from cascade_rl.loops.common import NonFiniteGuard, checkpoint, resume, save_final, set_seed


def build_samples(stage: SFTStage, tokenizer: PreTrainedTokenizerBase) -> tuple[list[TrainSequence], str]:
    """Tokenized, length-checked samples of the stage, and the data report (counts per source and domain)."""
    records, stats = sft_records(stage.data, mode=stage.blend, seed=stage.seed)
    samples: list[TrainSequence] = []
    kept_records, token_counts = [], []
    truncated = dropped = 0
    for i, record in enumerate(records):
        ids, mask = tokenize_conversation(tokenizer, record.messages, record.tools, last_turn_only=stage.last_turn_only)
        result = apply_length_policy(ids, mask, stage.pack_length, stage.length_policy, where=f"record {i}")
        if result is None or sum(result[1][1:]) == 0:  # nothing left to learn from
            dropped += 1
            continue
        truncated += len(result[0]) < len(ids)
        samples.append(TrainSequence(tokens=result[0], mask=result[1]))
        kept_records.append(record)
        token_counts.append(len(result[0]))
    report = format_report(stats, domain_token_report(kept_records, token_counts))
    report += (
        f"\nblend: {len(records)} records -> {len(samples)} samples "
        f"(length policy {stage.length_policy!r} at {stage.pack_length} tokens: "
        f"{truncated} truncated, {dropped} dropped)"
    )
    return samples, report


def step_plan(samples: list[TrainSequence], stage: SFTStage) -> list[list[int]]:
    """Sample indices of every optimizer step of the stage (deterministic in the stage seed)."""
    packs = pack([len(s.tokens) for s in samples], stage.pack_length)
    per_epoch = math.ceil(len(packs) / stage.packs_per_step)
    total = stage.max_steps or max(1, math.floor(stage.epochs * per_epoch))
    plan: list[list[int]] = []
    epoch = 0
    while len(plan) < total:
        order = list(range(len(packs)))
        random.Random(f"{stage.seed}:epoch:{epoch}").shuffle(order)
        for start in range(0, len(order), stage.packs_per_step):
            plan.append([i for p in order[start : start + stage.packs_per_step] for i in packs[p]])
        epoch += 1
    return plan[:total]


def run_sft(
    stage: SFTStage,
    backend: Backend,
    start: ModelSource,
    run_dir: Path,
    *,
    logger: MetricsLogger | None = None,
) -> Path:
    """Train from ``start``, checkpointing every ``save_every`` steps; resumes from ``run_dir`` when it holds
    checkpoints. Returns the folder of the trained model (``run_dir/model``)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    set_seed(stage.seed)
    tokenizer = backend.tokenizer(start)
    samples, report = build_samples(stage, tokenizer)
    console.print(report, markup=False, highlight=False, soft_wrap=True)
    plan = step_plan(samples, stage)
    policy = backend.policy(start, stage.optim, len(plan), microbatch_tokens=stage.pack_length)
    first = resume(run_dir, policy, stage.name, len(plan))
    guard = NonFiniteGuard(stage.name, stage.max_nonfinite_steps, run_dir)
    own_logger = logger is None
    logger = logger or MetricsLogger(run_dir)
    try:
        with progress_bar(len(plan), f"sft:{stage.name}") as bar:
            bar.update(advance=first)
            for step in range(first, len(plan)):
                t0 = time.perf_counter()
                seqs = [samples[i] for i in plan[step]]
                num_tokens = float(sum(sum(s.mask[1:]) for s in seqs))
                batch = TrainBatch(seqs, num_tokens=num_tokens, num_sequences=len(seqs))
                metrics = policy.forward_backward(batch, "nll")
                metrics |= policy.optim_step()
                guard.check(metrics, step + 1)
                elapsed = time.perf_counter() - t0
                metrics |= {
                    "loss": metrics["nll_sum"] / max(num_tokens, 1.0),
                    "supervised_tokens": num_tokens,
                    "tokens_per_s": sum(len(s.tokens) for s in seqs) / elapsed,
                    "step_time": elapsed,
                }
                logger.log(metrics, step + 1, stage=stage.name)
                bar.update(loss=f"{metrics['loss']:.4f}", tok_s=f"{metrics['tokens_per_s']:.0f}")
                if (step + 1) % stage.save_every == 0 and step + 1 < len(plan):
                    checkpoint(run_dir, step + 1, policy, {"stage": stage.name}, stage.keep_last)
    finally:
        if own_logger:
            logger.close()
    return save_final(policy, run_dir / "model")
