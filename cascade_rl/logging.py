"""Metrics and progress: ``<run>/metrics.jsonl`` always, TensorBoard / W&B when asked, progress bars.

The JSONL file is the source of truth (plots, the ledger and tests read it); the other backends
are mirrors. A mirror that is missing or fails warns once and switches itself off: losing a
dashboard must never stop a training run.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from rich.console import Console
from rich.errors import LiveError
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

METRICS_FILE = "metrics.jsonl"
RESERVED_KEYS = ("step", "time", "stage")

console = Console()  # shared by every command, so bars and messages interleave cleanly


class MetricsBackendWarning(UserWarning):
    """A requested mirror (TensorBoard, W&B) is unavailable or failed; JSONL logging continues."""


# --------------------------------------------------------------------------- metrics


def _plain(key: str, value: Any) -> Any:
    """A JSON-ready scalar: tensors and numpy values become int / float / bool via ``.item()``."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if hasattr(value, "item"):
        try:
            value = value.item()
        except (RuntimeError, ValueError):  # torch / numpy refuse .item() on several elements
            shape = tuple(getattr(value, "shape", ()))
            raise TypeError(f"metric {key!r} must be a scalar, got an array of shape {shape}") from None
        if isinstance(value, bool | int | float):
            return value
    raise TypeError(f"metric {key!r} must be a number, string, None or scalar tensor; got {type(value).__name__}")


