"""MOPD vs multi-domain GRPO, and MOPD vs RLHF, from the same start: steps to teacher level (SPEC section 5).

The published experiment: MOPD (dense token-level advantage log pi_teacher - log pi_train) reaches its
teachers' level within ~30 steps where GRPO (sequence-level rewards) does not, and on the chat domain it
beats RLHF in fewer steps. This benchmark repeats both on a Cascade run folder:

  * the run: ``--run`` (default runs/tiny-cascade, what ``make demo`` writes); trained with ``--recipe`` when
    it is missing or unfinished, so a fresh clone needs only this command;
  * the start: by default the recipe's SFT stage cut to ``--start-sft-steps`` steps (its LR schedule spanning
    those steps), from the run's base model: a student clearly below the run's later checkpoints on several
    domains; the table "teachers" prints the gaps and how many domains start at least 0.1 below. ``--start
    STAGE`` starts from a stage of the run instead;
  * teachers: chosen per domain from the ledger rows before the MOPD stage by the pipeline's own
    ``build_teachers`` (validation split), i.e. exactly what the MOPD stage got;
  * (a) MOPD: the recipe's MOPD stage (4 rollouts per prompt, published); (b) GRPO: the same stage as an
    ``rl`` stage with ``advantage: grpo`` (dynamic filtering on as in the cascade's GRPO stages, so GRPO
    samples more rollouts than it trains on; ``--grpo-filtering off`` equalises the sampling budget); same
    prompts, prompts x rollouts per step, LR schedule, steps; seeds stage seed, +1, ... (``--seeds``, 3);
  * every ``--every`` steps, held-out ``evaluate`` on every MOPD domain (``--eval-n`` x ``--eval-samples``,
    256 x 4: one evaluation's standard error is printed, about 0.02), and each teacher with the same settings;
  * steps to teacher level = the first evaluation with score >= teacher - ``--margin`` (0.05); "not
    reached" counts as the run length; per domain the mean and [min-max] over seeds, the score after 30
    steps and at the end; the curves (seed means) in one PNG, a panel per domain;
  * reverse KL to each domain's teacher on every training batch, for both methods;
  * MOPD vs RLHF (``--rlhf-steps``): the recipe's RLHF stage (reward model, KL to its start) against
    MOPD on the RLHF prompts with the run's best chat checkpoint as teacher, same start, each with its own
    stage's rollouts per step, the same table and plot;
  * then our MOPD step is timed against TRL ``DistillationTrainer`` (``bench/_mopd_step_time.py``).

Usage: .venv/bin/python bench/mopd_vs_grpo.py [--run runs/tiny-cascade] [--compare both|grpo|rlhf] [--seeds 3]
       [--steps 30] [--every 10] [--eval-n 256] [--eval-samples 4] [--start early-sft] [--start-sft-steps 100]
       [--rlhf-steps 30] [--grpo-filtering on|off] [--threads 2] [--skip-trl]
From a fresh clone this one command trains the demo run first (about 13 minutes), then compares (about 40
minutes for both comparisons with two threads). The last line printed is ``ratio: X.XX`` = mean steps GRPO
needs to reach teacher level over the mean steps MOPD needs (over the domains below teacher level at the
start; with ``--compare rlhf``, RLHF's steps over MOPD's); higher is better for MOPD.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import DTYPE, ROOT, TOKEN_BUDGET, clocks, note, print_table, quiet, short
from bench._mopd_report import (
    METHODS,
    MethodRun,
    Score,
    Setup,
    print_kl,
    print_training,
    report,
    summarize,
)
from bench._mopd_start import early_sft, ensure_run
from bench._mopd_step_time import time_vs_trl
from cascade_rl.config import (
    DataConfig,
    EngineConfig,
    EvalConfig,
    ModelConfig,
    MOPDStage,
    PipelineConfig,
    RLStage,
    load_config,
)
from cascade_rl.data.build import prompt_domains, prompts_for, resolve_domain
from cascade_rl.engines.backend import LocalBackend
from cascade_rl.engines.base import Generator
from cascade_rl.engines.local import LocalGenerator
from cascade_rl.eval.ledger import Ledger, LedgerRow, best_overall
from cascade_rl.eval.runner import column, evaluate, evaluate_prompts
from cascade_rl.loops.common import set_seed
from cascade_rl.loops.objectives import TeacherRouter, base_sequence
from cascade_rl.loops.pipeline import build_teachers
from cascade_rl.loops.rl import build_objective, objective_name, update
from cascade_rl.loops.rollout import PromptPool, Rollouts
from cascade_rl.rewards.reward_fn import RewardContext, build_reward
from cascade_rl.types import TrajectoryGroup

EARLY = "early-sft"  # the default start: the recipe's SFT cut short


# --------------------------------------------------------------------------- the run folder


def read_run(run: Path, start: str | None = None) -> Setup:
    """The run's MOPD stage, its teachers' ledger, and the start checkpoint: by default the model MOPD
    started from; ``start`` names an earlier stage (or "base") to start both methods further from the teachers."""
    config = load_recipe(run / "recipe.yaml")
    index = next((i for i, s in enumerate(config.stages) if isinstance(s, MOPDStage)), None)
    if index is None:
        raise SystemExit(f"{run}/recipe.yaml has no mopd stage")
    stage = config.stages[index]
    assert isinstance(stage, MOPDStage)
    names = ["base", *(s.name for s in config.stages[:index])]
    start_name = start or names[-1]
    if start_name not in names:
        raise SystemExit(f"--start {start_name!r}: expected one of {', '.join(names)} (the stages before MOPD)")
    position = names.index(start_name) - 1
    start_dir = run / "base" / "model" if position < 0 else run / "stages" / f"{position:02d}-{start_name}" / "model"
    if not (start_dir / "config.json").is_file():
        raise SystemExit(f"{start_dir} is missing: the run has not finished that stage")
    ledger = ledger_before(run, config, index)
    eval_thinking = config.eval.thinking
    thinking = stage.thinking if stage.thinking in eval_thinking else eval_thinking[0]  # as build_teachers picks
    domains = prompt_domains(stage.prompts, "rl")  # as build_teachers lists them
    return Setup(config, stage, start_name, start_dir, ledger, domains, thinking)


def ledger_before(run: Path, config: PipelineConfig, index: int) -> Ledger:
    """The ledger as it stood when stage ``index`` started: the base row (if scored) plus the stages before
    it; later rows, the stage's own included, must not pick its teachers. Checkpoint paths are made absolute:
    a run written with a relative output_dir stores them relative to where the pipeline ran."""
    before = {*(["base"] if config.eval.base else []), *(s.name for s in config.stages[:index])}
    before -= {s.name for s in config.stages[:index] if s.type == "reward_model"}  # a reward, not a ledger row
    full = Ledger.load(run)
    rows = [
        LedgerRow(**{**vars(r), "checkpoint": str(resolve(r.checkpoint, run, config.output_dir))}) for r in full.rows
    ]
    ledger = Ledger([r for r in rows if r.stage in before])
    missing = sorted(before - {r.stage for r in ledger.rows})
    if missing:
        raise SystemExit(f"{run}/ledger.json lacks rows for {', '.join(missing)}")
    return ledger


def load_recipe(path: Path) -> PipelineConfig:
    """The run's resolved recipe. A run made before MOPD became its own stage type wrote ``advantage: mopd``
    into its MOPD stage (then a subclass of the RL stage); that field means nothing else and is dropped."""
    tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    for stage in tree.get("stages") or []:
        if isinstance(stage, dict) and stage.get("type") == "mopd" and stage.get("advantage") == "mopd":
            del stage["advantage"]
    return load_config(tree)


def resolve(path: str, run: Path, output_dir: str) -> Path:
    """A ledger checkpoint inside this run folder. The pipeline writes them under its ``output_dir``, as
    seen from where it ran; a run folder copied or read from elsewhere has them under ``run`` instead."""
    relative = Path(path)
    if not relative.is_absolute() and relative.is_relative_to(output_dir):
        relative = relative.relative_to(output_dir)
    candidate = run / relative if not relative.is_absolute() else relative
    if not (candidate / "config.json").is_file():
        raise SystemExit(f"ledger checkpoint {path} not found in {run}")
    return candidate.resolve()


def sources_by_domain(configs: Sequence[DataConfig], split: str) -> dict[str, DataConfig]:
    """Each domain the configs' prompts (of ``split``) resolve to -> the first config that yields it."""
    out: dict[str, DataConfig] = {}
    for c in configs:
        for d in prompt_domains([c], split):
            out.setdefault(d, c)
    return out


