"""``cascade demo``: the miniature Cascade pipeline end to end, then a plain-words reading of the ledger."""

from __future__ import annotations

import time

from cascade_rl.config import MOPDStage, PipelineConfig, RLStage
from cascade_rl.data.build import prompt_domains
from cascade_rl.eval.ledger import Ledger
from cascade_rl.logging import console
from cascade_rl.loops.pipeline import PipelineResult, run_pipeline


def _stage_domains(config: PipelineConfig) -> dict[str, list[str]]:
    return {s.name: prompt_domains(s.prompts, "rl") for s in config.stages if isinstance(s, RLStage | MOPDStage)}


def reading(config: PipelineConfig, ledger: Ledger) -> str:
    """What the ledger shows, stated from the numbers (gains of each stage on its own domains,
    forgetting, and how MOPD compares with its teachers)."""
    rows = {r.stage: r for r in ledger.rows}
    order = [r.stage for r in ledger.rows]
    sentences = []
    sft = rows.get("sft")
    if sft:
        zero = [c for c, v in sft.scores.items() if v == 0]
        sentences.append(
            "SFT gives every domain a nonzero start."
            if not zero
            else f"After SFT these domains still score 0: {', '.join(zero)}."
        )
    for stage, domains in _stage_domains(config).items():
        if stage not in rows or order.index(stage) == 0:
            continue
        before = ledger.rows[order.index(stage) - 1]
        deltas = []
        for col in rows[stage].scores:
            if col.split(":")[0] in domains and col in before.scores:
                deltas.append(f"{col} {before.scores[col]:.2f}->{rows[stage].scores[col]:.2f}")
        if deltas:
            sentences.append(f"{stage} moved its own domains: {', '.join(deltas)}.")
    mopd = next((s for s in config.stages if isinstance(s, MOPDStage)), None)
    if mopd and mopd.name in rows:
        best = ledger.best()
        gaps = []
        for col, score in rows[mopd.name].scores.items():
            teacher = best.get(col)
            if col.split(":")[0] in _stage_domains(config)[mopd.name] and teacher is not None:
                gap = score - max(r.scores.get(col, 0.0) for r in ledger.rows[: order.index(mopd.name)])
                gaps.append(f"{col} {'+' if gap >= 0 else ''}{gap:.2f}")
        sentences.append(f"MOPD vs its teachers' best score (before MOPD): {', '.join(gaps)}.")
    drops = ledger.forgetting()
    if drops:
        worst = max(drops, key=lambda d: d[3])
        sentences.append(
            f"Forgetting is visible: {len(drops)} drops beyond noise, the largest {worst[0]} "
            f"({worst[1]} -> {worst[2]}, -{worst[3]:.2f})."
        )
    else:
        sentences.append("No domain dropped by more than the noise tolerance after a later stage.")
    return " ".join(sentences)


def run_demo(config: PipelineConfig, started: float | None = None) -> PipelineResult:
    from cascade_rl.cli import _print_result

    started = time.perf_counter() if started is None else started
    result = run_pipeline(config)
    _print_result(result)
    console.rule("reading")
    console.print(reading(config, result.ledger), highlight=False)
    console.print(f"\ndemo wall time: {time.perf_counter() - started:.0f} s", highlight=False)
    return result
