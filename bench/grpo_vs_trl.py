"""GRPO throughput: our RL stage (``cascade_rl.loops.rl``) vs TRL ``GRPOTrainer``, same work, same process.

Both systems train the same tiny Qwen3 model (one ``build_tiny`` initialisation saved once with
``cascade_rl.model.save``, then loaded from that folder by each side, fp32, CPU, one torch thread)
with on-policy GRPO and no KL term:
  * the same prompts in the same order: every step's prompts are the ones our ``PromptPool`` drew,
    and TRL gets them as conversational prompts, unshuffled (its chat template is the one the saved
    tokenizer carries; the rendered text and prompt ids are checked equal to ours before timing);
  * the same reward: ``cascade_rl.rewards.verify`` on the raw completion text (ours through
    ``verify_batch``, TRL through a reward function wrapping ``verify``);
  * the same group size, prompts per step, max new tokens, temperature 1.0, top_p 1.0, top_k off,
    learning rate, AdamW betas, weight decay 0, grad clip 1.0, constant LR;
  * one optimizer update per generation batch: TRL with ``num_iterations=1``, one micro-batch of the
    whole generation batch (``per_device_train_batch_size = prompts x group``,
    ``gradient_accumulation_steps = steps_per_generation = 1``), ``loss_type="dapo"`` (token-level
    sum over the batch divided by its number of completion tokens: our GRPO reduction);
  * truncated completions stay in the loss on both sides (ours ``overlong_filtering=False``, TRL's
    default ``mask_truncated_completions=False``): a freshly initialised model rarely emits EOS, so
    with overlong filtering ours would skip most updates, which would not be the same work;
  * no dynamic filtering on our side (TRL does not resample constant-reward groups);
  * no gradient checkpointing, no bf16, no vLLM, ``use_cpu=True``.

Ours runs exactly the body of ``run_rl``'s loop: ``collect`` + ``update`` + ``generator.sync``.
Per step we record wall and process CPU time of the whole step and of its rollout phase (generate,
decode, verify: ours ``collect``, TRL ``_generate_and_score_completions``), and of generation alone.
Tokens are counted the same way on both sides:
  * rollout tokens = completion tokens generated (EOS included where sampled);
  * total tokens = prompt + completion tokens (no padding) of the sequences the update trains on.
The first ``--warmup`` steps of each system are not timed. Rates use process CPU seconds (stable on a
shared machine); wall-clock rates are printed too.

Usage: .venv/bin/python bench/grpo_vs_trl.py [--steps 6] [--prompts 8] [--group-size 8]
       [--max-new-tokens 32] [--warmup 2] [--lr 1e-5] [--profile]
The last line printed is ``ratio: X.XX`` = ours over TRL, total tokens per CPU second.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import logging
import os
import pstats
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import TOKEN_BUDGET, RecordingPool, clocks, print_table, quiet, step_clock, trl_cpu_args
from cascade_rl.chat import render
from cascade_rl.config import DataConfig, EngineConfig, ModelConfig, OptimConfig, RLStage
from cascade_rl.data.build import prompts_for
from cascade_rl.engines.backend import LocalBackend
from cascade_rl.engines.base import SamplingParams
from cascade_rl.engines.local import LocalGenerator, LocalPolicy
from cascade_rl.loops.common import set_seed
from cascade_rl.loops.objectives import Objective
from cascade_rl.loops.rl import build_objective, update
from cascade_rl.loops.rollout import Rollouts
from cascade_rl.model import build_tiny, load, save
from cascade_rl.model.tiny import default_corpus
from cascade_rl.rewards import verify
from cascade_rl.rewards.reward_fn import VerifierReward
from cascade_rl.types import Completion, Prompt, TrajectoryGroup

SEED = 0
BETAS = (0.9, 0.999)
MODEL = dict(vocab_size=1024, hidden_size=128, num_hidden_layers=4)


# --------------------------------------------------------------------------- bookkeeping


@dataclass
class Run:
    """Per-step measurements of one system."""

    name: str
    wall: list[float] = field(default_factory=list)  # whole optimizer step
    cpu: list[float] = field(default_factory=list)
    rollout_wall: list[float] = field(default_factory=list)  # generate + decode + reward
    rollout_cpu: list[float] = field(default_factory=list)
    gen_wall: list[float] = field(default_factory=list)  # sampling alone
    gen_cpu: list[float] = field(default_factory=list)
    completion_tokens: list[int] = field(default_factory=list)
    total_tokens: list[int] = field(default_factory=list)
    threads: set[int] = field(default_factory=set)

    def summary(self, warmup: int) -> dict[str, float]:
        def total(values: Sequence[float]) -> float:
            return float(sum(values[warmup:]))

        n = len(self.wall) - warmup
        comp, tot = total(self.completion_tokens), total(self.total_tokens)
        return {
            "steps": n,
            "step_wall": total(self.wall) / n,
            "step_cpu": total(self.cpu) / n,
            "rollout_cpu": total(self.rollout_cpu) / n,
            "gen_cpu": total(self.gen_cpu) / n,
            "update_cpu": (total(self.cpu) - total(self.rollout_cpu)) / n,
            "completion_tokens": comp / n,
            "total_tokens": tot / n,
            "gen_tok_s": comp / total(self.gen_cpu),
            "rollout_tok_s": comp / total(self.rollout_cpu),
            "total_tok_s": tot / total(self.cpu),
            "total_tok_s_wall": tot / total(self.wall),
            "rollout_tok_s_wall": comp / total(self.rollout_wall),
        }


# --------------------------------------------------------------------------- ours


class TimedGenerator(LocalGenerator):
    """``LocalGenerator`` that also records the wall / CPU time of every ``generate`` call."""

    def __init__(self, model: Any) -> None:
        super().__init__(model)
        self.wall = self.cpu = 0.0

    def generate(self, prompts: Sequence[list[int]], params: SamplingParams) -> list[list[Completion]]:
        wall, cpu = clocks()
        out = super().generate(prompts, params)
        self.wall += time.perf_counter() - wall
        self.cpu += time.process_time() - cpu
        return out


def make_stage(args: argparse.Namespace) -> RLStage:
    return RLStage(
        prompts=[DataConfig(task="math", n=args.pool)],
        steps=args.steps,
        prompts_per_step=args.prompts,
        group_size=args.group_size,
        max_new_tokens=args.max_new_tokens,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        dynamic_filtering=False,
        overlong_filtering=False,
        optim=OptimConfig(lr=args.lr, betas=BETAS, weight_decay=0.0, grad_clip=1.0),
        seed=SEED,
    )


@dataclass
class Ours:
    """Everything ``run_rl`` builds before its loop."""

    stage: RLStage
    tokenizer: Any
    pool: RecordingPool
    objective: Objective
    policy: LocalPolicy
    generator: TimedGenerator
    rollouts: Rollouts

    def step(self, step: int) -> list[TrajectoryGroup]:
        """One step of ``run_rl``'s loop (rollout half, learner half, sync); returns the trained groups."""
        groups, _ = self.rollouts.collect(step)
        update(self.policy, self.objective, groups, self.stage, None)
        self.generator.sync(self.policy, step + 1)
        return groups


