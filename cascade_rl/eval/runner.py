"""Batched evaluation on held-out sets: avg@k, pass@k, thinking and non-thinking modes.

Works on any generator the backend hands over: it needs only a generator, the model's tokenizer and
prompts with verifier specs. Episodes run through the rollout half (``loops.rollout``), so an
evaluation samples and scores exactly as training does. Every prompt / completion / verdict goes to
a JSONL file for inspection.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from cascade_rl.chat import parse_completion
from cascade_rl.config import DataConfig, EvalConfig
from cascade_rl.data.build import prompt_domains, prompts_for, thinking_modes
from cascade_rl.engines.base import Generator, SamplingParams
from cascade_rl.logging import progress_bar
from cascade_rl.loops.episodes import Budget, EpisodeRunner
from cascade_rl.loops.rollout import PromptEncoder, with_rewards
from cascade_rl.rewards.reward_fn import RewardFn, VerifierReward
from cascade_rl.types import Prompt, TrajectoryGroup

VALIDATION, TEST = "validation", "test"


@dataclass(frozen=True)
class DomainScore:
    domain: str
    thinking: bool
    prompts: int
    samples: int  # per prompt
    avg: float  # avg@k: mean score over all samples
    pass_at_k: float  # fraction of prompts with at least one sample scoring 1
    pass_at_1: float  # unbiased pass@1 (= mean of full-credit samples)
    truncation_rate: float
    response_length: float
    stderr: float = 0.0  # standard error of ``avg`` over prompts (a prompt's samples are not independent)
    split: str = TEST
    turns: float = 1.0  # model turns per episode
    tool_errors: float = 0.0  # tool calls per episode that came back as errors
    env_failures: int = 0  # episodes the environment itself broke on (scored 0, counted here)

    @property
    def key(self) -> str:
        return column(self.domain, self.thinking)


def column(domain: str, thinking: bool) -> str:
    """Ledger column name of a domain in a thinking mode."""
    return f"{domain}:{'think' if thinking else 'direct'}"


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def _params(config: EvalConfig, tokenizer: PreTrainedTokenizerBase) -> SamplingParams:
    return SamplingParams(
        n=1 if config.temperature == 0 else config.samples,
        temperature=config.temperature,
        top_p=config.top_p,
        max_new_tokens=config.max_new_tokens,
        stop_token_ids=(tokenizer.eos_token_id,),
        seed=config.seed,
    )


def _sample_rows(groups: Sequence[TrajectoryGroup], split: str) -> list[dict]:
    rows = []
    for group in groups:
        for t in group.trajectories:
            rows.append(
                {
                    "domain": group.prompt.domain,
                    "split": split,
                    "thinking": group.thinking,
                    "uid": group.prompt.uid,
                    "prompt": list(group.prompt.messages),
                    "completion": t.final_text,
                    "turns": list(t.texts) if len(t.texts) > 1 else None,
                    "answer": parse_completion(t.final_text, thinking=group.thinking).content,
                    "score": t.reward,
                    "info": dict(t.info),
                    "finish_reason": "length" if t.truncated else "stop",
                }
            )
    return rows


def score_groups_of(domain: str, thinking: bool, groups: Sequence[TrajectoryGroup], split: str) -> DomainScore:
    """avg@k, pass@k and friends of one domain's scored groups."""
    per_prompt = [statistics.fmean(g.rewards) for g in groups]
    correct = [sum(r >= 1.0 for r in g.rewards) for g in groups]
    flat = [t for g in groups for t in g.trajectories]
    n, k = len(groups), len(groups[0].trajectories) if groups else 0
    return DomainScore(
        domain=domain,
        thinking=thinking,
        prompts=n,
        samples=k,
        avg=statistics.fmean(per_prompt) if per_prompt else 0.0,
        pass_at_k=sum(c > 0 for c in correct) / max(n, 1),
        pass_at_1=statistics.fmean(pass_at_k(k, c, 1) for c in correct) if correct else 0.0,
        truncation_rate=statistics.fmean(t.truncated for t in flat) if flat else 0.0,
        response_length=statistics.fmean(t.model_tokens for t in flat) if flat else 0.0,
        stderr=statistics.stdev(per_prompt) / math.sqrt(n) if n > 1 else 0.0,
        split=split,
        turns=statistics.fmean(len(t.turns) for t in flat) if flat else 0.0,
        tool_errors=statistics.fmean(float(t.info.get("tool_errors", 0)) for t in flat) if flat else 0.0,
        env_failures=sum(t.failed for t in flat),
    )