def eval_config(setup: Setup, n: int, samples: int) -> EvalConfig:
    """The recipe's held-out sets of the MOPD domains, larger (n) so one evaluation has a small error."""
    by_domain = sources_by_domain(setup.config.eval.domains, "test")
    from_stage = sources_by_domain(setup.stage.prompts, "rl")
    domains: list[DataConfig] = []
    for d in setup.domains:
        base = by_domain.get(d)
        if base is None:  # a MOPD domain the recipe does not evaluate: its prompt source, held-out split
            base = from_stage[d].model_copy(update={"split": None})
        domains.append(base.model_copy(update={"n": n, "weight": 1.0}) if base.task else base)
    domains = list(dict.fromkeys(domains))  # a prompt file holding several domains is evaluated once
    return setup.config.eval.model_copy(update={"domains": domains, "samples": samples, "thinking": [setup.thinking]})


def local_backend(model: Path) -> LocalBackend:
    """The engines of this benchmark: in-process, fp32, the engine section's default micro-batch budget."""
    return LocalBackend(EngineConfig(microbatch_tokens=TOKEN_BUDGET), ModelConfig(spec=str(model), dtype=DTYPE))


# --------------------------------------------------------------------------- teachers


TEST_SPLIT_TEACHERS = (
    "ledger has no validation scores (run made before the validation split): "
    "teachers chosen on the test split, as that run did"
)