def build_ours(model_dir: Path, args: argparse.Namespace) -> Ours:
    stage = make_stage(args)
    backend = LocalBackend(
        EngineConfig(microbatch_tokens=TOKEN_BUDGET), ModelConfig(spec=str(model_dir), dtype="float32")
    )
    tokenizer = backend.tokenizer(model_dir)
    set_seed(stage.seed)
    pool = RecordingPool([prompts_for(c, "rl") for c in stage.prompts], [c.weight for c in stage.prompts])
    policy = backend.policy(model_dir, stage.optim, stage.steps)
    generator = TimedGenerator(policy.model)  # shares the policy's module, as the backend's generator does
    objective = build_objective(stage, None)
    rollouts = Rollouts(stage, pool, generator, tokenizer, VerifierReward(), objective.filters_constant_groups)
    return Ours(stage, tokenizer, pool, objective, policy, generator, rollouts)


def run_ours(model_dir: Path, args: argparse.Namespace) -> tuple[Run, list[list[Prompt]]]:
    ours = build_ours(model_dir, args)
    run = Run(f"ours (cascade_rl.loops.rl, {ours.policy.layout} rows)")
    for step in range(args.steps):
        ours.generator.wall = ours.generator.cpu = 0.0
        wall, cpu = clocks()
        groups, _ = ours.rollouts.collect(step)
        rollout_wall, rollout_cpu = clocks()
        update(ours.policy, ours.objective, groups, ours.stage, None)
        ours.generator.sync(ours.policy, step + 1)
        end_wall, end_cpu = clocks()
        trajectories = [t for g in groups for t in g.trajectories]
        run.wall.append(end_wall - wall)
        run.cpu.append(end_cpu - cpu)
        run.rollout_wall.append(rollout_wall - wall)
        run.rollout_cpu.append(rollout_cpu - cpu)
        run.gen_wall.append(ours.generator.wall)
        run.gen_cpu.append(ours.generator.cpu)
        run.completion_tokens.append(sum(t.model_tokens for t in trajectories))
        run.total_tokens.append(sum(len(t.tokens) for t in trajectories))
        run.threads.add(torch.get_num_threads())
    assert len(ours.pool.drawn) == args.steps, "dynamic filtering is off: one sampling round per step"
    return run, ours.pool.drawn


