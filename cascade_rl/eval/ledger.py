"""The stage-by-domain ledger: every domain's held-out score after every stage.

One row per stage (plus the base model), one column per domain and thinking mode. It records the
best checkpoint of every domain so far (MOPD's teachers) and flags forgetting: a domain whose
score drops after a later stage.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cascade_rl.files import write_text_atomic

FORGETTING_TOLERANCE = 0.02  # drops smaller than this are evaluation noise, not forgetting
NOISE_Z = 2.0  # where errors are known, a drop must also exceed this many standard errors of the difference


def _standard_error(score: float, count: int) -> float:
    """Upper bound for a mean of [0, 1] scores over ``count`` independent samples (the Bernoulli case)."""
    return math.sqrt(max(score * (1.0 - score), 0.0) / count) if count > 0 else 0.0


BASE = "base"  # the ledger row of the starting model


@dataclass
class LedgerRow:
    stage: str
    checkpoint: str
    scores: dict[str, float]  # the reported (test split) score of every column
    counts: dict[str, int] = field(default_factory=dict)  # prompts x samples behind each score
    errors: dict[str, float] = field(default_factory=dict)  # standard error of each score, over prompts
    validation: dict[str, float] = field(default_factory=dict)  # validation-split scores: what teachers are chosen on
    # agentic columns: episode shape per column, e.g. {"turns": 2.9, "tool_errors": 0.1} (per episode)
    episodes: dict[str, dict[str, float]] = field(default_factory=dict)

    def error(self, column: str) -> float:
        """The measured standard error of a score; without one, the Bernoulli bound from its sample count."""
        if column in self.errors:
            return self.errors[column]
        return _standard_error(self.scores[column], self.counts.get(column, 0))

    wall_time: float = 0.0


@dataclass
class Ledger:
    rows: list[LedgerRow] = field(default_factory=list)

    @property
    def columns(self) -> list[str]:
        seen: dict[str, None] = {}
        for row in self.rows:
            seen.update(dict.fromkeys(row.scores))
        return list(seen)

    def has(self, stage: str) -> bool:
        return any(r.stage == stage for r in self.rows)

    def add(self, row: LedgerRow) -> None:
        self.rows = [r for r in self.rows if r.stage != row.stage] + [row]

    def best(self) -> dict[str, LedgerRow]:
        """Per column, the row with the highest score (ties: the earlier stage, which reached it first)."""
        out: dict[str, LedgerRow] = {}
        for column in self.columns:
            for row in self.rows:
                if column in row.scores and (column not in out or row.scores[column] > out[column].scores[column]):
                    out[column] = row
        return out

    def forgetting(self) -> list[tuple[str, str, str, float]]:
        """(column, best stage so far, later stage, drop) for every drop beyond noise: larger than
        ``FORGETTING_TOLERANCE`` and, where standard errors are known, than ``NOISE_Z`` of the difference."""
        events = []
        for column in self.columns:
            best: LedgerRow | None = None
            for row in self.rows:
                score = row.scores.get(column)
                if score is None:
                    continue
                if best is not None:
                    top = best.scores[column]
                    noise = NOISE_Z * math.hypot(best.error(column), row.error(column))
                    if top - score > max(FORGETTING_TOLERANCE, noise):
                        events.append((column, best.stage, row.stage, top - score))
                if best is None or score > best.scores[column]:
                    best = row
        return events

    def to_markdown(self) -> str:
        cols = self.columns
        best = self.best()
        head = "| stage | " + " | ".join(cols) + " |"
        sep = "|---|" + "---:|" * len(cols)
        lines = [head, sep]
        for row in self.rows:
            cells = []
            for c in cols:
                if c not in row.scores:
                    cells.append("")
                    continue
                text = f"{row.scores[c]:.3f}"
                cells.append(f"**{text}**" if best.get(c) is row else text)
            lines.append(f"| {row.stage} | " + " | ".join(cells) + " |")
        lines.append("")
        lines.append("Bold: best held-out (test) score of the domain.")
        candidates = {c: best_on_validation(self, c) for c in cols}
        named = [f"{c} {r.stage}" for c, r in candidates.items() if r is not None]
        if named:
            lines.append("MOPD teacher candidates (best on the validation split, base excluded): " + ", ".join(named))
        agentic = [(r.stage, c, e) for r in self.rows for c, e in r.episodes.items()]
        if agentic:
            lines.append(
                "Episodes (turns / tool errors per episode): "
                + "; ".join(f"{c} {stage} {e['turns']:.1f} / {e['tool_errors']:.2f}" for stage, c, e in agentic)
            )
        drops = self.forgetting()
        if drops:
            lines.append("Forgetting: " + "; ".join(f"{c} {a} -> {b} (-{d:.3f})" for c, a, b, d in drops))
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "rows": [vars(r) for r in self.rows],
            "best": {c: r.stage for c, r in self.best().items()},
            "forgetting": [{"column": c, "from": a, "to": b, "drop": d} for c, a, b, d in self.forgetting()],
        }

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        write_text_atomic(folder / "ledger.json", json.dumps(self.to_json(), indent=2))
        write_text_atomic(folder / "ledger.md", self.to_markdown() + "\n")

    @classmethod
    def load(cls, folder: Path) -> Ledger:
        path = folder / "ledger.json"
        if not path.is_file():
            return cls()
        data = json.loads(path.read_text())
        return cls([LedgerRow(**r) for r in data["rows"]])


def teacher_rows(ledger: Ledger, include_base: bool) -> list[LedgerRow]:
    """Rows that may be MOPD teachers: every stage's checkpoint, the base model only when allowed."""
    return [r for r in ledger.rows if include_base or r.stage != BASE]


def best_on_validation(ledger: Ledger, column: str, include_base: bool = False) -> LedgerRow | None:
    """The row with the best validation score of ``column`` (ties: the earlier stage), None if none has one."""
    best: LedgerRow | None = None
    for row in teacher_rows(ledger, include_base):
        score = row.validation.get(column)
        if score is not None and (best is None or score > best.validation[column]):
            best = row
    return best


def choose_teachers(
    ledger: Ledger,
    domains: list[str],
    thinking: bool,
    explicit: Mapping[str, str] | None = None,
    *,
    include_base: bool = False,
    fallback: bool = False,
) -> dict[str, str]:
    """Per domain, the checkpoint with the best validation score in the ledger; explicit paths win.

    Teachers are chosen on the validation split, never on the test split the ledger reports, so the
    reported numbers do not flatter the choice; the base model is a candidate only with ``include_base``.
    A domain without a validation score is an error, or with ``fallback`` left out (for a default teacher).
    """
    from cascade_rl.eval.runner import column

    chosen = dict(explicit or {})
    for domain in domains:
        if domain in chosen:
            continue
        row = best_on_validation(ledger, column(domain, thinking), include_base)
        if row is None and fallback:
            continue
        if row is None:
            raise KeyError(
                f"no validation score for domain {domain!r} ({'think' if thinking else 'direct'}) in the ledger "
                "to pick a teacher: evaluate it (eval.domains / eval.validation) or name its teacher in the stage"
            )
        chosen[domain] = row.checkpoint
    return chosen


def best_overall(ledger: Ledger, include_base: bool = False) -> LedgerRow:
    """The row with the highest mean validation score (the default teacher)."""
    rows = [r for r in teacher_rows(ledger, include_base) if r.validation] or teacher_rows(ledger, True)
    return max(rows, key=lambda r: sum(r.validation.values()) / max(len(r.validation), 1))