def teachers_for(setup: Setup, backend: LocalBackend) -> tuple[TeacherRouter, dict, bool]:
    """The MOPD stage's teachers: ``build_teachers`` (validation split), or for a ledger without validation
    scores, each domain's best test score (``Ledger.best()``, the base row included) as that run chose them.

    Returns (router, {"domains": chosen, "default": default}, whether they were chosen on the test split)."""
    if any(r.validation for r in setup.ledger.rows):
        router, used = build_teachers(setup.stage, setup.config, setup.ledger, backend)
        return router, used, False
    stage = setup.stage
    best = setup.ledger.best()
    chosen = dict(stage.teachers)
    for domain in setup.domains:
        if domain in chosen:
            continue
        row = best.get(column(domain, setup.thinking))
        if row is None and stage.default_teacher is not None:
            continue
        if row is None:
            raise KeyError(
                f"no ledger score for domain {domain!r} ({'think' if setup.thinking else 'direct'}) to pick a teacher"
            )
        chosen[domain] = row.checkpoint
    # that run's default teacher: the recipe's, else the row with the highest summed test score
    default = stage.default_teacher or max(setup.ledger.rows, key=lambda r: sum(r.scores.values())).checkpoint
    paths = {**chosen, "__default__": default}
    loaded = {p: backend.scorer(p, offload=stage.teachers_on_demand) for p in dict.fromkeys(paths.values())}
    router = TeacherRouter({d: loaded[p] for d, p in paths.items()}, default="__default__")
    return router, {"domains": chosen, "default": default}, True


# --------------------------------------------------------------------------- held-out evaluation


