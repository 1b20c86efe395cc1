"""Records and reports of ``bench/mopd_vs_grpo.py``: what a run starts from, each method's curves and
reverse KL per seed, and the tables and plot that compare two methods (steps to teacher level)."""

from __future__ import annotations

import argparse
import math
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench._common import print_table, short
from cascade_rl.config import MOPDStage, PipelineConfig, RLStage
from cascade_rl.eval.ledger import Ledger
from cascade_rl.loops.rl import objective_name
from cascade_rl.plots import comparison_grid

METHODS = ("MOPD", "GRPO")


@dataclass
class Setup:
    """What the pipeline's MOPD stage saw when it started."""

    config: PipelineConfig
    stage: MOPDStage
    start_name: str  # the stage whose model MOPD starts from ("base" if MOPD comes first)
    start_dir: Path
    ledger: Ledger  # rows up to and including the start stage
    domains: list[str]
    thinking: bool


@dataclass(frozen=True)
class Score:
    avg: float
    se: float  # standard error over prompts (a prompt's samples averaged first)

    def text(self) -> str:
        return f"{self.avg:.3f} ± {self.se:.3f}"


@dataclass
class MethodRun:
    method: str
    seed: int
    curve: dict[str, list[tuple[int, Score]]] = field(default_factory=lambda: defaultdict(list))
    kl: list[dict[str, tuple[float, int]]] = field(default_factory=list)  # per step
    step_wall: list[float] = field(default_factory=list)  # collect + update + sync (KL probe excluded)
    step_cpu: list[float] = field(default_factory=list)
    sampled: list[int] = field(default_factory=list)  # rollouts generated per step
    trained: list[int] = field(default_factory=list)  # rollouts in the update
    reward: list[float] = field(default_factory=list)
    update_kl: list[float] = field(default_factory=list)  # MOPD's own reverse_kl metric (pi_train), as a check
    eval_wall: float = 0.0


def steps_to(curve: Sequence[tuple[int, Score]], threshold: float) -> int | None:
    """First evaluated step whose score reaches the threshold (0 = the start checkpoint); None if never."""
    return next((step for step, score in curve if score.avg >= threshold), None)


# --------------------------------------------------------------------------- report


def mean_curve(runs: Sequence[MethodRun], domain: str) -> list[tuple[int, float]]:
    steps = [s for s, _ in runs[0].curve[domain]]
    return [(s, statistics.fmean(r.curve[domain][i][1].avg for r in runs)) for i, s in enumerate(steps)]


def kl_windows(run: MethodRun, every: int, key: str) -> list[float]:
    """Token-mean reverse KL over each window of ``every`` steps."""
    out = []
    for start in range(0, len(run.kl), every):
        window = run.kl[start : start + every]
        total = sum(k[key][0] for k in window if key in k)
        tokens = sum(k[key][1] for k in window if key in k)
        out.append(total / tokens if tokens else float("nan"))
    return out


def report(
    setup: Setup,
    run_dir: Path,
    runs: Mapping[str, list[MethodRun]],
    teachers: Mapping[str, Score],
    chosen: Mapping[str, str],
    args: argparse.Namespace,
    methods: tuple[str, str] = METHODS,
) -> dict[str, dict[str, list[int | None]]]:
    """Per-domain curves, teacher scores and steps to teacher level (one PNG with a panel per domain);
    returns the steps per method and seed."""
    reached: dict[str, dict[str, list[int | None]]] = {}
    panels: dict[str, dict[str, list[tuple[int, float]]]] = {}
    seeds = len(runs[methods[0]])
    plots = run_dir / "plots"
    plots.mkdir(exist_ok=True)
    for domain in setup.domains:
        teacher = teachers[domain]
        threshold = teacher.avg - args.margin
        same = Path(chosen[domain]).resolve() == setup.start_dir.resolve()
        print(
            f"\n== {domain}: teacher {short(chosen[domain], run_dir)}"
            f"{' (= the start checkpoint)' if same else ''}: {teacher.text()}; "
            f"teacher level = score >= {threshold:.3f} (teacher - {args.margin:g})"
        )
        header = (
            ["step"]
            + [f"{m} seed {r.seed}" if seeds > 1 else m for m in methods for r in runs[m]]
            + ([f"{m} mean" for m in methods] if seeds > 1 else [])
        )
        rows = []
        means = {m: mean_curve(runs[m], domain) for m in methods}
        for i, (step, _) in enumerate(runs[methods[0]][0].curve[domain]):
            row = [str(step)] + [r.curve[domain][i][1].text() for m in methods for r in runs[m]]
            if seeds > 1:
                row += [f"{means[m][i][1]:.3f}" for m in methods]
            rows.append(row)
        print_table(header, rows)
        reached[domain] = {m: [steps_to(r.curve[domain], threshold) for r in runs[m]] for m in methods}
        texts = []
        for m in methods:
            per_seed = ", ".join("not reached" if s is None else str(s) for s in reached[domain][m])
            texts.append(f"{m} {per_seed}")
        print(f"steps to teacher level: {' | '.join(texts)}")
        # Teacher level and its threshold as flat lines next to the methods' (seed-mean) curves.
        last = runs[methods[0]][0].curve[domain][-1][0]
        panels[domain] = {m: means[m] for m in methods}
        panels[domain]["teacher"] = [(0, teacher.avg), (last, teacher.avg)]
        panels[domain][f"teacher - {args.margin:g}"] = [(0, threshold), (last, threshold)]
    name = "_vs_".join(m.lower() for m in methods)
    title = f"{' vs '.join(methods)}: held-out score, mean of {seeds} seed{'s' * (seeds > 1)}"
    print(f"plot: {comparison_grid(panels, plots / f'{name}.png', title)}")
    return reached


