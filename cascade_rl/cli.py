"""The ``cascade`` command line: run a Cascade recipe, single stages, evaluation, chat, the demo."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from cascade_rl.logging import console

app = typer.Typer(
    help="Cascade RL + MOPD post-training (the Nemotron-Cascade 2 recipe) for any Hugging Face causal LM.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

RECIPES = Path(__file__).resolve().parent / "recipes"  # shipped in the wheel
Overrides = Annotated[list[str] | None, typer.Argument(help="key.sub=value overrides, e.g. stages.sft.epochs=2")]


@app.callback()
def _options(
    threads: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="CPU threads for torch (default: torch's choice). Use 1 per process when several jobs share a "
            "small machine: oversubscribed cores slow torch down many times over.",
        ),
    ] = None,
) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
        _CHOSEN["threads"] = threads


_CHOSEN: dict[str, int] = {}  # global options the commands need to know were given


def _run_errors() -> tuple[type[Exception], ...]:
    """The errors a run ends with on purpose: said in one line, never as a traceback (imported when one happens)."""
    from cascade_rl.loops.common import CheckpointWriteError, NonFiniteTrainingError
    from cascade_rl.loops.pipeline import RecipeMismatchError
    from cascade_rl.loops.preflight import PreflightError

    return RecipeMismatchError, PreflightError, CheckpointWriteError, NonFiniteTrainingError


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)  # paths stay whole
    raise typer.Exit(2)


def recipe_path(recipe: Path) -> Path:
    """A recipe file, or the name of a recipe shipped with the package (``tiny-cascade``, ``smollm2-cascade``)."""
    if recipe.is_file():
        return recipe
    shipped = RECIPES / (recipe.name if recipe.suffix == ".yaml" else f"{recipe.name}.yaml")
    if len(recipe.parts) == 1 and shipped.is_file():
        return shipped
    names = ", ".join(sorted(p.stem for p in RECIPES.glob("*.yaml")))
    _fail(f"recipe not found: {recipe} (shipped recipes: {names})")
    raise AssertionError("unreachable")


def _config(recipe: Path, overrides: list[str] | None):
    from cascade_rl.config import ConfigError, load_config

    try:
        return load_config(recipe_path(recipe), overrides or [])
    except ConfigError as exc:
        _fail(str(exc))


def _print_result(result) -> None:  # noqa: ANN001
    from cascade_rl.eval.ledger import Ledger

    ledger: Ledger = result.ledger
    console.rule("ledger (held-out score after each stage)")
    console.print(ledger.to_markdown(), highlight=False)
    if result.teachers:
        console.print("\nMOPD teachers (best checkpoint per domain, from the ledger):")
        for stage, chosen in result.teachers.items():
            for domain, path in chosen["domains"].items():
                console.print(f"  {stage}: {domain} <- {path}", highlight=False, soft_wrap=True)
    if result.stage_times:
        console.print("\nstage wall time: " + ", ".join(f"{k} {v:.0f}s" for k, v in result.stage_times.items()))
    for plot in result.plots:
        console.print(f"plot: {plot}", highlight=False, soft_wrap=True)
    console.print(f"final model (Hugging Face folder): {result.final_model}", highlight=False, soft_wrap=True)


@app.command()
def run(recipe: Path, overrides: Overrides = None) -> None:
    """Run a Cascade recipe: stages in order, every domain evaluated after each; resumes if interrupted.

    RECIPE is a YAML file or the name of a shipped recipe (tiny-cascade, smollm2-cascade, nemotron-cascade-2).
    """
    from cascade_rl.loops.pipeline import run_pipeline

    config = _config(recipe, overrides)
    try:
        result = run_pipeline(config)
    except _run_errors() as exc:
        _fail(str(exc))
    _print_result(result)


def _single_stage(recipe: Path, overrides: list[str] | None, kinds: tuple[str, ...], name: str | None, resume: bool):
    from cascade_rl.config import dump_config
    from cascade_rl.loops.preflight import PreflightError, preflight

    config = _config(recipe, overrides)
    picked = [i for i, s in enumerate(config.stages) if s.type in kinds and (name is None or s.name == name)]
    if len(picked) != 1:
        names = [s.name for s in config.stages if s.type in kinds]
        _fail(f"{recipe}: expected exactly one {' or '.join(kinds)} stage (pass --stage NAME); found {names}")
    stage = config.stages[picked[0]]
    run_dir = Path(config.output_dir) / stage.name
    if (run_dir / "checkpoints").exists() and not resume:
        _fail(f"{run_dir} already holds checkpoints: pass --resume to continue, or choose another output_dir")
    try:
        preflight(config.model_copy(update={"eval": config.eval.model_copy(update={"domains": []})}), picked)
    except PreflightError as exc:
        _fail(str(exc))
    dump_config(config, run_dir / "recipe.yaml")  # the resolved recipe, so the run can be reproduced
    return config, stage, run_dir


def _backend(config):  # noqa: ANN001
    from cascade_rl.engines.backend import build_backend

    return build_backend(config.engine, config.model)


@app.command()
def sft(
    recipe: Path,
    overrides: Overrides = None,
    stage: Annotated[str | None, typer.Option(help="name of the sft stage to run")] = None,
    resume: Annotated[bool, typer.Option(help="continue from the newest checkpoint in the run folder")] = False,
) -> None:
    """Run one SFT stage of a recipe (packed sequences, per-token loss) from the recipe's model."""
    from cascade_rl.loops.sft import run_sft

    config, st, run_dir = _single_stage(recipe, overrides, ("sft",), stage, resume)
    try:
        out = run_sft(st, _backend(config), config.model.spec, run_dir)
    except _run_errors() as exc:
        _fail(str(exc))
    console.print(f"model: {out}", highlight=False)