# --------------------------------------------------------------------------- TRL


def verify_reward(eos_id: int, tokenizer: Any) -> Callable[..., list[float]]:
    """A TRL reward function scoring the raw completion text with ``cascade_rl.rewards.verify``."""

    def cascade_verify(
        prompts: list[Any], completions: list[Any], completion_ids: list[list[int]], spec: list[str], **_: Any
    ) -> list[float]:
        scores = []
        for ids, raw_spec in zip(completion_ids, spec, strict=True):
            text = tokenizer.decode(ids, skip_special_tokens=False)  # what our loop verifies
            truncated = not ids or ids[-1] != eos_id
            scores.append(verify(text, json.loads(raw_spec), truncated=truncated, thinking=False).score)
        return scores

    return cascade_verify


def trl_config(args: argparse.Namespace, max_steps: int, out_dir: str) -> Any:
    """``GRPOConfig`` for the same work as our stage (see the module docstring)."""
    from trl import GRPOConfig

    return GRPOConfig(
        output_dir=out_dir,
        max_steps=max_steps,
        per_device_train_batch_size=args.prompts * args.group_size,  # the whole generation batch in one micro-batch
        gradient_accumulation_steps=1,
        steps_per_generation=1,  # one generation batch = one optimizer step
        num_iterations=1,  # strictly on-policy
        num_generations=args.group_size,
        max_completion_length=args.max_new_tokens,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        beta=0.0,
        loss_type="dapo",
        scale_rewards="group",
        mask_truncated_completions=False,
        shuffle_dataset=False,  # prompts in our pool's order
        chat_template_kwargs={"enable_thinking": False},  # our stage's thinking=False generation prompt
        use_vllm=False,
        # no gradient checkpointing (ours does not recompute activations in backward), constant LR, AdamW as ours
        **trl_cpu_args(lr=args.lr, betas=BETAS, grad_clip=1.0, seed=SEED),
    )