def print_kl(runs: Mapping[str, list[MethodRun]], setup: Setup, every: int) -> None:
    print(
        "\n== reverse KL to the domain's teacher (nats/token, one-sample estimate on the training batch, "
        f"mean over each {every}-step window, seed-mean)"
    )
    keys = ["all", *setup.domains]
    for m in METHODS:
        print(f"-- {m}")
        header = ["steps", *keys]
        n = len(runs[m][0].kl)
        starts = list(range(0, n, every))
        per_key = {k: [kl_windows(r, every, k) for r in runs[m]] for k in keys}
        rows = []
        for i, start in enumerate(starts):
            row = [f"{start + 1}-{min(start + every, n)}"]
            for k in keys:
                values = [w[i] for w in per_key[k] if not math.isnan(w[i])]
                row.append(f"{statistics.fmean(values):+.4f}" if values else "-")
            rows.append(row)
        print_table(header, rows)


def _mean_text(values: Sequence[float], fmt: str) -> str:
    return fmt.format(statistics.fmean(values)) if values else "-"


def print_training(runs: Mapping[str, list[MethodRun]], stages: Mapping[str, RLStage | MOPDStage]) -> None:
    print("\n== training cost per step (seed-mean; KL probe and evaluations excluded)")
    header = [
        "method",
        "advantage",
        "dyn. filtering",
        "rollouts sampled",
        "rollouts trained",
        "step wall s",
        "step cpu s",
        "train reward",
        "reverse KL (update metric)",
        "eval wall s (all evals)",
    ]
    rows = []
    for m in METHODS:
        rs, st = runs[m], stages[m]
        rows.append(
            [
                m,
                objective_name(st),
                "on" if st.dynamic_filtering else "off",
                f"{statistics.fmean(x for r in rs for x in r.sampled):.1f}",
                f"{statistics.fmean(x for r in rs for x in r.trained):.1f}",
                f"{statistics.fmean(x for r in rs for x in r.step_wall):.3f}",
                f"{statistics.fmean(x for r in rs for x in r.step_cpu):.3f}",
                f"{statistics.fmean(x for r in rs for x in r.reward):.3f}",
                _mean_text([x for r in rs for x in r.update_kl], "{:+.4f}"),
                f"{statistics.fmean(r.eval_wall for r in rs):.1f}",
            ]
        )
    print_table(header, rows)


def score_at(runs: Sequence[MethodRun], domain: str, step: int) -> str:
    """Seed-mean held-out score at ``step`` (the last evaluation at or before it)."""
    values = [next((sc.avg for st, sc in reversed(r.curve[domain]) if st <= step), float("nan")) for r in runs]
    return f"{statistics.fmean(values):.3f}"


def _steps_text(steps: Sequence[int | None], run_length: int) -> tuple[float, str]:
    """(mean, 'mean [min-max]') over seeds; 'not reached' counts as the run length."""
    values = [run_length if s is None else s for s in steps]
    mean = statistics.fmean(values)
    missed = sum(s is None for s in steps)
    spread = f" [{min(values)}-{max(values)}]" if len(values) > 1 else ""
    return mean, f"{mean:.1f}{spread}" + (f" ({missed} not reached)" if missed else "")


def summarize(
    reached: Mapping[str, Mapping[str, list[int | None]]],
    runs: Mapping[str, list[MethodRun]],
    step0: Mapping[str, Score],
    teachers: Mapping[str, Score],
    args: argparse.Namespace,
    methods: tuple[str, str] = METHODS,
    at: int = 30,
) -> float:
    """The steps-to-teacher table; returns mean steps of the second method / mean steps of the first (MOPD)
    over the domains below teacher level at step 0."""
    first, second = methods
    steps = len(runs[first][0].kl)
    print(
        f"\n== {first} vs {second}: steps to teacher level (score >= teacher - {args.margin:g}; mean [min-max] over "
        f"{len(runs[first])} seed(s), 'not reached' counts as {steps})"
    )
    header = ["domain", "teacher", "start", f"{first} steps", f"{second} steps", "ratio"]
    header += [f"{m} @{at}" for m in methods] + [f"{m} final" for m in methods]
    rows, firsts, seconds = [], [], []
    for domain, by_method in reached.items():
        head = [domain, f"{teachers[domain].avg:.3f}", f"{step0[domain].avg:.3f}"]
        tail = [score_at(runs[m], domain, at) for m in methods] + [score_at(runs[m], domain, steps) for m in methods]
        if all(s == 0 for m in methods for s in by_method[m]):
            rows.append([*head, "at teacher level at step 0", "-", "-", *tail])
            continue
        (a, a_text), (b, b_text) = (_steps_text(by_method[m], steps) for m in methods)
        firsts.append(a)
        seconds.append(b)
        rows.append([*head, a_text, b_text, f"{b / a:.2f}" if a else "-", *tail])
    print_table(header, rows)
    if not firsts:
        print("no domain starts below teacher level: nothing to compare (ratio 1.00 by convention)")
        return 1.0
    ratio = statistics.fmean(seconds) / max(statistics.fmean(firsts), 1e-9)
    print(
        f"over {len(firsts)} domain(s) below teacher level at step 0: mean steps {first} "
        f"{statistics.fmean(firsts):.1f}, {second} {statistics.fmean(seconds):.1f}; ratio {ratio:.2f}"
    )
    return ratio
