"""Our MOPD step vs TRL ``DistillationTrainer``: step time on the same student, teacher and batches.

Part of ``bench/mopd_vs_grpo.py`` (see ``time_vs_trl``); import it after the repository root is on ``sys.path``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench._common import (
    DTYPE,
    ROOT,
    TOKEN_BUDGET,
    RecordingPool,
    clocks,
    print_table,
    quiet,
    short,
    step_clock,
    trl_cpu_args,
)
from cascade_rl.chat import encode_prompt, render
from cascade_rl.config import EngineConfig, ModelConfig, MOPDStage
from cascade_rl.data.build import prompts_for
from cascade_rl.engines.backend import LocalBackend
from cascade_rl.engines.base import Scorer
from cascade_rl.loops.common import set_seed
from cascade_rl.loops.objectives import TeacherRouter
from cascade_rl.loops.rl import build_objective, update
from cascade_rl.loops.rollout import Rollouts
from cascade_rl.rewards.reward_fn import VerifierReward
from cascade_rl.types import Prompt


@dataclass
class Timing:
    """Per-step measurements of one system."""

    name: str
    cpu: list[float] = field(default_factory=list)  # whole optimizer step
    wall: list[float] = field(default_factory=list)
    rollout_cpu: list[float] = field(default_factory=list)  # generation (+ our reward verification)
    tokens: list[int] = field(default_factory=list)  # prompt + completion tokens trained on
    completion_tokens: list[int] = field(default_factory=list)

    def summary(self, warmup: int) -> dict[str, float]:
        """Means per timed step (the first ``warmup`` steps left out) and token rates."""

        def mean(values: Sequence[float]) -> float:
            return statistics.fmean(values[warmup:])

        cpu, tokens = sum(self.cpu[warmup:]), sum(self.tokens[warmup:])
        return {
            "steps": len(self.cpu) - warmup,
            "cpu": mean(self.cpu),
            "wall": mean(self.wall),
            "rollout_cpu": mean(self.rollout_cpu),
            "update_cpu": mean(self.cpu) - mean(self.rollout_cpu),
            "tokens": mean(self.tokens),
            "completion_tokens": mean(self.completion_tokens),
            "tok_s": tokens / cpu,
            "tok_s_wall": tokens / sum(self.wall[warmup:]),
        }


def _backend(model: Path) -> LocalBackend:
    return LocalBackend(EngineConfig(microbatch_tokens=TOKEN_BUDGET), ModelConfig(spec=str(model), dtype=DTYPE))


def time_ours(stage: MOPDStage, student: Path, teacher: Scorer, steps: int) -> tuple[Timing, list[list[Prompt]], Any]:
    """Our MOPD step (``run_rl``'s loop body) with one teacher for every domain."""
    backend = _backend(student)
    tokenizer = backend.tokenizer(student)
    set_seed(stage.seed)
    pool = RecordingPool([prompts_for(c, "rl") for c in stage.prompts], [c.weight for c in stage.prompts])
    router = TeacherRouter({"teacher": teacher}, default="teacher")
    objective = build_objective(stage, router)
    policy = backend.policy(student, stage.optim, steps)
    generator = backend.generator(policy)
    rollouts = Rollouts(stage, pool, generator, tokenizer, VerifierReward(), objective.filters_constant_groups)
    timing = Timing("ours (cascade_rl MOPD)")
    for step in range(steps):
        wall, cpu = clocks()
        groups, _ = rollouts.collect(step)
        rollout_cpu = time.process_time() - cpu
        update(policy, objective, groups, stage, None)
        generator.sync(policy, step + 1)
        trajectories = [t for g in groups for t in g.trajectories]
        timing.wall.append(time.perf_counter() - wall)
        timing.cpu.append(time.process_time() - cpu)
        timing.rollout_cpu.append(rollout_cpu)
        timing.tokens.append(sum(len(t.tokens) for t in trajectories))
        timing.completion_tokens.append(sum(t.model_tokens for t in trajectories))
    assert len(pool.drawn) == steps, "no dynamic filtering in MOPD: one sampling round per step"
    return timing, pool.drawn, tokenizer


def trl_trainer(stage: MOPDStage, student: Path, teacher: Path, texts: list[str], out_dir: str, seed: int) -> Any:
    """TRL ``DistillationTrainer`` configured as our MOPD step, timing every optimizer step."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DistillationConfig, DistillationTrainer

    class Timed(DistillationTrainer):
        """Records the rollout phase and the trained tokens of every step."""

        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, **kw)
            self.bench = Timing("TRL DistillationTrainer")
            self.pending_rollout = 0.0
            self.pending_tokens = [0, 0]

        def _generate_and_score_completions(self, inputs: Any) -> Any:
            cpu = time.process_time()
            out = super()._generate_and_score_completions(inputs)
            self.pending_rollout += time.process_time() - cpu
            return out

        def compute_loss(self, model: Any, inputs: dict[str, Any], *a: Any, **kw: Any) -> Any:
            completion = int(inputs["completion_mask"].sum())
            self.pending_tokens[0] += int(inputs["prompt_mask"].sum()) + completion
            self.pending_tokens[1] += completion
            return super().compute_loss(model, inputs, *a, **kw)

        def end_step(self, wall: float, cpu: float) -> None:
            """One optimizer step done (``wall`` / ``cpu`` seconds): record it with its rollout time and tokens."""
            self.bench.wall.append(wall)
            self.bench.cpu.append(cpu)
            self.bench.rollout_cpu.append(self.pending_rollout)
            self.bench.tokens.append(self.pending_tokens[0])
            self.bench.completion_tokens.append(self.pending_tokens[1])
            self.pending_rollout, self.pending_tokens = 0.0, [0, 0]

    tokenizer = AutoTokenizer.from_pretrained(student)
    model = AutoModelForCausalLM.from_pretrained(student, dtype=torch.float32)
    teacher_model = AutoModelForCausalLM.from_pretrained(teacher, dtype=torch.float32)
    batch = stage.prompts_per_step * stage.group_size
    config = DistillationConfig(
        output_dir=out_dir,
        max_steps=len(texts) // batch,
        per_device_train_batch_size=batch,  # the whole step's completions in one micro-batch
        gradient_accumulation_steps=1,  # one generation batch = one optimizer step (on-policy)
        max_completion_length=stage.max_new_tokens,
        temperature=stage.temperature,
        top_p=stage.top_p,
        top_k=stage.top_k,
        beta=1.0,  # generalized JSD with beta = 1: reverse KL(student || teacher), full vocabulary
        shuffle_dataset=False,  # prompts in our pool's order
        use_vllm=False,
        # no gradient checkpointing (ours does not recompute activations in backward), constant LR, AdamW as ours
        **trl_cpu_args(lr=stage.optim.lr, betas=stage.optim.betas, grad_clip=stage.optim.grad_clip, seed=seed),
    )
    # Plain-text prompts (our rendered chat, generation prompt included): the tool-calling prompts carry
    # their tool list in the system turn, which TRL's per-trainer ``tools`` cannot express per prompt.
    dataset = Dataset.from_dict({"prompt": texts})
    trainer = Timed(
        model=model, teacher_model=teacher_model, args=config, train_dataset=dataset, processing_class=tokenizer
    )
    trainer.add_callback(step_clock(trainer.end_step))
    torch.set_num_threads(1)  # Trainer setup may touch it; both systems run on one thread
    return trainer


def time_vs_trl(mopd: MOPDStage, student: Path, teacher_dir: Path, steps: int, warmup: int, tmp: Path) -> float:
    """Ours vs TRL: same student, teacher, prompts, completions per prompt, max new tokens, LR, on CPU.

    ``mopd`` is the recipe's MOPD stage, ``student`` the checkpoint it started from; prints the step-time
    table and returns ours / TRL total tokens per CPU second."""
    # Truncated completions are trained on by both (TRL has no overlong filter), so both do the same work.
    stage = mopd.model_copy(update={"steps": steps, "overlong_filtering": False})
    teacher = _backend(teacher_dir).scorer(teacher_dir)
    ours, drawn, tokenizer = time_ours(stage, student, teacher, steps)
    del teacher
    # TRL generates one completion per dataset row: each prompt appears group_size times in a row.
    prompts = [p for step_prompts in drawn for p in step_prompts]
    texts = [
        render(list(p.messages), p.tools, add_generation_prompt=True, enable_thinking=stage.thinking)
        for p in prompts
        for _ in range(stage.group_size)
    ]
    with quiet():
        trainer = trl_trainer(stage, student, teacher_dir, texts, str(tmp / "trl"), stage.seed)
    trl_ids, _, _ = trainer._tokenize_prompts(texts[:: stage.group_size])  # TRL's own prompt path
    for p, ids in zip(prompts, trl_ids, strict=True):
        assert list(ids) == encode_prompt(tokenizer, list(p.messages), p.tools, enable_thinking=stage.thinking), p.uid
    assert trainer.eos_token_ids == [tokenizer.eos_token_id], (trainer.eos_token_ids, tokenizer.eos_token_id)
    with quiet():
        trainer.train()
    return print_step_times(
        stage, student, teacher_dir, len(prompts), tokenizer.eos_token_id, (ours, trainer.bench), warmup
    )


def print_step_times(
    stage: MOPDStage,
    student: Path,
    teacher_dir: Path,
    n_prompts: int,
    eos_id: int,
    timings: tuple[Timing, Timing],
    warmup: int,
) -> float:
    """The step-time table of (ours, TRL) and the ours / TRL ratios; returns the tokens-per-CPU-s ratio."""
    ours, trl = timings
    steps, threads = len(ours.cpu), torch.get_num_threads()
    print(
        f"\n== MOPD step time, ours vs TRL {_trl_version()} DistillationTrainer (fp32, CPU, torch threads {threads}): "
        f"{steps} steps ({warmup} warm-up not timed), {stage.prompts_per_step} prompts x {stage.group_size} "
        f"completions, <= {stage.max_new_tokens} new tokens, T={stage.temperature} top_p={stage.top_p}, "
        f"lr {stage.optim.lr:g} constant"
    )
    print(f"student {short(student, ROOT)}; teacher {short(teacher_dir, ROOT)} for every domain (TRL takes one)")
    print(
        f"same {n_prompts} prompts in the same order (token ids checked equal, eos {eos_id}); "
        "TRL: beta=1.0 (reverse KL over the full vocabulary), always on-policy (trl 1.16 has no lmbda: the "
        "student generates every completion), one completion per dataset row (each prompt repeated "
        f"{stage.group_size}x), no vLLM, use_cpu, no gradient checkpointing, report_to=[]; "
        "ours: one-sample reverse-KL advantage + IcePop, reward verification included in the rollout phase, "
        "overlong filtering off (as TRL)"
    )
    header = [
        "system",
        "step cpu s",
        "step wall s",
        "rollout cpu s",
        "update cpu s",
        "compl tok/step",
        "total tok/step",
        "total tok/cpu-s",
        "total tok/wall-s",
    ]
    rows, sums = [], {}
    for t in (ours, trl):
        s = sums[t.name] = t.summary(warmup)
        rows.append(
            [
                t.name,
                f"{s['cpu']:.3f}",
                f"{s['wall']:.3f}",
                f"{s['rollout_cpu']:.3f}",
                f"{s['update_cpu']:.3f}",
                f"{s['completion_tokens']:.0f}",
                f"{s['tokens']:.0f}",
                f"{s['tok_s']:.0f}",
                f"{s['tok_s_wall']:.0f}",
            ]
        )
    print_table(header, rows)
    a, b = sums[ours.name], sums[trl.name]
    print(
        f"timing ours/TRL: step CPU time {a['cpu'] / b['cpu']:.2f} (lower is better), "
        f"update CPU time {a['update_cpu'] / b['update_cpu']:.2f}; "
        f"total tokens per CPU-s ours/TRL {a['tok_s'] / b['tok_s']:.2f} (higher is better)"
    )
    return a["tok_s"] / b["tok_s"]


def _trl_version() -> str:
    import trl

    return str(trl.__version__)