def trl_trainer(model_dir: Path, steps: list[list[Prompt]], args: argparse.Namespace, out_dir: str) -> Any:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOTrainer

    class Timed(GRPOTrainer):
        """Records the rollout phase, generation and the trained tokens of every step."""

        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, **kw)
            self.bench = Run("TRL GRPOTrainer")
            self.pending = {"rollout_wall": 0.0, "rollout_cpu": 0.0, "gen_wall": 0.0, "gen_cpu": 0.0}
            self.pending_tokens = [0, 0]

        def _generate_and_score_completions(self, inputs: Any) -> Any:
            wall, cpu = clocks()
            out = super()._generate_and_score_completions(inputs)
            self.pending["rollout_wall"] += time.perf_counter() - wall
            self.pending["rollout_cpu"] += time.process_time() - cpu
            return out

        def _generate_single_turn(self, *a: Any, **kw: Any) -> Any:
            wall, cpu = clocks()
            out = super()._generate_single_turn(*a, **kw)
            self.pending["gen_wall"] += time.perf_counter() - wall
            self.pending["gen_cpu"] += time.process_time() - cpu
            return out

        def compute_loss(self, model: Any, inputs: dict[str, Any], *a: Any, **kw: Any) -> Any:
            completion = int(inputs["completion_mask"].sum())
            self.pending_tokens[0] += completion
            self.pending_tokens[1] += int(inputs["prompt_mask"].sum()) + completion
            return super().compute_loss(model, inputs, *a, **kw)

        def end_step(self, wall: float, cpu: float) -> None:
            """One optimizer step done (``wall`` / ``cpu`` seconds): record it with its phases and tokens."""
            run = self.bench
            run.wall.append(wall)
            run.cpu.append(cpu)
            for name, value in self.pending.items():
                getattr(run, name).append(value)
                self.pending[name] = 0.0
            run.completion_tokens.append(self.pending_tokens[0])
            run.total_tokens.append(self.pending_tokens[1])
            self.pending_tokens = [0, 0]
            run.threads.add(torch.get_num_threads())

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    dataset = Dataset.from_dict(
        {
            "prompt": [[dict(m) for m in p.messages] for prompts in steps for p in prompts],
            "spec": [json.dumps(p.spec) for prompts in steps for p in prompts],
        }
    )
    trainer = Timed(
        model=model,
        reward_funcs=[verify_reward(tokenizer.eos_token_id, tokenizer)],
        args=trl_config(args, len(steps), out_dir),
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    trainer.add_callback(step_clock(trainer.end_step))
    torch.set_num_threads(1)
    return trainer


def check_same_prompts(trainer: Any, ours_tokenizer: Any, steps: list[list[Prompt]]) -> int:
    """TRL renders and tokenizes every prompt exactly as our loop does; returns how many were checked."""
    from cascade_rl.chat import encode_prompt

    prompts = {p.uid: p for prompts in steps for p in prompts}.values()
    messages = [[dict(m) for m in p.messages] for p in prompts]
    trl_ids, _, _ = trainer._tokenize_prompts(messages)  # TRL's own prompt path
    for p, conversation, ids in zip(prompts, messages, trl_ids, strict=True):
        ours_text = render(list(p.messages), p.tools, add_generation_prompt=True, enable_thinking=False)
        trl_text = trainer.processing_class.apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=True, enable_thinking=False
        )
        assert trl_text == ours_text, f"chat template mismatch:\n{trl_text!r}\n{ours_text!r}"
        ours_ids = encode_prompt(ours_tokenizer, list(p.messages), p.tools, enable_thinking=False)
        assert list(ids) == ours_ids, f"prompt ids differ for {p.uid}"
    assert trainer.eos_token_ids == [ours_tokenizer.eos_token_id], trainer.eos_token_ids
    return len(messages)


def run_trl(model_dir: Path, steps: list[list[Prompt]], args: argparse.Namespace, out_dir: str) -> tuple[Run, int]:
    _, ours_tokenizer = load(model_dir, dtype="float32")
    with quiet():
        trainer = trl_trainer(model_dir, steps, args, out_dir)
    checked = check_same_prompts(trainer, ours_tokenizer, steps)
    with quiet():
        trainer.train()
    return trainer.bench, checked


# --------------------------------------------------------------------------- profile


def print_stats(title: str, profiler: cProfile.Profile, sort: str, limit: int) -> None:
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats(sort).print_stats(limit)
    print(f"\n== {title}")
    lines = text.getvalue().splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls"))
    print("\n".join(line for line in lines[start:] if line.strip()))


def profile(model_dir: Path, args: argparse.Namespace, out_dir: str) -> None:
    """cProfile of post-warm-up steps: ours step by step, TRL over a whole (short) run."""
    ours = build_ours(model_dir, args)
    for step in range(args.warmup):
        ours.step(step)
    py = cProfile.Profile()
    py.enable()
    for step in range(args.warmup, args.warmup + 2):
        ours.step(step)
    py.disable()
    print_stats("profile, ours, 2 steps: by cumulative time", py, "cumulative", 35)
    print_stats("profile, ours, 2 steps: by own time", py, "tottime", 20)

    with quiet():
        trainer = trl_trainer(model_dir, ours.pool.drawn[: args.warmup + 2], args, out_dir)
    py = cProfile.Profile()
    with quiet():
        py.enable()
        trainer.train()
        py.disable()
    print_stats(f"profile, TRL, {args.warmup + 2} steps incl. warm-up: by cumulative time", py, "cumulative", 35)


