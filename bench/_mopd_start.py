"""What ``bench/mopd_vs_grpo.py`` needs before it compares anything: a finished run, and a start checkpoint
clearly below that run's teachers.

* ``ensure_run``: the run folder, trained with the recipe's pipeline when it is missing or unfinished (from a
  fresh clone, the demo's recipe: the same folder ``make demo`` writes, resumed where it stopped);
* ``early_sft``: the recipe's SFT stage cut to its first N steps (its LR schedule spans those N steps), from
  the run's base model. The teachers are the run's later checkpoints, so the student starts below them on the
  domains SFT teaches slowly: the paper's setting, where MOPD starts from a model that trails its teachers.
"""

from __future__ import annotations

import os
from pathlib import Path

from cascade_rl.config import PipelineConfig, SFTStage, load_config
from cascade_rl.engines.backend import LocalBackend
from cascade_rl.loops.common import is_finished
from cascade_rl.loops.pipeline import RecipeMismatchError, run_pipeline
from cascade_rl.loops.sft import run_sft


def ensure_run(run: Path, recipe: Path, root: Path) -> None:
    """Train the run folder with ``recipe`` unless it already holds a finished run; a partial one resumes.

    The pipeline runs from ``root`` (the repository), so the demo's own folder (``runs/tiny-cascade``, the
    recipe's ``output_dir``) is the same run ``make demo`` writes and resumes; any other folder is passed as
    the recipe's ``output_dir``."""
    if (run / "recipe.yaml").is_file() and _finished(run, load_config(run / "recipe.yaml")):
        return
    config = load_config(recipe)
    if (root / config.output_dir).resolve() != run.resolve():
        config = load_config(recipe, [f"output_dir={run}"])
    print(f"{run} holds no finished run: training it with {recipe} (resumes if interrupted) ...", flush=True)
    previous = Path.cwd()
    os.chdir(root)
    try:
        run_pipeline(config)
    except RecipeMismatchError as exc:
        raise SystemExit(f"{exc}; pass --run with another folder") from None
    finally:
        os.chdir(previous)


def _finished(run: Path, config: PipelineConfig) -> bool:
    return all(is_finished(run / "stages" / f"{i:02d}-{s.name}" / "model") for i, s in enumerate(config.stages))


def early_sft(run: Path, config: PipelineConfig, steps: int, backend: LocalBackend) -> Path:
    """The recipe's first SFT stage for its first ``steps`` steps, from the run's base model (trained once)."""
    sft = next((s for s in config.stages if isinstance(s, SFTStage)), None)
    if sft is None:
        raise SystemExit(f"{run}/recipe.yaml has no SFT stage to cut short for the start checkpoint")
    folder = run / "bench" / f"early_sft_{steps}"
    if not is_finished(folder / "model"):
        print(f"training the start checkpoint: {sft.name} cut to {steps} steps -> {folder}", flush=True)
        stage = sft.model_copy(update={"max_steps": steps, "save_every": max(steps, 1)})
        run_sft(stage, backend, run / "base" / "model", folder)
    return folder / "model"