def _scores_from_samples(samples_file: Path, per_prompt: int) -> dict[str, Score]:
    """Per-domain mean and standard error; a prompt's samples are consecutive rows of the file."""
    by_domain: dict[str, list[float]] = defaultdict(list)
    with samples_file.open(encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            by_domain[row["domain"]].append(float(row["score"]))
    out = {}
    for domain, values in by_domain.items():
        prompts = [statistics.fmean(values[i : i + per_prompt]) for i in range(0, len(values), per_prompt)]
        se = statistics.stdev(prompts) / math.sqrt(len(prompts)) if len(prompts) > 1 else float("nan")
        out[domain] = Score(statistics.fmean(prompts), se)
    return out


def eval_student(generator: Generator, tokenizer: Any, cfg: EvalConfig, tmp: Path) -> dict[str, Score]:
    samples = tmp / "eval_samples.jsonl"
    with quiet():
        scores = evaluate(generator, tokenizer, cfg, samples_file=samples)
    out = _scores_from_samples(samples, scores[0].samples)
    for s in scores:  # the library's own average and ours must agree, or the SE is of something else
        assert abs(out[s.domain].avg - s.avg) < 1e-9, (s.domain, out[s.domain].avg, s.avg)
    return out


def eval_teachers(
    chosen: Mapping[str, str], cfg: EvalConfig, thinking: bool, backend: LocalBackend, tmp: Path
) -> dict[str, Score]:
    """Each domain's teacher on that domain only, with the students' evaluation settings."""
    by_path: dict[str, list[str]] = defaultdict(list)
    for domain, path in chosen.items():
        by_path[path].append(domain)
    data = sources_by_domain(cfg.domains, "test")
    out: dict[str, Score] = {}
    for path, domains in by_path.items():
        generator, tokenizer = backend.eval_generator(path, cfg.batch_size), backend.tokenizer(path)
        for domain in domains:
            samples = tmp / "teacher_samples.jsonl"
            samples.unlink(missing_ok=True)
            prompts = [p for p in prompts_for(data[domain], "test") if p.domain == domain]
            with quiet():
                [score] = evaluate_prompts(generator, tokenizer, prompts, cfg, thinking, samples_file=samples)
            out[domain] = _scores_from_samples(samples, score.samples)[domain]
        del generator
    return out


# --------------------------------------------------------------------------- training runs


def grpo_stage(mopd: MOPDStage, filtering: bool) -> RLStage:
    """The MOPD stage as a multi-domain GRPO stage: same prompts, batch, LR, steps and seed."""
    mopd_only = set(MOPDStage.model_fields) - set(RLStage.model_fields)
    fields = mopd.model_dump(exclude=mopd_only | {"type", "name", "dynamic_filtering"})
    return RLStage(**fields, name="grpo", advantage="grpo", dynamic_filtering=filtering)


def reverse_kl(
    router: TeacherRouter, groups: Sequence[TrajectoryGroup], stage: RLStage | MOPDStage
) -> dict[str, tuple[float, int]]:
    """Per domain (and "all"): (sum over trained tokens of log pi_inf - log pi_teacher, token count).

    MOPD's own metric uses pi_train; at T=1 on-policy they agree to ~1e-6 (see abs_logprob_diff), and
    pi_inf lets GRPO, whose update never calls a teacher, be measured with the same estimator. The
    teachers score at the sampling temperature, as in MOPD's objective."""
    trajectories = [t for g in groups for t in g.trajectories]
    # the trained tokens exactly as the objectives mask them (a truncated one: none, under overlong filtering)
    seqs = [base_sequence(t, g.index, stage.overlong_filtering) for g in groups for t in g.trajectories]
    teacher = router.logprobs(seqs, [t.domain for t in trajectories], stage.temperature)
    out: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for traj, seq, t_lp in zip(trajectories, seqs, teacher, strict=True):
        inf = seq.values["inf_logprobs"]
        diff = sum(i - t for i, t, m in zip(inf, t_lp, seq.mask, strict=True) if m)
        tokens = sum(seq.mask)
        for key in (traj.domain, "all"):
            out[key][0] += diff
            out[key][1] += tokens
    return {k: (v[0], int(v[1])) for k, v in out.items()}


def train(
    method: str,
    stage: RLStage | MOPDStage,
    setup: Setup,
    router: TeacherRouter,
    cfg: EvalConfig,
    every: int,
    step0: dict[str, Score],
    tmp: Path,
) -> MethodRun:
    """``run_rl``'s setup and loop body, with held-out evaluations every ``every`` steps."""
    run = MethodRun(method, stage.seed)
    for domain, score in step0.items():
        run.curve[domain].append((0, score))
    start = setup.start_dir
    backend = local_backend(start)
    set_seed(stage.seed)
    tokenizer = backend.tokenizer(start)
    pool = PromptPool([prompts_for(c, "rl") for c in stage.prompts], [c.weight for c in stage.prompts])
    objective = build_objective(stage, router if isinstance(stage, MOPDStage) else None)
    reward_fn = build_reward(stage.reward.type, RewardContext(stage.reward_workers, backend), **stage.reward.args)
    # what run_rl does for a KL-regularised stage: the frozen initial policy
    reference = backend.scorer(start) if stage.kl_coef > 0 else None
    policy = backend.policy(start, stage.optim, stage.steps)
    generator = backend.generator(policy)
    generator.sync(policy, 0)
    rollouts = Rollouts(stage, pool, generator, tokenizer, reward_fn, objective.filters_constant_groups)
    # held-out evaluation of the policy being trained, with the evaluator's batch size (as eval_generator)
    evaluator = LocalGenerator(policy.model, batch_size=cfg.batch_size)
    for step in range(stage.steps):
        wall, cpu = clocks()
        groups, stats = rollouts.collect(step)
        probe_wall, probe_cpu = clocks()
        run.kl.append(reverse_kl(router, groups, stage))  # the policy the batch was sampled from
        probe_wall, probe_cpu = time.perf_counter() - probe_wall, time.process_time() - probe_cpu
        metrics = update(policy, objective, groups, stage, reference)
        generator.sync(policy, step + 1)
        if "reverse_kl" in metrics:
            run.update_kl.append(metrics["reverse_kl"])
        run.step_wall.append(time.perf_counter() - wall - probe_wall)
        run.step_cpu.append(time.process_time() - cpu - probe_cpu)
        run.sampled.append(int(stats["kept_groups"] + stats["dropped_groups"]) * stage.group_size)
        run.trained.append(sum(len(g.trajectories) for g in groups))
        run.reward.append(float(stats.get("reward", 0.0)))
        done = step + 1
        if done % every == 0 or done == stage.steps:
            t0 = time.perf_counter()
            for domain, score in eval_student(evaluator, tokenizer, cfg, tmp).items():
                run.curve[domain].append((done, score))
            run.eval_wall += time.perf_counter() - t0
            scores = " ".join(f"{d} {run.curve[d][-1][1].avg:.3f}" for d in setup.domains)
            note(f"  {method} seed {stage.seed} step {done}/{stage.steps}: {scores}")
    reward_fn.close()
    del policy, generator, evaluator, rollouts, reference
    return run


# --------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--run", type=Path, default=ROOT / "runs" / "tiny-cascade", help="Cascade run folder (trained if missing)"
    )
    parser.add_argument(
        "--recipe", type=Path, default=ROOT / "recipes" / "tiny-cascade.yaml", help="recipe that trains a missing run"
    )
    parser.add_argument("--steps", type=int, default=30, help="RL steps per method")
    parser.add_argument("--every", type=int, default=10, help="evaluate held-out every N steps")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per method (stage seed, seed + 1, ...)")
    parser.add_argument("--eval-n", type=int, default=256, help="held-out prompts per domain")
    parser.add_argument("--eval-samples", type=int, default=4, help="samples per held-out prompt")
    parser.add_argument("--margin", type=float, default=0.05, help="teacher level = teacher score - margin")
    parser.add_argument(
        "--start",
        default=EARLY,
        help=f"{EARLY} (default): the recipe's SFT cut to --start-sft-steps, below the run's teachers; or a stage "
        "whose checkpoint both methods start from (e.g. the one the recipe's MOPD started from)",
    )
    parser.add_argument("--start-sft-steps", type=int, default=100, help=f"SFT steps of the {EARLY} start")
    parser.add_argument("--rlhf-steps", type=int, default=30, help="steps of MOPD vs RLHF on chat")
    parser.add_argument(
        "--compare", choices=("both", "grpo", "rlhf"), default="both", help="MOPD vs GRPO, vs RLHF, or both"
    )
    parser.add_argument(
        "--grpo-filtering",
        choices=("on", "off"),
        default="on",
        help="GRPO dynamic filtering: on as in the cascade's GRPO stages; off = equal sampling budget",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the TRL step-time comparison too)")
    parser.add_argument("--skip-trl", action="store_true", help="skip the step-time comparison with TRL")
    parser.add_argument("--trl-steps", type=int, default=4, help="timed steps per system (warm-up included)")
    parser.add_argument("--trl-warmup", type=int, default=1, help="first steps of each system not timed")
    args = parser.parse_args()
    if args.steps < 1 or args.every < 1 or args.seeds < 1:
        parser.error("--steps, --every and --seeds must be positive")
    if args.trl_steps <= args.trl_warmup:
        parser.error("--trl-steps must exceed --trl-warmup")
    return args