@app.command()
def rl(
    recipe: Path,
    overrides: Overrides = None,
    stage: Annotated[str | None, typer.Option(help="name of the rl or mopd stage to run")] = None,
    resume: Annotated[bool, typer.Option(help="continue from the newest checkpoint in the run folder")] = False,
) -> None:
    """Run one RL or MOPD stage of a recipe from the recipe's model; writes an HF model folder.

    A MOPD stage run on its own takes its teachers from the stage's ``teachers`` (domain -> model folder)
    and ``default_teacher``: there is no ledger to choose them from.
    """
    from cascade_rl.config import MOPDStage
    from cascade_rl.loops.rl import run_rl

    config, st, run_dir = _single_stage(recipe, overrides, ("rl", "mopd"), stage, resume)
    backend = _backend(config)
    router = _explicit_teachers(st, backend) if isinstance(st, MOPDStage) else None
    try:
        out = run_rl(st, backend, config.model.spec, run_dir, teachers=router)
    except _run_errors() as exc:
        _fail(str(exc))
    console.print(f"model: {out}", highlight=False)


def _explicit_teachers(stage, backend):  # noqa: ANN001
    from cascade_rl.data.build import prompt_domains
    from cascade_rl.loops.objectives import TeacherRouter

    missing = sorted(set(prompt_domains(stage.prompts, "rl")) - set(stage.teachers))
    if missing and stage.default_teacher is None:
        _fail(
            f"MOPD stage {stage.name!r} on its own needs a teacher for every domain: {', '.join(missing)} "
            "have none (set the stage's 'teachers' or 'default_teacher', or run the whole recipe with "
            "`cascade run`, which picks teachers from its ledger)"
        )
    paths = dict(stage.teachers) | ({"__default__": stage.default_teacher} if stage.default_teacher else {})
    loaded = {p: backend.scorer(p, offload=stage.teachers_on_demand) for p in dict.fromkeys(paths.values())}
    return TeacherRouter({d: loaded[p] for d, p in paths.items()}, default="__default__" if missing else None)


