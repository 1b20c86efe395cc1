"""MOPD step time: ours vs TRL ``DistillationTrainer`` on the same student, teacher and prompts.

Runs from a fresh clone with no earlier run: it builds a tiny qwen3 student and a teacher of the
same shape and tokenizer (two seeds of one ``build_tiny`` configuration, saved as HF folders), then
times ``bench/_mopd_step_time.time_vs_trl``: our MOPD step (``run_rl``'s loop body: rollout half,
learner half with the teacher's per-token scores, weight sync) against TRL's on-policy distillation
step (reverse KL, the student generating every completion), on the same prompts in the same order,
fp32, CPU, one torch thread.

Usage: .venv/bin/python bench/mopd_vs_trl.py [--steps 5] [--warmup 1] [--prompts 16] [--group-size 4]
The last line printed is ``ratio: X.XX`` = ours over TRL, total (prompt + completion) tokens per CPU second.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import DEMO_TINY, quiet
from bench._mopd_step_time import time_vs_trl
from cascade_rl.config import DataConfig, MOPDStage, OptimConfig
from cascade_rl.model.load import save
from cascade_rl.model.tiny import build_tiny


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per system (warm-up included)")
    parser.add_argument("--warmup", type=int, default=1, help="first steps of each system not timed")
    parser.add_argument("--prompts", type=int, default=16, help="prompts per step")
    parser.add_argument("--group-size", type=int, default=4, help="completions per prompt (4 published)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()
    if args.steps <= args.warmup:
        parser.error("--steps must exceed --warmup")

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("trl").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        with quiet():
            student, tokenizer = build_tiny("qwen3", seed=0, vocab_size=1024, **DEMO_TINY)
            teacher, _ = build_tiny(
                "qwen3", seed=1, vocab_size=1024, **DEMO_TINY
            )  # the same tokenizer is trained again
            save(student, tokenizer, tmp / "student")
            save(teacher, tokenizer, tmp / "teacher")
        stage = MOPDStage(
            prompts=[DataConfig(task="instruct", n=500), DataConfig(task="math", n=500)],
            steps=args.steps,
            prompts_per_step=args.prompts,
            group_size=args.group_size,
            max_new_tokens=args.max_new_tokens,
            # constant lr, as TRL's side runs it
            optim=OptimConfig(lr=1e-4, warmup_steps=0, betas=(0.9, 0.999), weight_decay=0.0),
        )
        ratio = time_vs_trl(stage, tmp / "student", tmp / "teacher", args.steps, args.warmup, tmp)
    print(f"ratio: {ratio:.2f}")


if __name__ == "__main__":
    main()