def print_plan(
    setup: Setup,
    run_dir: Path,
    mopd: MOPDStage,
    grpo: RLStage,
    cfg: EvalConfig,
    on_test: bool,
    args: argparse.Namespace,
) -> None:
    """What is compared: start checkpoint, teachers' ledger rows, both methods' settings, the held-out evaluation."""
    print(f"== MOPD vs multi-domain GRPO on {run_dir}")
    origin = {
        EARLY: f"the recipe's SFT cut to {args.start_sft_steps} steps",
        None: f"the model the recipe's MOPD stage {setup.stage.name!r} started from",
    }.get(args.start, "chosen with --start")
    print(
        f"start checkpoint: {short(setup.start_dir, run_dir)} (stage {setup.start_name!r}, {origin}); "
        f"teachers from ledger rows {', '.join(r.stage for r in setup.ledger.rows)}"
    )
    if on_test:
        print(TEST_SPLIT_TEACHERS)
    print(
        f"both: {mopd.prompts_per_step} prompts x {mopd.group_size} rollouts per step, {args.steps} steps, "
        f"max {mopd.max_new_tokens} new tokens, T={mopd.temperature}, lr {mopd.optim.lr:g} "
        f"(warm-up {mopd.optim.warmup_steps} steps), seeds {[mopd.seed + i for i in range(args.seeds)]}, "
        f"prompt mix {', '.join(f'{resolve_domain(p)}:{p.weight:g}' for p in mopd.prompts)}"
    )
    print(
        f"MOPD: objective {objective_name(mopd)}, reduction {mopd.reduction}, dynamic filtering off; "
        f"GRPO: advantage grpo, dynamic filtering {args.grpo_filtering}"
        + (
            f" (constant-reward groups dropped and refilled, up to {grpo.max_sampling_rounds} sampling rounds: "
            "GRPO samples more rollouts per step than it trains on; see 'rollouts sampled')"
            if args.grpo_filtering == "on"
            else " (equal sampling budget: both sample and train the same number of rollouts)"
        )
    )
    print(
        f"held-out eval: {args.eval_n} prompts x {cfg.samples} samples per domain, T={cfg.temperature}, "
        f"seed {cfg.seed}, {'thinking' if setup.thinking else 'direct'} mode, every {args.every} steps"
    )


