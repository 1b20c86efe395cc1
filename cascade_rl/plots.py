"""PNG plots of a run: the stage x domain ledger heatmap and the per-stage reward curves."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

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


def reward_curves(metrics_files: Mapping[str, Path], path: Path, key: str = "reward") -> Path:
    """Training reward (per domain when available) against step, one panel per RL stage."""
    plt = _pyplot()
    stages = [(name, read_metrics(f)) for name, f in metrics_files.items() if f.exists()]
    stages = [(n, rows) for n, rows in stages if any(key in r for r in rows)]
    fig, axes = plt.subplots(1, max(1, len(stages)), figsize=(4 * max(1, len(stages)), 3), squeeze=False)
    for ax, (name, rows) in zip(axes[0], stages, strict=False):
        for series, points in _series(rows, key).items():
            ax.plot([p[0] for p in points], [p[1] for p in points], label=series)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _series(rows: Sequence[Mapping], key: str) -> dict[str, list[tuple[int, float]]]:
    last: dict[int, Mapping] = {int(r["step"]): r for r in rows}  # resumed runs append: keep the last
    out: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for step in sorted(last):
        for name, value in last[step].items():
            if name.startswith(f"{key}/") and isinstance(value, int | float):
                out[name.split("/", 1)[1]].append((step, float(value)))
    return dict(out)


def comparison_curves(curves: Mapping[str, Sequence[tuple[int, float]]], path: Path, title: str) -> Path:
    """Held-out score against step for several methods (e.g. MOPD vs GRPO)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for label, points in curves.items():
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("held-out score")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