def evaluate_prompts(
    generator: Generator,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt],
    config: EvalConfig,
    thinking: bool,
    *,
    reward_fn: RewardFn | None = None,
    split: str = TEST,
    samples_file: Path | None = None,
) -> list[DomainScore]:
    """Score prompts in one thinking mode; one ``DomainScore`` per domain the prompts resolve to."""
    params = _params(config, tokenizer)
    reward_fn = reward_fn or VerifierReward(workers=config.reward_workers)
    encode = PromptEncoder(tokenizer)
    budget = Budget(config.max_turns, config.max_context_tokens)
    runner = EpisodeRunner(generator, tokenizer, thinking, budget, config.envs)
    per_call = max(1, config.batch_size // params.n)
    groups: list[TrajectoryGroup] = []
    for start in range(0, len(prompts), per_call):
        batch = runner.run(prompts[start : start + per_call], encode, params)
        groups.extend(with_rewards(batch, reward_fn))
    if samples_file is not None:
        samples_file.parent.mkdir(parents=True, exist_ok=True)
        with samples_file.open("a", encoding="utf-8") as handle:
            for row in _sample_rows(groups, split):
                handle.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    by_domain: dict[str, list[TrajectoryGroup]] = {}
    for group in groups:
        by_domain.setdefault(group.prompt.domain, []).append(group)
    return [score_groups_of(d, thinking, gs, split) for d, gs in sorted(by_domain.items())]


def modes_of(data: DataConfig, config: EvalConfig) -> list[bool]:
    """The thinking modes a domain is scored in: ``eval.thinking``, narrowed by the domain's own ``thinking``
    (``off``: direct only, e.g. a domain whose SFT data has no reasoning traces; ``on``: thinking only)."""
    return [t for t in config.thinking if t in thinking_modes(data)]


def validation_sets(config: EvalConfig) -> list[DataConfig]:
    """The sets teachers are chosen on: ``config.validation``, else each task domain's validation split."""
    if config.validation is not None:
        return list(config.validation)
    return [c.model_copy(update={"split": VALIDATION}) for c in config.domains if c.task is not None]


@dataclass(frozen=True)
class EvalJob:
    """One (domain source, thinking mode, split) of an evaluation."""

    data: DataConfig
    thinking: bool
    split: str

    def label(self, scores: Sequence[DomainScore]) -> dict[str, str]:
        return {f"{s.key}{'' if self.split == TEST else '@val'}": f"{s.avg:.3f}" for s in scores}


def eval_jobs(config: EvalConfig, validation: Collection[str] = ()) -> list[EvalJob]:
    """Every configured held-out domain in each of its modes (test split), then the validation sets of the
    ``validation`` domains."""
    jobs = [EvalJob(c, t, TEST) for c in config.domains for t in modes_of(c, config)]
    if validation:
        wanted = [c for c in validation_sets(config) if set(prompt_domains([c], VALIDATION)) & set(validation)]
        jobs += [EvalJob(c, t, VALIDATION) for c in wanted for t in modes_of(c, config)]
    return jobs


def evaluate(
    generator: Generator,
    tokenizer: PreTrainedTokenizerBase,
    config: EvalConfig,
    *,
    validation: Collection[str] = (),
    samples_file: Path | None = None,
    label: str = "eval",
) -> list[DomainScore]:
    """Score every configured held-out domain in every configured thinking mode (test split), and also the
    validation sets of the ``validation`` domains (``DomainScore.split`` tells them apart)."""
    if samples_file is not None and samples_file.exists():
        samples_file.unlink()  # a re-run replaces, never appends to, an unfinished evaluation
    jobs = eval_jobs(config, validation)
    reward_fn = VerifierReward(workers=config.reward_workers)
    results = []
    with progress_bar(len(jobs), label) as bar:
        for job in jobs:
            scores = evaluate_prompts(
                generator,
                tokenizer,
                prompts_for(job.data, job.split),
                config,
                job.thinking,
                reward_fn=reward_fn,
                split=job.split,
                samples_file=samples_file,
            )
            results.extend(scores)
            bar.update(**job.label(scores))
    return results


def scores_to_json(scores: Sequence[DomainScore]) -> list[dict]:
    return [asdict(s) | {"key": s.key} for s in scores]