def score_start_and_teachers(
    setup: Setup, run_dir: Path, chosen: Mapping[str, str], cfg: EvalConfig, backend: LocalBackend, tmp: Path
) -> tuple[dict[str, Score], dict[str, Score], set[str]]:
    """Held-out scores of the start checkpoint and of each domain's teacher, printed as a table.

    Returns (start scores, teacher scores, the domains whose teacher is the start checkpoint itself)."""
    note("evaluating the teachers and the start checkpoint ...")
    generator = backend.eval_generator(setup.start_dir, cfg.batch_size)
    step0 = eval_student(generator, backend.tokenizer(setup.start_dir), cfg, tmp)
    del generator
    # A teacher that is the start checkpoint itself scores exactly the step-0 score (same eval seed).
    same = {d for d, p in chosen.items() if Path(p).resolve() == setup.start_dir.resolve()}
    teachers = {d: step0[d] for d in same}
    others = {d: p for d, p in chosen.items() if d not in same}
    teachers |= eval_teachers(others, cfg, setup.thinking, backend, tmp)

    print("\n== teachers (held-out, same evaluation settings)")
    print_table(
        ["domain", "teacher checkpoint", "ledger score", "teacher score", "start score", "gap"],
        [
            [
                d,
                short(chosen[d], run_dir),
                _ledger_score(setup.ledger, chosen[d], d, setup.thinking),
                teachers[d].text(),
                step0[d].text(),
                f"{teachers[d].avg - step0[d].avg:+.3f}",
            ]
            for d in setup.domains
        ],
    )
    ses = [s.se for s in (*step0.values(), *teachers.values())]
    print(f"standard error of one evaluation: {min(ses):.3f}-{max(ses):.3f} (over prompts)")
    return step0, teachers, same


