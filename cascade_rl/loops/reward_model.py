"""The reward-model stage: Bradley-Terry training on preference pairs, held-out pairwise accuracy.

Pairs come from ``stage.data`` (a task's ``train`` split, or JSONL files) and held-out pairs from
``stage.eval_data``; without it, every task entry of ``stage.data`` is held out on its ``test`` split
(200 pairs), which shares no prompt text with training. The step order is a pure function of the
stage seed and the step index (one seeded shuffle per pass over the pairs, cut into
``pairs_per_step``), so a resumed run sees exactly the pairs an uninterrupted one would.

Held-out accuracy (the share of pairs whose chosen response scores higher) is measured at a quarter,
half and three quarters of the steps and at the end (``eval_accuracy`` in the metrics), and written
with its per-perturbation breakdown to ``reward_model_eval.json``: which faults the model learned to
see and which it did not is what a later RL stage on this reward will exploit. The model is saved to
``run_dir/model``, an ``AutoModelForSequenceClassification`` folder with one label.
"""

from __future__ import annotations

import json
import random
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cascade_rl.config import DataConfig, RewardModelStage
from cascade_rl.data.pairs import Pair, pair_source
from cascade_rl.data.sources import SourceStats
from cascade_rl.engines.backend import Backend, ModelSource
from cascade_rl.engines.reward_model import RewardModel
from cascade_rl.files import write_text_atomic
from cascade_rl.logging import MetricsLogger, console, progress_bar
from cascade_rl.loops.common import NonFiniteGuard, checkpoint, resume, save_final, set_seed

EVAL_PAIRS = 200  # held-out pairs per task entry when the stage names none
EVAL_FRACTIONS = (0.25, 0.5, 0.75)  # points of the run (besides its end) where held-out accuracy is measured
EVAL_FILE = "reward_model_eval.json"

Encoded = tuple[list[int], list[int]]


def eval_configs(stage: RewardModelStage) -> list[DataConfig]:
    """The stage's held-out pair sources: ``eval_data``, else its task entries on their test split."""
    if stage.eval_data:
        return list(stage.eval_data)
    return [c.model_copy(update={"split": "test", "n": EVAL_PAIRS}) for c in stage.data if c.task is not None]


def load_pairs(configs: Sequence[DataConfig], split: str) -> tuple[list[Pair], list[SourceStats]]:
    """Every entry's pairs (a task's ``split`` unless it sets one), in entry order, with per-entry counts."""
    pairs: list[Pair] = []
    stats: list[SourceStats] = []
    for config in configs:
        found, stat = pair_source(config, split)
        pairs.extend(found)
        stats.append(stat)
    return pairs, stats


def _report(label: str, stats: Sequence[SourceStats]) -> str:
    lines = [f"{label}: " + ", ".join(f"{s.name} {s.used} pairs" for s in stats)]
    for s in stats:
        if s.skipped:
            lines.append(f"  {s.name}: {s.skipped} malformed lines skipped (first: {s.reasons[0]})")
    return "\n".join(lines)


def step_plan(num_pairs: int, stage: RewardModelStage) -> list[list[int]]:
    """Pair indices of every optimizer step: seeded passes over the pairs, ``pairs_per_step`` at a time."""
    if num_pairs < 1:
        raise ValueError(f"reward-model stage {stage.name!r} has no training pairs")
    order: list[int] = []
    epoch = 0
    while len(order) < stage.steps * stage.pairs_per_step:
        shuffled = list(range(num_pairs))
        random.Random(f"{stage.seed}:rm-epoch:{epoch}").shuffle(shuffled)
        order.extend(shuffled)
        epoch += 1
    size = stage.pairs_per_step
    return [order[s * size : (s + 1) * size] for s in range(stage.steps)]


def encode_pairs(rm: RewardModel, pairs: Sequence[Pair]) -> list[Encoded]:
    return [(rm.encode(p.prompt, p.chosen), rm.encode(p.prompt, p.rejected)) for p in pairs]


