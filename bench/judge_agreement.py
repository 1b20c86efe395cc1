"""How often a generative pairwise judge agrees with the chat domain's hidden rubric.

Held-out preference pairs of the procedural ``chat`` domain (``chosen`` always scores strictly higher
under the rubric) are judged by the ``judge`` reward exactly as an RLHF stage would: one group of
two responses per pair, both orders, greedy verdicts. A pair is agreed with when the chosen response's
reward is higher (a tie counts half). The peer is the rule judges are known to fall back on, "the
longer answer is better", on the same pairs. Also printed: the share of unparseable verdicts, the
share of pairs left tied (a judge that prefers whichever response it sees first gives each one win:
judging both orders turns position bias into ties), and the agreement per kind of fault in the
rejected answer.

Usage: .venv/bin/python bench/judge_agreement.py [--judge smollm2] [--pairs 100] [--prefill '{"A": ']
(a few minutes on 2 cores with the SmolLM2-135M judge). The last line is ``ratio: X.XX`` = the judge's
agreement over the length rule's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cascade_rl.config import DataConfig, EngineConfig, ModelConfig
from cascade_rl.data.pairs import Pair, read_pairs
from cascade_rl.engines.backend import LocalBackend
from cascade_rl.rewards.judge import PairwiseJudge
from cascade_rl.rewards.reward_fn import RewardContext
from cascade_rl.types import Prompt, Trajectory, TrajectoryGroup


def response(text: str, tokens: int) -> Trajectory:
    """A finished one-turn trajectory whose final text is ``text`` (token ids are placeholders)."""
    n = max(tokens, 1)
    return Trajectory((0,) * n, (1,) * n, (0.0,) * n, ((0, n),), (text + "<|im_end|>",), False, "chat")


def kind_of(pair: Pair) -> str:
    return pair.kind.split(">")[-1].split("+")[-1] or "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--judge", default="smollm2", help="judge model: spec, HF folder or endpoint URL")
    parser.add_argument("--pairs", type=int, default=100, help="held-out chat pairs")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--prefill", default='{"A": ', help="start of the judge's answer ('' for none)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pairs = read_pairs(DataConfig(task="chat", n=args.pairs), "test")
    backend = LocalBackend(EngineConfig(), ModelConfig(spec=args.judge))
    judge = PairwiseJudge(
        RewardContext(backend=backend), model=args.judge, max_new_tokens=args.max_new_tokens, prefill=args.prefill
    )
    words = [(len(p.chosen["content"].split()), len(p.rejected["content"].split())) for p in pairs]
    groups = [
        TrajectoryGroup(
            Prompt(p.prompt, {}, "chat"),
            (response(p.chosen["content"], c), response(p.rejected["content"], r)),
            index=i,
        )
        for i, (p, (c, r)) in enumerate(zip(pairs, words, strict=True))
    ]
    start = time.perf_counter()
    results = judge(groups)
    seconds = time.perf_counter() - start
    agree = [1.0 if a.score > b.score else 0.5 if a.score == b.score else 0.0 for a, b in results]
    longer = [1.0 if c > r else 0.5 if c == r else 0.0 for c, r in words]
    comparisons = sum(r.info["judge_comparisons"] for pair in results for r in pair)
    unparsed = sum(r.info["judge_unparsed"] for pair in results for r in pair)
    by_kind: dict[str, list[float]] = defaultdict(list)
    for pair, score in zip(pairs, agree, strict=True):
        by_kind[kind_of(pair)].append(score)
    tied = sum(a.score == b.score for a, b in results)
    n = len(pairs)
    se = statistics.stdev(agree) / n**0.5 if n > 1 else 0.0
    print(
        f"judge {args.judge} (prefill {args.prefill!r}): {n} held-out chat pairs, "
        f"{comparisons // 2} verdicts in {seconds:.0f} s"
    )
    print(f"  agreement with the rubric: {statistics.fmean(agree):.3f} (se {se:.3f}; chance 0.5)")
    print(f"  'the longer answer is better': {statistics.fmean(longer):.3f}")
    print(f"  unparseable verdicts: {unparsed // 2}/{comparisons // 2}; pairs left tied: {tied}/{n}")
    kinds = ", ".join(f"{k} {statistics.fmean(v):.2f} ({len(v)})" for k, v in sorted(by_kind.items()))
    print(f"  by rejected kind: {kinds}")
    print(f"ratio: {statistics.fmean(agree) / max(statistics.fmean(longer), 1e-9):.2f}")


if __name__ == "__main__":
    main()