def print_results(ours: Run, trl: Run, args: argparse.Namespace, n_params: int, checked: int) -> None:
    """The per-step table of both systems, the ours / TRL ratios and the final ``ratio:`` line."""
    print(
        f"\n== GRPO, tiny qwen3 ({n_params / 1e6:.2f}M params, fp32, CPU, torch threads "
        f"{sorted(ours.threads | trl.threads)}): {args.steps} steps ({args.warmup} warm-up not timed), "
        f"{args.prompts} prompts x {args.group_size} completions, <= {args.max_new_tokens} new tokens, "
        f"T=1.0 top_p=1.0, lr {args.lr:g}"
    )
    print(f"prompts: same {args.prompts * args.steps} math prompts in the same order; {checked} distinct checked equal")
    header = [
        "system",
        "step wall s",
        "step cpu s",
        "rollout cpu s",
        "gen cpu s",
        "update cpu s",
        "compl tok/step",
        "total tok/step",
        "gen tok/cpu-s",
        "rollout tok/cpu-s",
        "total tok/cpu-s",
        "total tok/wall-s",
    ]
    rows = []
    summaries = {}
    for run in (ours, trl):
        s = summaries[run.name] = run.summary(args.warmup)
        rows.append(
            [
                run.name,
                f"{s['step_wall']:.3f}",
                f"{s['step_cpu']:.3f}",
                f"{s['rollout_cpu']:.3f}",
                f"{s['gen_cpu']:.3f}",
                f"{s['update_cpu']:.3f}",
                f"{s['completion_tokens']:.0f}",
                f"{s['total_tokens']:.0f}",
                f"{s['gen_tok_s']:.0f}",
                f"{s['rollout_tok_s']:.0f}",
                f"{s['total_tok_s']:.0f}",
                f"{s['total_tok_s_wall']:.0f}",
            ]
        )
    print_table(header, rows)
    a, b = summaries[ours.name], summaries[trl.name]
    print(
        f"ours / TRL: rollout tok/cpu-s {a['rollout_tok_s'] / b['rollout_tok_s']:.2f}x, "
        f"gen tok/cpu-s {a['gen_tok_s'] / b['gen_tok_s']:.2f}x, "
        f"update cpu s/step {b['update_cpu'] / a['update_cpu']:.2f}x faster, "
        f"total tok/wall-s {a['total_tok_s_wall'] / b['total_tok_s_wall']:.2f}x"
    )
    print(f"ratio: {a['total_tok_s'] / b['total_tok_s']:.2f}")


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per system (warm-up included)")
    parser.add_argument("--prompts", type=int, default=8, help="prompts per step")
    parser.add_argument("--group-size", type=int, default=8, help="completions per prompt (num_generations)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=2, help="first steps not timed")
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--pool", type=int, default=256, help="math train prompts to sample from")
    parser.add_argument("--profile", action="store_true", help="also cProfile a few steps of each system")
    args = parser.parse_args()
    if args.steps <= args.warmup:
        parser.error("--steps must exceed --warmup")
    if args.group_size < 2:
        parser.error("--group-size must be at least 2 (TRL requirement)")

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("trl").setLevel(logging.ERROR)
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "tiny"
        model, tokenizer = build_tiny("qwen3", seed=SEED, corpus=default_corpus(n_per_domain=40), **MODEL)
        save(model, tokenizer, model_dir)
        n_params = sum(p.numel() for p in model.parameters())
        del model

        ours, drawn = run_ours(model_dir, args)
        trl, checked = run_trl(model_dir, drawn, args, str(Path(tmp) / "trl"))
        if args.profile:
            profile(model_dir, args, str(Path(tmp) / "trl_profile"))

    print_results(ours, trl, args, n_params, checked)


if __name__ == "__main__":
    main()