@app.command("eval")
def eval_(
    model: Annotated[str, typer.Argument(help="HF folder, .gguf file, smollm2 or tiny:<family>")],
    domains: Annotated[
        str | None,
        typer.Option(help="comma-separated procedural domains (default: math,mcqa,instruct without --prompts)"),
    ] = None,
    prompts: Annotated[
        list[Path] | None,
        typer.Option(help="JSONL prompt file with verifier specs (repeatable; a record's 'domain' names its column)"),
    ] = None,
    n: Annotated[int, typer.Option(help="held-out prompts per procedural domain")] = 50,
    samples: Annotated[int, typer.Option(help="samples per prompt (avg@k / pass@k)")] = 4,
    difficulty: int = 0,
    thinking: Annotated[str, typer.Option(help="on, off or both")] = "off",
    temperature: float = 1.0,
    max_new_tokens: int = 128,
    out: Annotated[Path | None, typer.Option(help="JSONL of every prompt / completion / verdict")] = None,
) -> None:
    """Evaluate a model on held-out procedural domains and / or your own JSONL prompt files."""
    from cascade_rl.config import DataConfig, EngineConfig, EvalConfig, ModelConfig
    from cascade_rl.data.sources import DataSourceError
    from cascade_rl.engines.backend import LocalBackend
    from cascade_rl.eval.runner import evaluate

    names = domains if domains is not None else ("" if prompts else "math,mcqa,instruct")
    sets = [DataConfig(task=d.strip(), n=n, difficulty=difficulty) for d in names.split(",") if d.strip()]
    sets += [DataConfig(path=str(p)) for p in prompts or []]
    modes = {"on": [True], "off": [False], "both": [True, False]}[thinking]
    cfg = EvalConfig(
        domains=sets, samples=samples, temperature=temperature, thinking=modes, max_new_tokens=max_new_tokens
    )
    backend = LocalBackend(EngineConfig(), ModelConfig(spec=model))
    try:
        scores = evaluate(
            backend.eval_generator(model, cfg.batch_size), backend.tokenizer(model), cfg, samples_file=out
        )
    except (DataSourceError, KeyError) as exc:
        _fail(str(exc))
    for s in scores:
        console.print(
            f"{s.key:24s} avg@{s.samples}={s.avg:.3f} ± {s.stderr:.3f} pass@{s.samples}={s.pass_at_k:.3f} "
            f"(n={s.prompts}, truncated {s.truncation_rate:.1%})",
            highlight=False,
        )


@app.command()
def chat(
    model: Annotated[str, typer.Argument(help="HF folder, .gguf file, smollm2 or tiny:<family>")],
    message: Annotated[
        list[str] | None, typer.Option("--message", "-m", help="user message(s); none: interactive")
    ] = None,
    think: Annotated[bool, typer.Option(help="thinking mode (<think> opened) or direct answers")] = True,
    tools: Annotated[Path | None, typer.Option(help="JSON file with OpenAI tool schemas")] = None,
    max_new_tokens: int = 256,
    temperature: float = 0.7,
    seed: int = 0,
) -> None:
    """Chat in the Cascade-2 format; shows reasoning, answer and tool calls separately."""
    from cascade_rl.chat import encode_prompt, parse_completion
    from cascade_rl.config import EngineConfig, ModelConfig
    from cascade_rl.engines.backend import LocalBackend
    from cascade_rl.engines.base import SamplingParams

    backend = LocalBackend(EngineConfig(), ModelConfig(spec=model))
    tokenizer = backend.tokenizer(model)
    tool_list = json.loads(tools.read_text()) if tools else None
    generator = backend.eval_generator(model, 1)
    history: list[dict] = []
    queue = list(message or [])
    while True:
        text = queue.pop(0) if queue else (None if message else _ask())
        if text is None:
            return
        history.append({"role": "user", "content": text})
        ids = encode_prompt(tokenizer, history, tool_list, enable_thinking=think)
        params = SamplingParams(
            temperature=temperature, max_new_tokens=max_new_tokens, stop_token_ids=(tokenizer.eos_token_id,), seed=seed
        )
        completion = generator.generate([ids], params)[0][0]
        parsed = parse_completion(tokenizer.decode(list(completion.tokens), skip_special_tokens=False), thinking=think)
        if parsed.reasoning_content:
            console.print(f"[dim]reasoning:[/dim] {parsed.reasoning_content}", highlight=False)
        console.print(f"[bold]answer:[/bold] {parsed.content}", highlight=False)
        for call in parsed.tool_calls:
            console.print(f"[cyan]tool call:[/cyan] {call.name}({json.dumps(call.arguments)})", highlight=False)
        if parsed.errors or parsed.truncated:
            console.print(f"[yellow]flags:[/yellow] truncated={parsed.truncated} {list(parsed.errors)}")
        history.append(parsed.to_message())


