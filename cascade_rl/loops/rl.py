"""The one RL stage loop: rollout half -> learner half -> weight sync, once per step.

GRPO-family RL and MOPD run through this same loop; the objective (``loops.objectives``) is chosen
by the stage. One optimizer update per rollout batch, strictly on-policy as published, unless the stage
sets ``max_staleness`` (asynchronous rollouts, ``loops.rollout_queue``). The engines
come from the backend the loop is handed; nothing here knows which engine runs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from cascade_rl.config import MOPDStage, RLStage
from cascade_rl.data.build import prompts_for
from cascade_rl.engines.backend import Backend, ModelSource
from cascade_rl.engines.base import Policy, Scorer, TrainBatch
from cascade_rl.files import write_text_atomic
from cascade_rl.logging import MetricsLogger, console, progress_bar, read_metrics
from cascade_rl.loops.common import NonFiniteGuard, checkpoint, resume, save_final, set_seed
from cascade_rl.loops.curriculum import Curriculum
from cascade_rl.loops.objectives import OBJECTIVES, Objective, ObjectiveSettings, TeacherRouter, per_domain_means
from cascade_rl.loops.rollout import PromptPool, Rollouts
from cascade_rl.loops.rollout_queue import AsyncRollouts, Lockstep, RolloutSource
from cascade_rl.rewards.reward_fn import RewardContext, VerifierReward, build_reward
from cascade_rl.types import TrajectoryGroup


def objective_name(stage: RLStage | MOPDStage) -> str:
    return "mopd" if isinstance(stage, MOPDStage) else stage.advantage


def build_objective(stage: RLStage | MOPDStage, teachers: TeacherRouter | None) -> Objective:
    settings = ObjectiveSettings(
        icepop=stage.icepop,
        kl_coef=stage.kl_coef,
        overlong_filtering=stage.overlong_filtering,
        temperature=stage.temperature,
        reduction=getattr(stage, "reduction", "seq_mean"),
        reward_weight=getattr(stage, "reward_weight", 0.0),
        clip=getattr(stage, "clip", (0.2, 0.2)),
        tis_cap=getattr(stage, "tis_cap", 2.0),
    )
    return OBJECTIVES[objective_name(stage)].factory(settings, teachers=teachers)


def update(
    policy: Policy,
    objective: Objective,
    groups: Sequence[TrajectoryGroup],
    stage: RLStage | MOPDStage,
    reference: Scorer | None,
) -> dict[str, float]:
    """The learner half: one optimizer step on the groups (token ids and numbers only)."""
    seqs = objective.sequences(groups)
    domains = sorted({t.domain for g in groups for t in g.trajectories})
    for seq, domain in zip(seqs, (t.domain for g in groups for t in g.trajectories), strict=True):
        seq.values["domain_id"] = [float(domains.index(domain))] * len(seq.tokens)
    if reference is not None:
        for seq, lp in zip(seqs, reference.logprobs(seqs, stage.temperature), strict=True):
            seq.values["ref_logprobs"] = lp
    num_tokens = float(sum(sum(s.mask) for s in seqs))
    if num_tokens == 0:  # every response overlong-filtered: no update, but the schedule keeps its pace
        return policy.optim_step()
    batch = TrainBatch(seqs, num_tokens, float(sum(any(s.mask) for s in seqs)), temperature=stage.temperature)
    metrics = policy.forward_backward(batch, objective.loss, objective.loss_config())
    return per_domain_means(metrics, domains) | policy.optim_step()


def run_rl(
    stage: RLStage | MOPDStage,
    backend: Backend,
    start: ModelSource,
    run_dir: Path,
    *,
    teachers: TeacherRouter | None = None,
    logger: MetricsLogger | None = None,
) -> Path:
    """Train from ``start`` (resuming from ``run_dir``'s checkpoints); returns the trained model folder."""
    run_dir.mkdir(parents=True, exist_ok=True)
    set_seed(stage.seed)
    tokenizer = backend.tokenizer(start)
    pool = PromptPool([prompts_for(c, "rl") for c in stage.prompts], [c.weight for c in stage.prompts])
    objective = build_objective(stage, teachers)
    reward_fn = build_reward(stage.reward.type, RewardContext(stage.reward_workers, backend), **stage.reward.args)
    reference = backend.scorer(start) if stage.kl_coef > 0 else None  # the stage's initial policy, frozen
    policy = backend.policy(start, stage.optim, stage.steps)
    generator = backend.generator(policy, separate=stage.max_staleness > 0)  # async: sampling while training
    first = resume(run_dir, policy, stage.name, stage.steps)
    pool.curriculum = load_curriculum(stage, run_dir, first)
    monitor = (
        VerifierReward(workers=stage.reward_workers)
        if stage.reward.type != "verifier" and stage.reward.monitor
        else None
    )
    rollouts = Rollouts(stage, pool, generator, tokenizer, reward_fn, objective.filters_constant_groups, monitor)
    source: RolloutSource = (
        AsyncRollouts(rollouts, generator, range(first, stage.steps), stage.max_staleness)
        if stage.max_staleness > 0
        else Lockstep(rollouts, generator)
    )
    source.start(policy, first)
    guard = NonFiniteGuard(stage.name, stage.max_nonfinite_steps, run_dir)
    own_logger = logger is None
    logger = logger or MetricsLogger(run_dir)
    try:
        with progress_bar(stage.steps, f"{stage.type}:{stage.name}") as bar:
            bar.update(advance=first)
            for step in range(first, stage.steps):
                t0 = time.perf_counter()
                groups, metrics = source.get(step)
                metrics |= update(policy, objective, groups, stage, reference)
                guard.check(metrics, step + 1)
                source.publish(policy, step + 1)
                metrics["step_time"] = time.perf_counter() - t0
                logger.log(metrics, step + 1, stage=stage.name)
                bar.update(reward=f"{metrics.get('reward', 0):.3f}", drop=int(metrics.get("dropped_groups", 0)))
                if (step + 1) % stage.save_every == 0 and step + 1 < stage.steps:
                    curriculum = source.curriculum_after(step)
                    if curriculum is not None:  # before the checkpoint: a resume from it finds its state
                        write_text_atomic(curriculum_file(run_dir, step + 1), curriculum)
                    checkpoint(run_dir, step + 1, policy, {"stage": stage.name}, stage.keep_last)
    finally:
        source.close()
        reward_fn.close()
        if own_logger:
            logger.close()
    if monitor is not None:
        warn_on_reward_hacking(stage.name, read_metrics(run_dir))
    return save_final(policy, run_dir / "model")


def curriculum_file(run_dir: Path, step: int) -> Path:
    return run_dir / "curriculum" / f"step_{step}.json"


def load_curriculum(stage: RLStage | MOPDStage, run_dir: Path, step: int) -> Curriculum | None:
    """The stage's curriculum as it was after ``step`` steps (fresh at step 0)."""
    config = getattr(stage, "curriculum", None)
    if config is None:
        return None
    if step == 0:
        return Curriculum(config)
    path = curriculum_file(run_dir, step)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the curriculum state of the step-{step} checkpoint is missing")
    return Curriculum.from_json(config, path.read_text())


def warn_on_reward_hacking(name: str, rows: Sequence[dict]) -> str | None:
    """Compare the first and last fifth of the stage: the trained reward rising by more than 0.05 while the
    prompts' own verifiers (spec_reward) gain under 0.01 is reported as reward hacking (and returned)."""
    rows = [r for r in rows if r.get("spec_reward") is not None and r.get("reward") is not None]
    k = max(1, len(rows) // 5)
    if len(rows) < 2 * k or len(rows) < 4:
        return None

    def gain(key: str) -> float:
        return sum(r[key] for r in rows[-k:]) / k - sum(r[key] for r in rows[:k]) / k

    reward, spec = gain("reward"), gain("spec_reward")
    if reward <= 0.05 or spec >= 0.01:
        return None
    message = (
        f"{name}: reward hacking: the trained reward rose by {reward:+.3f} from the first to the last {k} steps "
        f"while the prompts' own verifiers moved {spec:+.3f}"
    )
    console.print(f"[yellow]{message}[/yellow]", highlight=False)
    return message
