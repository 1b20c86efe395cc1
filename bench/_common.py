"""Helpers the benchmark scripts share: clocks, output, the recording prompt pool and TRL set-up.

Import it after the script has put the repository root on ``sys.path`` (``from bench._common import ...``).
"""

from __future__ import annotations

import contextlib
import io
import random
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cascade_rl.loops.rollout import PromptPool
from cascade_rl.types import Prompt

if TYPE_CHECKING:
    from transformers import TrainerCallback

ROOT = Path(__file__).resolve().parents[1]  # the repository root
TOKEN_BUDGET = 4096  # the engine section's default micro-batch token budget
DTYPE = "float32"  # the pipeline's "auto" on a CPU
# the demo's model size (recipes/tiny-cascade.yaml): ~1M parameters
DEMO_TINY = {
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
}


def clocks() -> tuple[float, float]:
    """(wall seconds, process CPU seconds) now; subtract two readings for an interval."""
    return time.perf_counter(), time.process_time()


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence library progress lines and TRL / transformers chatter (warnings, prints) so the tables stay readable."""
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        warnings.simplefilter("ignore")
        yield


def note(text: str) -> None:
    """Progress on stderr, so stdout holds only the results."""
    print(text, file=sys.stderr, flush=True)


def print_table(header: Sequence[object], rows: Sequence[Sequence[object]]) -> None:
    """Print an aligned table: first column left-aligned, the others right-aligned, a dashed rule under the header."""
    table = [[str(c) for c in row] for row in [header, *rows]]
    widths = [max(len(c) for c in column) for column in zip(*table, strict=True)]
    table.insert(1, ["-" * w for w in widths])
    for row in table:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))))


def short(path: str | Path, base: Path) -> str:
    """A checkpoint path relative to ``base`` (the run folder, the repository root) for the tables."""
    try:
        return str(Path(path).resolve().relative_to(base.resolve()))
    except ValueError:
        return str(path)


@dataclass
class RecordingPool(PromptPool):
    """Our prompt pool; remembers what every ``sample`` call drew, so TRL can get the same prompts."""

    drawn: list[list[Prompt]] = field(default_factory=list)

    def sample(self, count: int, rng: random.Random) -> list[Prompt]:
        """``PromptPool.sample``, with the drawn prompts appended to ``drawn`` (one list per call)."""
        out = super().sample(count, rng)
        self.drawn.append(list(out))
        return out


def step_clock(on_step: Callable[[float, float], None]) -> TrainerCallback:
    """A ``TrainerCallback`` that times every optimizer step as the interval between consecutive step ends.

    At every ``on_step_end`` it calls ``on_step(wall_seconds, cpu_seconds)``, both measured since the
    previous step end (the first step: since ``on_train_begin``), so the steps cover the whole training
    loop: data loading, generation, forward, backward and the optimizer. Hook it with
    ``trainer.add_callback(step_clock(trainer.end_step))``.
    """
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.wall, self.cpu = clocks()

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.wall, self.cpu = clocks()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            wall, cpu = clocks()
            on_step(wall - self.wall, cpu - self.cpu)
            self.wall, self.cpu = wall, cpu

    return StepClock()


def trl_cpu_args(*, lr: float, betas: tuple[float, float], grad_clip: float, seed: int) -> dict[str, Any]:
    """Keyword arguments every TRL config of the benchmarks shares (``SFTConfig``, ``GRPOConfig``, ...).

    torch AdamW with the given LR, betas and grad clip, constant LR, no warm-up, no weight decay; fp32 on
    the CPU in this process, with no logging, checkpoints, progress bars or data-loader workers on TRL's side.
    """
    return dict(
        learning_rate=lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        adam_beta1=betas[0],
        adam_beta2=betas[1],
        max_grad_norm=grad_clip,
        optim="adamw_torch",
        # TRL defaults to True; ours does not recompute the decoder in backward, so compare like with like
        gradient_checkpointing=False,
        use_cpu=True,
        bf16=False,
        fp16=False,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=seed,
    )