def _ask() -> str | None:
    try:
        text = input("you> ").strip()
    except EOFError:
        return None
    return text or None


@app.command()
def demo(
    recipe: Annotated[Path, typer.Option(help="recipe file or shipped recipe name")] = Path("tiny-cascade"),
    overrides: Overrides = None,
) -> None:
    """The miniature Nemotron-Cascade 2, end to end on a laptop CPU: SFT, then IF-RL, multi-domain RL, MOPD,
    RLHF, long-context, code and SWE RL, every domain evaluated after every stage (both thinking modes
    where the SFT data has reasoning traces), and a plain-words reading of the ledger."""
    from cascade_rl.demo import run_demo

    started = time.perf_counter()
    try:
        run_demo(_config(recipe, overrides), started, threads=_CHOSEN.get("threads"))
    except _run_errors() as exc:
        _fail(str(exc))


@app.command("swe-prompts")
def swe_prompts(
    instances: Annotated[Path, typer.Argument(help="SWE-bench / SWE-Gym instances, JSONL (one per line)")],
    out: Annotated[Path, typer.Argument(help="RL / evaluation prompt file to write (JSONL)")],
    mode: Annotated[str, typer.Option(help="agentless (issue + files, edit blocks) or agentic (repository tools)")] = (
        "agentless"
    ),
    on_error: Annotated[str, typer.Option(help="a bad instance: raise (stop) or skip (and count it)")] = "raise",
    domain: Annotated[str, typer.Option(help="ledger domain of the prompts")] = "swe",
) -> None:
    """Turn SWE instances into prompts with ``swe`` specs, graded by their tests in the sandbox."""
    from cascade_rl.data.sources import DataSourceError
    from cascade_rl.data.tasks.swe import instance_prompt
    from cascade_rl.files import write_text_atomic
    from cascade_rl.swe.instance import read_instances

    if mode not in ("agentless", "agentic") or on_error not in ("raise", "skip"):
        _fail(f"--mode must be agentless or agentic and --on-error raise or skip, got {mode!r} and {on_error!r}")
    try:
        found, stats = read_instances(instances, on_error=on_error)  # type: ignore[arg-type]
    except DataSourceError as exc:
        _fail(str(exc))
    lines = []
    for instance in found:
        prompt = instance_prompt(instance, mode, domain=domain)
        record = {"messages": list(prompt.messages), "spec": prompt.spec, "domain": prompt.domain}
        if prompt.tools:
            record["tools"] = list(prompt.tools)
        if prompt.env != "single_turn":
            record["env"] = prompt.env
        lines.append(json.dumps(record))
    if not lines:
        _fail(f"{instances}: no usable instances ({stats.skipped} skipped)")
    write_text_atomic(out, "\n".join(lines) + "\n")
    skipped = f", {stats.skipped} skipped (first: {stats.reasons[0]})" if stats.skipped else ""
    console.print(f"{out}: {len(lines)} {mode} prompts from {stats.read} instances{skipped}", highlight=False)


def main() -> None:
    sys.exit(app())


if __name__ == "__main__":
    main()
