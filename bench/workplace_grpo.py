"""Agentic RL on a tiny model: SFT on workplace episodes, then GRPO over multi-turn episodes with executed tools.

Runs from a fresh clone, one command: builds a tiny qwen3 (its BPE trained on the procedural domains),
SFTs it on scripted workplace episodes (tool calls, tool responses, final answers), evaluates the
held-out (test split) workplace score, runs GRPO on workplace prompts (episodes stepped through the
workplace environment, rewards from its final state), and evaluates again on the same prompts. It
prints both scores with their standard errors over prompts, the paired gain, and the rollout
throughput of the multi-turn episodes (model turns per second, every active episode advancing in one
batched generate call per turn) against single-turn generation on the same model and prompts count.

Usage: .venv/bin/python bench/workplace_grpo.py [--sft-steps 900] [--rl-steps 40] [--eval-n 200] [--out DIR]
The last line printed is ``ratio: X.XX`` = multi-turn model turns per second / single-turn completions per second.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import DEMO_TINY
from cascade_rl.config import DataConfig, EngineConfig, EvalConfig, ModelConfig, OptimConfig, RLStage, SFTStage
from cascade_rl.data.build import prompts_for
from cascade_rl.engines.backend import LocalBackend
from cascade_rl.engines.base import SamplingParams
from cascade_rl.eval.runner import evaluate
from cascade_rl.logging import read_metrics
from cascade_rl.loops.episodes import Budget, EpisodeRunner
from cascade_rl.loops.rl import run_rl
from cascade_rl.loops.rollout import PromptEncoder
from cascade_rl.loops.sft import run_sft

MAX_TURN_TOKENS = 48
MAX_TURNS = 6


def held_out(backend: LocalBackend, folder: Path, n: int, samples_file: Path) -> tuple[float, float, dict[str, float]]:
    """(avg@4, its standard error over prompts, per-prompt means) on the workplace test split."""
    config = EvalConfig(
        domains=[DataConfig(task="workplace", n=n)],
        samples=4,
        max_new_tokens=MAX_TURN_TOKENS,
        max_turns=MAX_TURNS,
        temperature=1.0,
        batch_size=256,
    )
    (score,) = evaluate(
        backend.eval_generator(folder, 256), backend.tokenizer(folder), config, samples_file=samples_file
    )
    per_prompt: dict[str, list[float]] = {}
    for line in samples_file.read_text(encoding="utf-8").split("\n"):
        if line:
            row = json.loads(line)
            per_prompt.setdefault(row["uid"], []).append(row["score"])
    print(
        f"  {folder.parent.name}: workplace avg@4 {score.avg:.3f} (se {score.stderr:.3f}), {score.turns:.2f} turns "
        f"and {score.tool_errors:.2f} tool errors per episode, truncated {score.truncation_rate:.1%}",
        flush=True,
    )
    return score.avg, score.stderr, {u: statistics.fmean(v) for u, v in per_prompt.items()}


def throughput(backend: LocalBackend, folder: Path, prompts: int) -> tuple[float, float]:
    """(multi-turn model turns per second, single-turn completions per second) of the same model."""
    tokenizer = backend.tokenizer(folder)
    generator = backend.eval_generator(folder, 256)
    params = SamplingParams(n=4, max_new_tokens=MAX_TURN_TOKENS, stop_token_ids=(tokenizer.eos_token_id,), seed=0)
    agentic = prompts_for(DataConfig(task="workplace", n=prompts), "rl")
    runner = EpisodeRunner(generator, tokenizer, False, Budget(max_turns=MAX_TURNS))
    started = time.perf_counter()
    groups = runner.run(agentic, PromptEncoder(tokenizer), params)
    turns = sum(len(t.turns) for g in groups for t in g.trajectories) / (time.perf_counter() - started)
    single = prompts_for(DataConfig(task="tool_call", n=prompts), "rl")
    encode = PromptEncoder(tokenizer)
    started = time.perf_counter()
    generator.generate([encode(p, p.messages, False) for p in single], params)
    completions = len(single) * params.n / (time.perf_counter() - started)
    return turns, completions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sft-steps", type=int, default=900)
    parser.add_argument("--rl-steps", type=int, default=40)
    parser.add_argument("--lr", type=float, default=1e-4, help="GRPO learning rate")
    parser.add_argument("--eval-n", type=int, default=200, help="held-out workplace prompts")
    parser.add_argument("--out", type=Path, default=None, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = args.out or Path(tempfile.mkdtemp(prefix="workplace-grpo-"))
    backend = LocalBackend(EngineConfig(decode_batch=256), ModelConfig(spec="tiny:qwen3", seed=0, tiny=DEMO_TINY))
    # tool_call (single calls, arguments copied from the request) beside workplace: copying names and values
    # into calls is what a model this small learns last, and both domains need it
    sft = SFTStage(
        data=[
            DataConfig(task="workplace", n=3000, thinking="off"),
            DataConfig(task="tool_call", n=800, thinking="off"),
        ],
        pack_length=2048,
        packs_per_step=4,
        max_steps=args.sft_steps,
        optim=OptimConfig(lr=3e-3, min_lr=3e-4, warmup_steps=20, weight_decay=0.0),
        save_every=10_000,
    )
    started = time.perf_counter()
    sft_folder = run_sft(sft, backend, "tiny:qwen3", out / "sft")
    print(f"SFT: {args.sft_steps} steps in {time.perf_counter() - started:.0f} s", flush=True)
    before, se_before, prompts_before = held_out(backend, sft_folder, args.eval_n, out / "sft_eval.jsonl")
    rl = RLStage(
        name="grpo",
        prompts=[DataConfig(task="workplace", n=3000)],
        steps=args.rl_steps,
        prompts_per_step=16,
        group_size=8,
        max_new_tokens=MAX_TURN_TOKENS,
        max_turns=MAX_TURNS,
        overlong_filtering=False,  # running out of turns or tokens is a failed task here
        optim=OptimConfig(lr=args.lr, warmup_steps=5, warmup_start_lr=args.lr / 10),
        save_every=10_000,
    )
    started = time.perf_counter()
    rl_folder = run_rl(rl, backend, sft_folder, out / "grpo")
    rewards = [r["reward"] for r in read_metrics(out / "grpo")]
    first, last = statistics.fmean(rewards[:10]), statistics.fmean(rewards[-10:])
    print(
        f"GRPO: {args.rl_steps} steps in {time.perf_counter() - started:.0f} s; "
        f"rollout reward first 10 steps {first:.3f} -> last 10 {last:.3f}",
        flush=True,
    )
    after, se_after, prompts_after = held_out(backend, rl_folder, args.eval_n, out / "grpo_eval.jsonl")
    diffs = [prompts_after[u] - prompts_before[u] for u in prompts_before]
    paired = statistics.stdev(diffs) / math.sqrt(len(diffs))
    print(
        f"held-out workplace: SFT {before:.3f} (se {se_before:.3f}) -> GRPO {after:.3f} (se {se_after:.3f}); "
        f"gain {after - before:+.3f} (paired se {paired:.3f})"
    )
    turns_s, single_s = throughput(backend, rl_folder, 64)
    print(
        f"rollout throughput on the GRPO model: {turns_s:.1f} model turns/s in multi-turn workplace episodes vs "
        f"{single_s:.1f} completions/s of single-turn tool_call prompts "
        f"(64 prompts x 4, <= {MAX_TURN_TOKENS} tokens each)"
    )
    print(f"runs: {out}")
    print(f"ratio: {turns_s / single_s:.2f}")


if __name__ == "__main__":
    main()
