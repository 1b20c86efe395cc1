"""metrics.jsonl content, backend fallbacks, and progress output on and off a terminal."""

from __future__ import annotations

import io
import json
import math
import re

import numpy as np
import pytest
import torch
from rich.console import Console

from cascade_rl.logging import MetricsBackendWarning, MetricsLogger, progress_bar, read_metrics


def test_metrics_jsonl_lines_are_flushed_and_converted(tmp_path, monkeypatch):
    monkeypatch.setattr("cascade_rl.logging.time.time", lambda: 1700000000.1234)
    logger = MetricsLogger(tmp_path / "run")
    logger.log({"loss": torch.tensor(0.25), "tokens": np.int64(512), "lr": np.float32(0.5)}, step=1, stage="sft")
    # visible on disk before close: a crashed run still has its metrics
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[0]) == {
        "step": 1,
        "time": 1700000000.123,
        "stage": "sft",
        "loss": 0.25,
        "tokens": 512,
        "lr": 0.5,
    }
    logger.log({"reward": {"math": 1.0, "code": torch.tensor(0)}, "note": "ok", "kl": float("nan")}, step=2)
    logger.close()
    logger.close()  # idempotent
    second = read_metrics(tmp_path / "run")[1]
    assert {k: v for k, v in second.items() if k != "kl"} == {
        "step": 2,
        "time": 1700000000.123,
        "reward/math": 1.0,
        "reward/code": 0,
        "note": "ok",
    }
    assert math.isnan(second["kl"])


def test_logger_appends_across_instances_and_rejects_bad_metrics(tmp_path):
    with MetricsLogger(tmp_path) as logger:
        logger.log({"loss": 1.0}, step=1)
        with pytest.raises(ValueError, match=r"\['step'\] are reserved"):
            logger.log({"step": 3}, step=3)
        with pytest.raises(TypeError, match=r"metric 'v' must be a scalar, got an array of shape \(2,\)"):
            logger.log({"v": torch.ones(2)}, step=3)
        with pytest.raises(TypeError, match="metric 'x' must be a number"):
            logger.log({"x": object()}, step=3)
    with MetricsLogger(tmp_path) as logger:
        logger.log({"loss": 0.5}, step=2)
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "metrics.jsonl")] == [(1, 1.0), (2, 0.5)]


def test_read_metrics_ignores_torn_last_line_only(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "lo')
    assert read_metrics(path) == [{"step": 1}, {"step": 2}]
    path.write_text('{"step": 1}\n{"st\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a JSON metrics record"):
        read_metrics(path)


def test_missing_backends_warn_once_and_logging_continues(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_backends(name, *args, **kwargs):
        if name in ("wandb", "torch.utils.tensorboard"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_backends)
    with pytest.warns(MetricsBackendWarning) as caught:
        logger = MetricsLogger(tmp_path, tensorboard=True, wandb_project="cascade")
    assert len(caught) == 2
    messages = " ".join(str(w.message) for w in caught)
    assert "install `tensorboard`" in messages and "pip install wandb" in messages
    with logger:
        logger.log({"loss": 1.0}, step=1)
    assert read_metrics(tmp_path)[0]["loss"] == 1.0


def test_failing_mirror_is_disabled_with_one_warning(tmp_path):
    class BrokenWriter:
        calls = 0

        def add_scalar(self, tag, value, step):
            BrokenWriter.calls += 1
            raise OSError("disk full")

        def close(self):
            pass

    logger = MetricsLogger(tmp_path)
    logger._tensorboard = BrokenWriter()
    with pytest.warns(MetricsBackendWarning, match="TensorBoard logging failed"):
        logger.log({"loss": 1.0}, step=1)
    logger.log({"loss": 2.0}, step=2)  # no second warning, no crash
    logger.close()
    assert BrokenWriter.calls == 1
    assert [r["loss"] for r in read_metrics(tmp_path)] == [1.0, 2.0]


def test_plain_progress_prints_every_ten_percent_with_fields(capsys):
    with progress_bar(100, "sft", clock=lambda: 0.0) as bar:
        for i in range(100):
            bar.update(loss=1.0 / (i + 1), **{"tok/s": 1234.5678})
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 10
    assert lines[0] == "sft: 10/100 (10%)  loss=0.1 tok/s=1235  elapsed 0:00:00 eta 0:00:00"
    assert lines[-1].startswith("sft: 100/100 (100%)  loss=0.01 tok/s=1235  elapsed")


def test_plain_progress_prints_on_time_and_on_exit(capsys):
    now = [0.0]
    with progress_bar(1000, "rl", every_seconds=10, clock=lambda: now[0]) as bar:
        for _ in range(3):
            now[0] += 6.0
            bar.update(advance=2, reward=torch.tensor(0.5))
    lines = capsys.readouterr().out.splitlines()
    # t=12 s crosses the 10 s interval; the exit line reports where the run stopped
    assert lines == [
        "rl: 4/1000 (0%)  reward=0.5  elapsed 0:00:12 eta 0:49:48",
        "rl: 6/1000 (1%)  reward=0.5  elapsed 0:00:18 eta 0:49:42",
    ]


def test_plain_progress_survives_errors_and_unknown_total(capsys):
    with pytest.raises(RuntimeError), progress_bar(0, "eval", clock=lambda: 0.0) as bar:
        bar.update()
        raise RuntimeError("boom")
    assert capsys.readouterr().out == "eval: 1  elapsed 0:00:00\n"


def test_terminal_progress_renders_rich_bar():
    buffer = io.StringIO()
    out = Console(file=buffer, force_terminal=True, width=120)
    with progress_bar(4, "train [x]", out=out) as bar:
        for _ in range(4):
            bar.update(loss=0.125)
        # rich >= 14 nests live displays; older versions refuse and we fall back to plain lines
        with progress_bar(2, "nested", out=out) as inner:
            inner.update(advance=2)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", buffer.getvalue())
    assert "train [x]" in text and "4/4" in text and "loss=0.125" in text
    assert "nested" in text
