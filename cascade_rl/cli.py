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

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
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


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(2)


def _config(recipe: Path, overrides: list[str] | None):
    from cascade_rl.config import ConfigError, load_config

    try:
        return load_config(recipe, overrides or [])
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
                console.print(f"  {stage}: {domain} <- {path}", highlight=False)
    console.print("\nstage wall time: " + ", ".join(f"{k} {v:.0f}s" for k, v in result.stage_times.items()))
    for plot in result.plots:
        console.print(f"plot: {plot}", highlight=False)
    console.print(f"final model (Hugging Face folder): {result.final_model}", highlight=False)


@app.command()
def run(recipe: Path, overrides: Overrides = None) -> None:
    """Run a Cascade recipe: stages in order, every domain evaluated after each; resumes if interrupted."""
    from cascade_rl.loops.pipeline import RecipeMismatchError, run_pipeline

    config = _config(recipe, overrides)
    try:
        result = run_pipeline(config)
    except RecipeMismatchError as exc:
        _fail(str(exc))
    _print_result(result)


def _single_stage(recipe: Path, overrides: list[str] | None, kind: str, stage_name: str | None, resume: bool):
    config = _config(recipe, overrides)
    stages = [s for s in config.stages if s.type == kind and (stage_name is None or s.name == stage_name)]
    if len(stages) != 1:
        names = [s.name for s in config.stages if s.type == kind]
        _fail(f"{recipe}: expected exactly one {kind} stage (pass --stage NAME); found {names}")
    run_dir = Path(config.output_dir) / stages[0].name
    if (run_dir / "checkpoints").exists() and not resume:
        _fail(f"{run_dir} already holds checkpoints: pass --resume to continue, or choose another output_dir")
    from cascade_rl.config import dump_config

    dump_config(config, run_dir / "recipe.yaml")  # the resolved recipe, so the run can be reproduced
    return config, stages[0], run_dir


def _load_model(config):  # noqa: ANN001
    from cascade_rl.model import load

    spec = config.model.spec
    if spec.startswith("tiny:"):
        return load(spec, seed=config.model.seed, vocab_size=config.model.vocab_size, **config.model.tiny)
    return load(spec)


@app.command()
def sft(
    recipe: Path,
    overrides: Overrides = None,
    stage: Annotated[str | None, typer.Option(help="name of the sft stage to run")] = None,
    resume: Annotated[bool, typer.Option(help="continue from the newest checkpoint in the run folder")] = False,
) -> None:
    """Run one SFT stage of a recipe (packed sequences, per-token loss); writes an HF model folder."""
    from cascade_rl.loops.sft import run_sft

    config, st, run_dir = _single_stage(recipe, overrides, "sft", stage, resume)
    model, tokenizer = _load_model(config)
    out = run_sft(st, model, tokenizer, run_dir)
    console.print(f"model: {out}", highlight=False)


@app.command()
def rl(
    recipe: Path,
    overrides: Overrides = None,
    stage: Annotated[str | None, typer.Option(help="name of the rl stage to run")] = None,
    resume: Annotated[bool, typer.Option(help="continue from the newest checkpoint in the run folder")] = False,
) -> None:
    """Run one GRPO stage of a recipe from the recipe's model; writes an HF model folder."""
    from cascade_rl.loops.rl import run_rl

    config, st, run_dir = _single_stage(recipe, overrides, "rl", stage, resume)
    model, tokenizer = _load_model(config)
    out = run_rl(st, model, tokenizer, run_dir)
    console.print(f"model: {out}", highlight=False)


@app.command("eval")
def eval_(
    model: Annotated[str, typer.Argument(help="HF folder, .gguf file, smollm2 or tiny:<family>")],
    domains: Annotated[str, typer.Option(help="comma-separated procedural domains")] = "math,mcqa,instruct",
    n: Annotated[int, typer.Option(help="held-out prompts per domain")] = 50,
    samples: Annotated[int, typer.Option(help="samples per prompt (avg@k / pass@k)")] = 4,
    difficulty: int = 0,
    thinking: Annotated[str, typer.Option(help="on, off or both")] = "off",
    temperature: float = 1.0,
    max_new_tokens: int = 128,
    out: Annotated[Path | None, typer.Option(help="JSONL of every prompt / completion / verdict")] = None,
) -> None:
    """Evaluate a model on held-out prompts of procedural domains."""
    from cascade_rl.config import DataConfig, EvalConfig
    from cascade_rl.eval.runner import evaluate
    from cascade_rl.model import load

    modes = {"on": [True], "off": [False], "both": [True, False]}[thinking]
    cfg = EvalConfig(
        domains=[DataConfig(task=d.strip(), n=n, difficulty=difficulty) for d in domains.split(",")],
        samples=samples,
        temperature=temperature,
        thinking=modes,
        max_new_tokens=max_new_tokens,
    )
    lm, tokenizer = load(model)
    scores = evaluate(lm, tokenizer, cfg, samples_file=out)
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
    from cascade_rl.engines.base import SamplingParams
    from cascade_rl.engines.local import LocalGenerator
    from cascade_rl.model import load

    lm, tokenizer = load(model)
    tool_list = json.loads(tools.read_text()) if tools else None
    generator = LocalGenerator(lm, batch_size=1)
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
    recipe: Annotated[Path, typer.Option(help="recipe to run")] = RECIPES / "tiny-cascade.yaml",
    overrides: Overrides = None,
) -> None:
    """The miniature Nemotron-Cascade 2 on procedural domains, end to end on a laptop CPU."""
    from cascade_rl.demo import run_demo

    if not recipe.is_file():
        _fail(f"recipe not found: {recipe}")
    started = time.perf_counter()
    run_demo(_config(recipe, overrides), started)


def main() -> None:
    sys.exit(app())


if __name__ == "__main__":
    main()
