"""The one RL stage loop: sample prompts, generate groups, verify, build signal, update, sync.

GRPO and MOPD run through this same loop; the objective (``loops.objectives``) is chosen by name.
One optimizer update per rollout batch (strictly on-policy, as published). Everything random is
seeded by (stage seed, step, sampling round), so a resumed run replays the same prompts and samples.
"""

from __future__ import annotations

import random
import statistics
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from cascade_rl.chat import encode_prompt
from cascade_rl.config import RLStage
from cascade_rl.data.build import prompts_for
from cascade_rl.engines.base import Generator, SamplingParams, Scorer, TrainBatch
from cascade_rl.engines.local import LocalGenerator, LocalPolicy, LocalScorer
from cascade_rl.logging import MetricsLogger, progress_bar
from cascade_rl.loops.common import build_policy, checkpoint, resume, save_final, set_seed
from cascade_rl.loops.objectives import (
    OBJECTIVES,
    LossSettings,
    Objective,
    Rollout,
    TeacherRouter,
    domain_breakdown,
    per_domain_means,
)
from cascade_rl.rewards import verify_batch
from cascade_rl.types import Prompt


@dataclass
class PromptPool:
    """The stage's prompts by source, sampled by source weight; prompt ids are encoded once."""

    prompts: list[list[Prompt]]
    weights: list[float]
    thinking: bool
    tokenizer: PreTrainedTokenizerBase
    _ids: dict[tuple[int, int], list[int]] = field(default_factory=dict)

    def sample(self, count: int, rng: random.Random) -> list[tuple[Prompt, list[int]]]:
        out = []
        for _ in range(count):
            s = rng.choices(range(len(self.prompts)), weights=self.weights)[0]
            k = rng.randrange(len(self.prompts[s]))
            prompt = self.prompts[s][k]
            if (s, k) not in self._ids:
                self._ids[(s, k)] = encode_prompt(
                    self.tokenizer, list(prompt.messages), prompt.tools, enable_thinking=self.thinking
                )
            out.append((prompt, self._ids[(s, k)]))
        return out


def _rollouts(
    tokenizer: PreTrainedTokenizerBase,
    generator: Generator,
    batch: Sequence[tuple[Prompt, list[int]]],
    params: SamplingParams,
    first_index: int,
    workers: int,
    thinking: bool,
) -> list[list[Rollout]]:
    """Generate ``params.n`` completions per prompt and score them; one list (group) per prompt."""
    completions = generator.generate([ids for _, ids in batch], params)
    flat = [(p, ids, c) for (p, ids), group in zip(batch, completions, strict=True) for c in group]
    texts = [tokenizer.decode(list(c.tokens), skip_special_tokens=False) for _, _, c in flat]
    results = verify_batch(
        texts,
        [p.spec for p, _, _ in flat],
        [c.finish_reason == "length" for _, _, c in flat],
        workers=workers,
        thinking=thinking,
    )
    groups: list[list[Rollout]] = [[] for _ in batch]
    for j, ((p, ids, c), text, res) in enumerate(zip(flat, texts, results, strict=True)):
        g = j // params.n
        groups[g].append(
            Rollout(
                first_index + g,
                p.domain,
                list(ids),
                list(c.tokens),
                list(c.logprobs),
                c.finish_reason == "length",
                res.score,
                text,
                res.info,
            )
        )
    return groups


def collect(
    stage: RLStage,
    step: int,
    pool: PromptPool,
    tokenizer: PreTrainedTokenizerBase,
    generator: Generator,
    objective: Objective,
    workers: int = 0,
) -> tuple[list[Rollout], dict[str, float]]:
    """A full batch of groups; constant-reward groups are dropped and refilled (dynamic filtering)."""
    kept: list[list[Rollout]] = []
    seen: list[Rollout] = []
    dropped = rounds = 0
    gen_time = gen_tokens = 0.0
    filtering = stage.dynamic_filtering and objective.filters_constant_groups
    while len(kept) < stage.prompts_per_step and rounds < stage.max_sampling_rounds:
        rng = random.Random(f"{stage.seed}:{step}:{rounds}")
        need = stage.prompts_per_step - len(kept)
        params = SamplingParams(
            n=stage.group_size,
            temperature=stage.temperature,
            top_p=stage.top_p,
            top_k=stage.top_k,
            max_new_tokens=stage.max_new_tokens,
            stop_token_ids=(tokenizer.eos_token_id,),
            seed=rng.randrange(1 << 62),
        )
        t0 = time.perf_counter()
        groups = _rollouts(tokenizer, generator, pool.sample(need, rng), params, len(seen), workers, pool.thinking)
        gen_time += time.perf_counter() - t0
        for group in groups:
            seen.extend(group)
            gen_tokens += sum(len(r.tokens) for r in group)
            if filtering and len({r.reward for r in group}) == 1:
                dropped += 1
            else:
                kept.append(group)
        rounds += 1
    rollouts = [r for g in kept[: stage.prompts_per_step] for r in g]
    stats = _rollout_stats(seen)
    stats |= {
        "dropped_groups": dropped,
        "sampling_rounds": rounds,
        "kept_groups": len(kept),
        "rollout_tokens_per_s": gen_tokens / max(gen_time, 1e-9),
        "generation_time": gen_time,
    }
    return rollouts, stats