def compare_rlhf(setup: Setup, run_dir: Path, args: argparse.Namespace, backend: LocalBackend, tmp: Path) -> float:
    """The paper's second comparison: MOPD against the recipe's RLHF stage (a reward model's scores) on the
    RLHF stage's prompts, from the same start. MOPD's teacher per domain is the run's best checkpoint on it
    before the RLHF stage (test split: these domains have no validation sets); each method keeps its own
    stage's rollouts per step. Returns mean steps RLHF / mean steps MOPD to teacher level."""
    config = setup.config
    names = {s.name: i for i, s in enumerate(config.stages)}
    index = next(i for i, s in enumerate(config.stages) if isinstance(s, RLStage) and s.reward.type == "reward_model")
    rlhf = config.stages[index]
    assert isinstance(rlhf, RLStage)
    reward_args = {
        k: str(run_dir / "stages" / f"{names[v[6:]]:02d}-{v[6:]}" / "model") if str(v).startswith("stage:") else v
        for k, v in rlhf.reward.args.items()
    }
    rlhf = rlhf.model_copy(
        update={"steps": args.rlhf_steps, "reward": rlhf.reward.model_copy(update={"args": reward_args})}
    )
    ledger = ledger_before(run_dir, config, index)
    domains = prompt_domains(rlhf.prompts, "rl")
    best = Ledger([r for r in ledger.rows if r.stage != "base"]).best()
    chosen = {d: best[column(d, False)].checkpoint for d in domains}
    mopd = setup.stage.model_copy(
        update={
            "prompts": rlhf.prompts,
            "teachers": chosen,
            "steps": args.rlhf_steps,
            "thinking": rlhf.thinking,
            "max_new_tokens": rlhf.max_new_tokens,
        }
    )
    chat = replace(setup, stage=mopd, ledger=ledger, domains=domains, thinking=False)
    cfg = eval_config(chat, args.eval_n, args.eval_samples)
    router = TeacherRouter({d: backend.scorer(p) for d, p in chosen.items()})
    print(
        f"\n== MOPD vs RLHF ({rlhf.name}: reward model {short(reward_args.get('model', '?'), run_dir)}, "
        f"kl_coef {rlhf.kl_coef:g}) on {', '.join(domains)}, from {short(setup.start_dir, run_dir)}: MOPD "
        f"{mopd.prompts_per_step} prompts x {mopd.group_size} rollouts, RLHF {rlhf.prompts_per_step} x "
        f"{rlhf.group_size}, {args.rlhf_steps} steps each; thinking {rlhf.thinking} in training, evaluated direct"
    )
    step0, teachers, _ = score_start_and_teachers(chat, run_dir, chosen, cfg, backend, tmp)
    runs: dict[str, list[MethodRun]] = {"MOPD": [], "RLHF": []}
    for i in range(args.seeds):
        for method, stage in (("MOPD", mopd), ("RLHF", rlhf)):
            seeded = stage.model_copy(update={"seed": stage.seed + i})
            note(f"training {method} on {', '.join(domains)}, seed {seeded.seed} ...")
            runs[method].append(train(method, seeded, chat, router, cfg, args.every, step0, tmp))
    reached = report(chat, run_dir, runs, teachers, chosen, args, ("MOPD", "RLHF"))
    return summarize(reached, runs, step0, teachers, args, ("MOPD", "RLHF"))


