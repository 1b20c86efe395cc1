"""Batched evaluation on held-out sets: avg@k, pass@k, thinking and non-thinking modes.

Works on any model folder: it needs only a model, its tokenizer and prompts with verifier specs.
Every prompt / completion / verdict goes to a JSONL file for inspection.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from cascade_rl.chat import encode_prompt, parse_completion
from cascade_rl.config import EvalConfig
from cascade_rl.data.build import domain_of, prompts_for
from cascade_rl.engines.base import SamplingParams
from cascade_rl.engines.local import LocalGenerator
from cascade_rl.logging import progress_bar
from cascade_rl.rewards import verify_batch
from cascade_rl.types import Prompt


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


def evaluate_prompts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt],
    domain: str,
    config: EvalConfig,
    thinking: bool,
    *,
    samples_file: Path | None = None,
) -> DomainScore:
    generator = LocalGenerator(model, batch_size=config.batch_size)
    k = 1 if config.temperature == 0 else config.samples
    params = SamplingParams(
        n=k,
        temperature=config.temperature,
        top_p=config.top_p,
        max_new_tokens=config.max_new_tokens,
        stop_token_ids=(tokenizer.eos_token_id,),
        seed=config.seed,
    )
    ids = [encode_prompt(tokenizer, list(p.messages), p.tools, enable_thinking=thinking) for p in prompts]
    per_prompt_batch = max(1, config.batch_size // k)
    rows, scores, correct = [], [], []
    truncated, lengths = [], []
    for start in range(0, len(prompts), per_prompt_batch):
        chunk = range(start, min(start + per_prompt_batch, len(prompts)))
        completions = generator.generate([ids[i] for i in chunk], params)
        flat = [(i, c) for i, group in zip(chunk, completions, strict=True) for c in group]
        texts = [tokenizer.decode(list(c.tokens), skip_special_tokens=False) for _, c in flat]
        verdicts = verify_batch(
            texts,
            [prompts[i].spec for i, _ in flat],
            [c.finish_reason == "length" for _, c in flat],
            thinking=thinking,
            workers=config.reward_workers,
        )
        offset = 0
        for group in completions:  # a prompt's samples are consecutive in ``flat``
            mine = [v.score for v in verdicts[offset : offset + len(group)]]
            offset += len(group)
            scores.append(statistics.fmean(mine))
            correct.append(sum(s >= 1.0 for s in mine))
            truncated.extend(c.finish_reason == "length" for c in group)
            lengths.extend(len(c.tokens) for c in group)
        for (i, c), text, verdict in zip(flat, texts, verdicts, strict=True):
            parsed = parse_completion(text, thinking=thinking)
            rows.append(
                {
                    "domain": domain,
                    "thinking": thinking,
                    "uid": prompts[i].uid,
                    "prompt": list(prompts[i].messages),
                    "completion": text,
                    "answer": parsed.content,
                    "score": verdict.score,
                    "info": verdict.info,
                    "finish_reason": c.finish_reason,
                }
            )
    if samples_file is not None:
        samples_file.parent.mkdir(parents=True, exist_ok=True)
        with samples_file.open("a", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    n = len(prompts)
    return DomainScore(
        domain=domain,
        thinking=thinking,
        prompts=n,
        samples=k,
        avg=statistics.fmean(scores) if scores else 0.0,
        pass_at_k=sum(c > 0 for c in correct) / max(n, 1),
        pass_at_1=statistics.fmean(pass_at_k(k, c, 1) for c in correct) if correct else 0.0,
        truncation_rate=statistics.fmean(truncated) if truncated else 0.0,
        response_length=statistics.fmean(lengths) if lengths else 0.0,
        stderr=statistics.stdev(scores) / math.sqrt(n) if n > 1 else 0.0,
    )


def evaluate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    config: EvalConfig,
    *,
    samples_file: Path | None = None,
    label: str = "eval",
) -> list[DomainScore]:
    """Score every configured held-out domain in every configured thinking mode."""
    if samples_file is not None and samples_file.exists():
        samples_file.unlink()  # a re-run replaces, never appends to, an unfinished evaluation
    jobs = [(c, t) for c in config.domains for t in config.thinking]
    results = []
    with progress_bar(len(jobs), label) as bar:
        for data, thinking in jobs:
            domain = domain_of(data)
            score = evaluate_prompts(
                model, tokenizer, prompts_for(data, "eval"), domain, config, thinking, samples_file=samples_file
            )
            results.append(score)
            bar.update(**{score.key: f"{score.avg:.3f}"})
    return results


def scores_to_json(scores: Sequence[DomainScore]) -> list[dict]:
    return [asdict(s) | {"key": s.key} for s in scores]