def _rollout_stats(rollouts: Sequence[Rollout]) -> dict[str, float]:
    """Metrics over every sampled rollout (kept or not): what the policy actually does."""
    if not rollouts:
        return {}
    out: dict[str, float] = {
        "reward": statistics.fmean(r.reward for r in rollouts),
        "pass_rate": statistics.fmean(r.reward >= 1.0 for r in rollouts),
        "response_length": statistics.fmean(len(r.tokens) for r in rollouts),
        "truncation_rate": statistics.fmean(r.truncated for r in rollouts),
    }
    by_domain: dict[str, list[float]] = defaultdict(list)
    for r in rollouts:
        by_domain[r.domain].append(r.reward)
    for domain, rewards in by_domain.items():
        out[f"reward/{domain}"] = statistics.fmean(rewards)
        out[f"pass_rate/{domain}"] = statistics.fmean(x >= 1.0 for x in rewards)
    return out


def build_objective(stage: RLStage, teachers: TeacherRouter | None) -> Objective:
    if stage.advantage not in OBJECTIVES:
        raise ValueError(f"unknown advantage {stage.advantage!r}; registered: {', '.join(sorted(OBJECTIVES))}")
    settings = LossSettings(
        icepop=stage.icepop,
        kl_coef=stage.kl_coef,
        reduction=getattr(stage, "reduction", "seq_mean"),
        reward_weight=getattr(stage, "reward_weight", 0.0),
        temperature=stage.temperature,
    )
    return OBJECTIVES[stage.advantage](settings, teachers=teachers)


def update(
    policy: LocalPolicy, objective: Objective, rollouts: Sequence[Rollout], stage: RLStage, reference: Scorer | None
) -> dict[str, float]:
    """One optimizer step on the batch; truncated responses leave the loss (overlong filtering)."""
    seqs = [r.sequence(trained=not (stage.overlong_filtering and r.truncated)) for r in rollouts]
    domains = sorted({r.domain for r in rollouts})
    for r, seq in zip(rollouts, seqs, strict=True):
        seq.values["domain_id"] = [float(domains.index(r.domain))] * len(seq.tokens)
    objective.fill(rollouts, seqs)
    if reference is not None:
        for seq, lp in zip(seqs, reference.logprobs(seqs), strict=True):
            seq.values["ref_logprobs"] = lp
    norm = {"tokens": float(sum(sum(s.mask) for s in seqs)), "sequences": float(sum(any(s.mask) for s in seqs))}
    if norm["tokens"] == 0:  # every response overlong-filtered
        policy.skip_step()
        return {"skipped_update": 1.0}
    batch = TrainBatch(seqs, num_tokens=norm["tokens"], num_sequences=norm["sequences"])

    def loss_fn(lp: torch.Tensor, t: Mapping[str, torch.Tensor]) -> tuple:
        loss, metrics = objective.loss(lp, t, norm)
        return loss, {**metrics, **domain_breakdown(lp, t, stage.icepop)}

    metrics = policy.forward_backward(batch, loss_fn, with_entropy=True)
    return per_domain_means(metrics, domains) | policy.optim_step()


def run_rl(
    stage: RLStage,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    run_dir: Path,
    *,
    teachers: TeacherRouter | None = None,
    logger: MetricsLogger | None = None,
) -> Path:
    """Run the stage (resuming from ``run_dir`` checkpoints); returns the trained model folder."""
    run_dir.mkdir(parents=True, exist_ok=True)
    set_seed(stage.seed)
    pool = PromptPool(
        [prompts_for(c, "train") for c in stage.prompts], [c.weight for c in stage.prompts], stage.thinking, tokenizer
    )
    objective = build_objective(stage, teachers)
    reference = _frozen_copy(model, stage.temperature) if stage.kl_coef > 0 else None
    policy = build_policy(model, tokenizer, stage.optim, stage.steps, token_budget=4096)
    policy.temperature = stage.temperature
    generator = LocalGenerator(model)
    start = resume(run_dir, policy, stage.name, stage.steps)
    own_logger = logger is None
    logger = logger or MetricsLogger(run_dir)
    try:
        with progress_bar(stage.steps, f"{stage.type}:{stage.name}") as bar:
            bar.update(advance=start)
            for step in range(start, stage.steps):
                t0 = time.perf_counter()
                rollouts, metrics = collect(stage, step, pool, tokenizer, generator, objective, stage.reward_workers)
                metrics |= update(policy, objective, rollouts, stage, reference)
                generator.sync(policy)
                metrics["step_time"] = time.perf_counter() - t0
                logger.log(metrics, step + 1, stage=stage.name)
                bar.update(reward=f"{metrics.get('reward', 0):.3f}", drop=int(metrics.get("dropped_groups", 0)))
                if (step + 1) % stage.save_every == 0 and step + 1 < stage.steps:
                    checkpoint(run_dir, step + 1, policy, {"stage": stage.name})
    finally:
        if own_logger:
            logger.close()
    return save_final(model, tokenizer, run_dir / "model")


def _frozen_copy(model: PreTrainedModel, temperature: float) -> LocalScorer:
    """The stage's initial policy, frozen: the KL reference (RLHF), scoring at the sampling temperature."""
    import copy

    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    scorer = LocalScorer(ref)
    scorer.temperature = temperature
    return scorer
