"""PNG plots of a run: the stage x domain ledger heatmap and the per-stage reward curves."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cascade_rl.eval.ledger import Ledger
from cascade_rl.logging import read_metrics


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def ledger_heatmap(ledger: Ledger, path: Path) -> Path:
    plt = _pyplot()
    cols, rows = ledger.columns, ledger.rows
    values = [[r.scores.get(c, float("nan")) for c in cols] for r in rows]
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(cols), 1.0 + 0.5 * len(rows)))
    image = ax.imshow(values, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), [r.stage for r in rows])
    best = ledger.best()
    for i, row in enumerate(rows):
        for j, col in enumerate(cols):
            if col in row.scores:
                mark = "*" if best.get(col) is row else ""
                ax.text(j, i, f"{row.scores[col]:.2f}{mark}", ha="center", va="center", color="white", fontsize=8)
    fig.colorbar(image, ax=ax, fraction=0.04)
    ax.set_title("held-out score after each stage (* = best so far)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def reward_curves(metrics_files: Mapping[str, Path], path: Path, key: str = "reward", columns: int = 4) -> Path:
    """Training reward per domain against step, one panel per RL stage: each step's value (faint) under
    its moving average. A stage that logs a per-domain reverse KL to its teachers (MOPD) gets a second
    panel right after it with that KL, the quantity it minimises. Panels wrap after ``columns``."""
    plt = _pyplot()
    panels: list[tuple[str, dict[str, list[tuple[int, float]]], bool]] = []  # (title, series, is a reward)
    for name, file in metrics_files.items():
        rows = read_metrics(file) if file.exists() else []
        if any(key in r for r in rows):
            panels.append((f"{name}: {key}", _series(rows, key), True))
            if kl := _series(rows, KL_KEY):
                panels.append((f"{name}: reverse KL to teacher", kl, False))
    cols = max(1, min(columns, len(panels)))
    grid = max(1, -(-len(panels) // cols))
    fig, axes = plt.subplots(grid, cols, figsize=(4 * cols, 3 * grid), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax, (title, series, is_reward) in zip(axes.flat, panels, strict=False):
        _smoothed_panel(ax, series, title)
        if is_reward:
            ax.set_ylim(-0.02, 1.02)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


KL_KEY = "reverse_kl"


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over the last ``window`` values (fewer at the start)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _smoothed_panel(ax: Any, series: Mapping[str, Sequence[tuple[int, float]]], title: str) -> None:
    for i, (label, points) in enumerate(sorted(series.items())):
        steps, values = [p[0] for p in points], [p[1] for p in points]
        color = f"C{i % 10}"
        window = max(3, len(values) // 8)
        ax.plot(steps, values, color=color, alpha=0.25, linewidth=0.8)
        ax.plot(steps, moving_average(values, window), color=color, linewidth=1.8, label=label)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("step")
    if series:
        ax.legend(fontsize=7)


def _series(rows: Sequence[Mapping], key: str) -> dict[str, list[tuple[int, float]]]:
    last: dict[int, Mapping] = {int(r["step"]): r for r in rows}  # resumed runs append: keep the last
    out: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for step in sorted(last):
        for name, value in last[step].items():
            if name.startswith(f"{key}/") and isinstance(value, int | float):
                out[name.split("/", 1)[1]].append((step, float(value)))
    return dict(out)


def comparison_grid(panels: Mapping[str, Mapping[str, Sequence[tuple[int, float]]]], path: Path, title: str) -> Path:
    """Held-out score against step for several methods (e.g. MOPD vs GRPO), one panel per domain; series
    named ``teacher`` (dashed) and ``teacher...`` (dotted) are reference lines."""
    plt = _pyplot()
    cols = min(3, max(1, len(panels)))
    rows = -(-max(1, len(panels)) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax, (domain, curves) in zip(axes.flat, panels.items(), strict=False):
        for label, points in curves.items():
            style: dict[str, Any] = {"marker": "o"}
            if label.startswith("teacher"):
                style = {"linestyle": "--" if label == "teacher" else ":", "color": "grey"}
            ax.plot([p[0] for p in points], [p[1] for p in points], label=label, **style)
        ax.set_title(domain, fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("held-out score")
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