def pairwise_accuracy(rm: RewardModel, pairs: Sequence[Pair], encoded: Sequence[Encoded]) -> dict[str, Any]:
    """Held-out accuracy (chosen scored strictly higher), mean margin, and accuracy per pair kind."""
    scores = rm.scores([row for pair in encoded for row in pair])
    margins = [scores[2 * i] - scores[2 * i + 1] for i in range(len(encoded))]
    by_kind: dict[str, list[float]] = defaultdict(list)
    for pair, margin in zip(pairs, margins, strict=True):
        by_kind[pair.kind.split(">")[-1].split("+")[-1] or "file"].append(float(margin > 0))
    return {
        "pairs": len(margins),
        "accuracy": sum(m > 0 for m in margins) / max(len(margins), 1),
        "margin": sum(margins) / max(len(margins), 1),
        "by_rejected_kind": {k: {"pairs": len(v), "accuracy": sum(v) / len(v)} for k, v in sorted(by_kind.items())},
    }


def run_reward_model(
    stage: RewardModelStage,
    backend: Backend,
    start: ModelSource,
    run_dir: Path,
    *,
    logger: MetricsLogger | None = None,
) -> Path:
    """Train a reward model from ``start`` (resuming from ``run_dir``'s checkpoints); returns ``run_dir/model``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    set_seed(stage.seed)
    train, train_stats = load_pairs(stage.data, "train")
    held_out, eval_stats = load_pairs(eval_configs(stage), "test")
    console.print(_report("train", train_stats), markup=False, highlight=False, soft_wrap=True)
    if eval_stats:
        console.print(_report("held out", eval_stats), markup=False, highlight=False, soft_wrap=True)
    else:
        console.print(
            f"[{stage.name}] no held-out pairs (the data are files): set eval_data to measure pairwise accuracy",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    rm = backend.reward_model(start, stage.optim, stage.steps, max_length=stage.max_length, seed=stage.seed)
    encoded, held_encoded = encode_pairs(rm, train), encode_pairs(rm, held_out)
    plan = step_plan(len(train), stage)
    trainer = rm
    first = resume(run_dir, trainer, stage.name, len(plan))
    guard = NonFiniteGuard(stage.name, stage.max_nonfinite_steps, run_dir)
    eval_steps = {max(1, round(f * stage.steps)) for f in EVAL_FRACTIONS} | {stage.steps}
    own_logger = logger is None
    logger = logger or MetricsLogger(run_dir)
    result: dict[str, Any] = {}
    try:
        with progress_bar(len(plan), f"reward_model:{stage.name}") as bar:
            bar.update(advance=first)
            for step in range(first, len(plan)):
                t0 = time.perf_counter()
                batch = [encoded[i] for i in plan[step]]
                metrics = rm.forward_backward(batch, float(len(batch)))
                metrics |= rm.optim_step()
                guard.check(metrics, step + 1)
                if held_out and step + 1 in eval_steps:
                    result = pairwise_accuracy(rm, held_out, held_encoded)
                    metrics |= {"eval_accuracy": result["accuracy"], "eval_margin": result["margin"]}
                metrics["step_time"] = time.perf_counter() - t0
                logger.log(metrics, step + 1, stage=stage.name)
                bar.update(loss=f"{metrics['loss']:.4f}", acc=f"{metrics['accuracy']:.2f}")
                if (step + 1) % stage.save_every == 0 and step + 1 < len(plan):
                    checkpoint(run_dir, step + 1, trainer, {"stage": stage.name}, stage.keep_last)
    finally:
        if own_logger:
            logger.close()
    if held_out:
        result = result or pairwise_accuracy(rm, held_out, held_encoded)  # a resume at the very end
        _print_result(stage.name, result)
        write_text_atomic(run_dir / EVAL_FILE, json.dumps(result, indent=2))
    return save_final(trainer, run_dir / "model")


def _print_result(name: str, result: dict[str, Any]) -> None:
    kinds = ", ".join(f"{k} {v['accuracy']:.2f}" for k, v in result["by_rejected_kind"].items())
    console.print(
        f"[{name}] held-out pairwise accuracy {result['accuracy']:.3f} over {result['pairs']} pairs "
        f"(mean margin {result['margin']:.3f}); by rejected kind: {kinds}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