def _flatten(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts become "outer/inner" keys, the naming TensorBoard and W&B group by."""
    flat: dict[str, Any] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}/"))
        else:
            flat[name] = _plain(name, value)
    return flat


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class MetricsLogger:
    """Append one JSON line per ``log`` call to ``run_dir/metrics.jsonl``, mirrored to TB / W&B.

    Each line is ``{"step", "time" (unix seconds), "stage"?, **metrics}``; non-finite floats are
    written as ``NaN`` / ``Infinity`` (Python's JSON dialect) so a diverging run stays visible.
    The file is opened for appending, so a resumed run continues the same file; lines after the
    resumed step are then present twice, and readers should keep the last one per step.
    """

    def __init__(self, run_dir: Path, *, tensorboard: bool = False, wandb_project: str | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / METRICS_FILE
        self._file = self.path.open("a", encoding="utf-8")
        self._tensorboard: Any = self._open_tensorboard() if tensorboard else None
        self._wandb: Any = self._open_wandb(wandb_project) if wandb_project else None

    def _open_tensorboard(self) -> Any:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            warnings.warn(
                f"tensorboard=True but TensorBoard is unavailable ({err}); install `tensorboard` to mirror "
                f"metrics there. Logging to {self.path} only.",
                MetricsBackendWarning,
                stacklevel=3,
            )
            return None
        return SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))

    def _open_wandb(self, project: str) -> Any:
        try:
            import wandb
        except ImportError:
            warnings.warn(
                f"wandb_project={project!r} but wandb is not installed (pip install wandb). "
                f"Logging to {self.path} only.",
                MetricsBackendWarning,
                stacklevel=3,
            )
            return None
        try:
            return wandb.init(project=project, dir=str(self.run_dir), name=self.run_dir.name, resume="allow")
        except Exception as err:  # not logged in, offline without WANDB_MODE, ...: any failure
            warnings.warn(
                f"W&B could not start ({type(err).__name__}: {err}); run `wandb login` or set WANDB_MODE=offline. "
                f"Logging to {self.path} only.",
                MetricsBackendWarning,
                stacklevel=3,
            )
            return None

    def log(self, metrics: Mapping[str, Any], step: int, *, stage: str | None = None) -> None:
        """Write one line; nested dicts are flattened with "/" (``{"loss": {"nll": x}}`` -> "loss/nll")."""
        flat = _flatten(metrics)
        clash = [key for key in RESERVED_KEYS if key in flat]
        if clash:
            raise ValueError(f"metric names {clash} are reserved (the logger writes {', '.join(RESERVED_KEYS)})")
        record: dict[str, Any] = {"step": int(step), "time": round(time.time(), 3)}
        if stage is not None:
            record["stage"] = stage
        record.update(flat)
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()  # a crash must not lose the metrics that explain it
        self._mirror(flat, int(step), stage)

    def _mirror(self, flat: dict[str, Any], step: int, stage: str | None) -> None:
        numbers = {(f"{stage}/{key}" if stage else key): value for key, value in flat.items() if _is_number(value)}
        if self._tensorboard is not None:
            try:
                for tag, value in numbers.items():
                    self._tensorboard.add_scalar(tag, value, step)
            except Exception as err:
                self._tensorboard = self._disable("TensorBoard", err)
        if self._wandb is not None:
            try:
                self._wandb.log(numbers, step=step)
            except Exception as err:
                self._wandb = self._disable("W&B", err)

    def _disable(self, backend: str, err: Exception) -> None:
        warnings.warn(
            f"{backend} logging failed ({type(err).__name__}: {err}); it is off for the rest of the run. "
            f"Metrics still go to {self.path}.",
            MetricsBackendWarning,
            stacklevel=4,
        )

    def close(self) -> None:
        """Flush and close every backend; safe to call twice."""
        if not self._file.closed:
            self._file.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All records of a metrics file (or of ``<run_dir>/metrics.jsonl`` when given a directory).

    A torn last line (the process died mid-write) is ignored; a bad line elsewhere raises
    ``ValueError("file:line: ...")``.
    """
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    lines = path.read_text(encoding="utf-8").split("\n")
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if i == last:
                break
            raise ValueError(f"{path}:{i + 1}: not a JSON metrics record ({err.msg})") from None
    return records


# --------------------------------------------------------------------------- progress


class ProgressHandle(Protocol):
    def update(self, advance: int = 1, **fields: Any) -> None: ...


def _format_fields(fields: Mapping[str, Any]) -> str:
    parts = []
    for key, value in fields.items():
        if hasattr(value, "item"):  # scalar tensors / numpy values print as numbers, not "tensor(0.5)"
            with suppress(RuntimeError, ValueError):
                value = value.item()
        parts.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
    return " ".join(parts)


def _format_seconds(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class _RichProgress:
    def __init__(self, progress: Progress, task: TaskID) -> None:
        self._progress, self._task, self._fields = progress, task, {}

    def update(self, advance: int = 1, **fields: Any) -> None:
        self._fields.update(fields)
        self._progress.update(self._task, advance=advance, info=_format_fields(self._fields))


class _PlainProgress:
    """One line per ``every_percent`` of progress or ``every_seconds``, whichever comes first."""

    def __init__(
        self,
        total: int,
        description: str,
        out: Console,
        every_percent: float,
        every_seconds: float,
        clock: Callable[[], float],
    ) -> None:
        self.total, self.description, self.out = total, description, out
        self.every_percent, self.every_seconds, self.clock = every_percent, every_seconds, clock
        self.done, self.fields = 0, {}
        self.start = self.last_time = clock()
        self.last_bucket, self.printed_done = 0, -1

    def _bucket(self) -> int:
        if self.total <= 0 or self.every_percent <= 0:
            return 0
        return math.floor(100.0 * self.done / self.total / self.every_percent + 1e-9)

    def update(self, advance: int = 1, **fields: Any) -> None:
        self.done += advance
        self.fields.update(fields)
        now = self.clock()
        if self._bucket() > self.last_bucket or now - self.last_time >= self.every_seconds:
            self.emit(now)

    def emit(self, now: float) -> None:
        elapsed = now - self.start
        head = f"{self.description}: {self.done}"
        if self.total > 0:
            head += f"/{self.total} ({100.0 * self.done / self.total:.0f}%)"
        tail = f"elapsed {_format_seconds(elapsed)}"
        if self.total > 0 and 0 < self.done < self.total:
            tail += f" eta {_format_seconds(elapsed / self.done * (self.total - self.done))}"
        info = _format_fields(self.fields)
        line = "  ".join(part for part in (head, info, tail) if part)
        self.out.print(line, markup=False, highlight=False, emoji=False, soft_wrap=True)
        self.last_time, self.last_bucket, self.printed_done = now, self._bucket(), self.done

    def finish(self) -> None:
        if self.printed_done != self.done:
            self.emit(self.clock())


@contextmanager
def progress_bar(
    total: int,
    description: str,
    *,
    every_percent: float = 10.0,
    every_seconds: float = 10.0,
    out: Console | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[ProgressHandle]:
    """A progress display; ``handle.update(advance=1, loss=..., **{"tok/s": ...})`` advances it.

    On a terminal: a rich bar with the latest fields, elapsed time and ETA. Otherwise (CI, pipes,
    files), or when another live display is already active: plain lines every ``every_percent``
    of ``total`` or ``every_seconds``, plus a final line, so logs stay readable.

    Args:
        total: expected number of steps; 0 when unknown (then lines are time-based only).
        out: console to draw on (default: the shared ``console``).
        clock: monotonic seconds; replaceable for tests.
    """
    out = out or console
    if out.is_terminal:
        progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}", markup=False),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=out,
        )
        try:
            progress.start()
        except LiveError:  # nested bars: rich allows one live display per console
            pass
        else:
            try:
                task = progress.add_task(escape(description), total=total or None, info="")
                yield _RichProgress(progress, task)
            finally:
                progress.stop()
            return
    plain = _PlainProgress(total, description, out, every_percent, every_seconds, clock)
    try:
        yield plain
    finally:
        plain.finish()