def compare_grpo(setup: Setup, run_dir: Path, args: argparse.Namespace, backend: LocalBackend, tmp: Path) -> float:
    """MOPD vs multi-domain GRPO on the MOPD stage's domains; returns mean steps GRPO / mean steps MOPD."""
    mopd = setup.stage.model_copy(update={"steps": args.steps})
    grpo = grpo_stage(mopd, args.grpo_filtering == "on")
    with quiet():
        router, used, on_test = teachers_for(setup, backend)
    chosen: dict[str, str] = used["domains"]
    cfg = eval_config(setup, args.eval_n, args.eval_samples)
    print_plan(setup, run_dir, mopd, grpo, cfg, on_test, args)
    step0, teachers, same = score_start_and_teachers(setup, run_dir, chosen, cfg, backend, tmp)
    below = [d for d in setup.domains if teachers[d].avg - step0[d].avg >= 0.1]
    print(f"start at least 0.1 below its teacher on {len(below)} of {len(setup.domains)} domains: {below}")
    # Both methods train on every domain's prompts; the held-out curves are needed only where the start is
    # below teacher level (elsewhere both are at it at step 0, which is no win for either).
    compared = [d for d in setup.domains if step0[d].avg < teachers[d].avg - args.margin]
    at_level = [d for d in setup.domains if d not in compared]
    if at_level:
        print(f"at teacher level at step 0 (not evaluated further): {', '.join(at_level)}")
    tracked = replace(setup, domains=compared)
    cfg = eval_config(tracked, args.eval_n, args.eval_samples)

    runs: dict[str, list[MethodRun]] = {m: [] for m in METHODS}
    stages: dict[str, RLStage | MOPDStage] = {"MOPD": mopd, "GRPO": grpo}
    for i in range(args.seeds):
        for m in METHODS:
            stage = stages[m].model_copy(update={"seed": stages[m].seed + i})
            note(f"training {m}, seed {stage.seed} ...")
            runs[m].append(train(m, stage, tracked, router, cfg, args.every, step0, tmp))

    reached = report(tracked, run_dir, runs, teachers, chosen, args)
    print_kl(runs, setup, args.every)
    print_training(runs, stages)
    if not args.skip_trl:
        note("timing ours vs TRL DistillationTrainer ...")
        # One teacher for both systems: the first domain's teacher that is not the student itself, else
        # the default teacher (the recipe's, or the pipeline's best overall when it named none).
        others = [Path(p) for d, p in sorted(chosen.items()) if d not in same]
        default = used["default"] or best_overall(setup.ledger, setup.stage.base_as_teacher).checkpoint
        teacher_dir = others[0] if others else Path(default)
        time_vs_trl(setup.stage, setup.start_dir, teacher_dir, args.trl_steps, args.trl_warmup, tmp)
    return summarize(reached, runs, step0, teachers, args)


def main() -> None:
    args = parse_args()

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("trl").setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    run_dir = args.run.resolve()
    ensure_run(run_dir, args.recipe.resolve(), ROOT)
    setup = read_run(run_dir, None if args.start == EARLY else args.start)
    backend = local_backend(setup.start_dir)
    if args.start == EARLY:
        start_dir = early_sft(run_dir, setup.config, args.start_sft_steps, backend)
        setup = replace(setup, start_name=start_dir.parent.name, start_dir=start_dir)
    ratios: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if args.compare in ("both", "grpo"):
            ratios["GRPO"] = compare_grpo(setup, run_dir, args, backend, tmp)
        has_rlhf = any(isinstance(s, RLStage) and s.reward.type == "reward_model" for s in setup.config.stages)
        if args.compare in ("both", "rlhf") and has_rlhf:
            ratios["RLHF"] = compare_rlhf(setup, run_dir, args, backend, tmp)
        elif args.compare in ("both", "rlhf"):
            print("the recipe has no RLHF stage (reward: reward_model): MOPD vs RLHF skipped")
    print(f"runtime: {time.perf_counter() - started:.0f} s wall, {time.process_time():.0f} s CPU (this process)")
    for method, ratio in ratios.items():
        print(f"steps {method} / steps MOPD to teacher level: {ratio:.2f}")
    print(f"ratio: {next(iter(ratios.values()), 1.0):.2f}")


def _ledger_score(ledger: Ledger, checkpoint: str, domain: str, thinking: bool) -> str:
    row = next((r for r in ledger.rows if Path(r.checkpoint).resolve() == Path(checkpoint).resolve()), None)
    score = None if row is None else row.scores.get(column(domain, thinking))
    return "-" if score is None else f"{score:.3f}"


if __name__ == "__main__":
    main()
