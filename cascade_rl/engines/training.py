"""The optimizer half of a trainable in-process engine (the policy, a reward model): AdamW on fp32 master
weights, the warm-up + cosine schedule, gradient clipping, non-finite steps refused, and the training state
a checkpoint holds."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from cascade_rl.config import OptimConfig


def lr_lambda(step: int, *, warmup: int, total: int, start_ratio: float, floor_ratio: float | None) -> float:
    """Linear warm-up from ``start_ratio`` to 1, then cosine to ``floor_ratio`` (None: constant)."""
    if step < warmup:
        return start_ratio + (1.0 - start_ratio) * step / warmup
    if floor_ratio is None:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor_ratio + (1.0 - floor_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class OptimSettings:
    """What AdamW and the schedule need (the recipe's ``optim`` block, resolved per stage)."""

    lr: float
    total_steps: int
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    warmup_steps: int = 0
    warmup_start_lr: float = 0.0
    min_lr: float | None = None
    grad_clip: float = 1.0

    @classmethod
    def from_config(cls, optim: OptimConfig, total_steps: int) -> OptimSettings:
        return cls(
            lr=optim.lr,
            total_steps=total_steps,
            betas=optim.betas,
            weight_decay=optim.weight_decay,
            warmup_steps=optim.warmup_steps,
            warmup_start_lr=optim.warmup_start_lr,
            min_lr=optim.min_lr,
            grad_clip=optim.grad_clip,
        )


class AdamWTrainer:
    """Mixed into an engine that has ``model`` (fp32 master weights) and ``tokenizer``.

    Weight decay is decoupled and skips norms and biases; AdamW allocates its moments at the first step,
    so an engine that only scores costs no optimizer memory. A step whose gradient norm is NaN or inf is
    not applied (``nonfinite_update``); one with no gradient at all moves only the schedule.
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase

    def _init_optimizer(self, optim: OptimSettings) -> None:
        self.grad_clip = optim.grad_clip
        trained = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        decay = [p for n, p in trained if p.ndim >= 2 and "norm" not in n]
        no_decay = [p for n, p in trained if p.ndim < 2 or "norm" in n]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=optim.lr,
            betas=optim.betas,
            foreach=True,
        )
        ratio = None if optim.min_lr is None else optim.min_lr / optim.lr
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: lr_lambda(
                s,
                warmup=optim.warmup_steps,
                total=optim.total_steps,
                start_ratio=optim.warmup_start_lr / optim.lr,
                floor_ratio=ratio,
            ),
        )

    def optim_step(self) -> dict[str, float]:
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        lr = self.scheduler.get_last_lr()[0]
        if all(p.grad is None for p in params):  # nothing was trained this step; the schedule keeps its pace
            self._advance_schedule()
            return {"skipped_update": 1.0, "lr": lr}
        if self.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        else:
            norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))
        if not torch.isfinite(norm):  # a NaN / inf loss or gradient: not applied (the weights stay finite)
            self.optimizer.zero_grad(set_to_none=True)
            self._advance_schedule()
            return {"nonfinite_update": 1.0, "lr": lr}
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"grad_norm": float(norm), "lr": lr}

    def _advance_schedule(self) -> None:
        with warnings.catch_warnings():  # torch warns when the schedule moves before any optimizer step
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler")
            self.scheduler.step()

    def save_state(self, path: Path) -> None:
        """``trainer_state.pt`` (optimizer, schedule, RNG) and ``model/`` (the fp32 master weights, an HF folder)."""
        from cascade_rl.checkpoint import write_trainer_state
        from cascade_rl.model.load import save

        write_trainer_state(path, self.optimizer, self.scheduler)  # first: it captures the RNG
        save(self.model, self.tokenizer, path / "model")

    def load_state(self, path: Path) -> None:
        from cascade_rl.checkpoint import read_trainer_state

        saved = self._reload(path / "model")
        self.model.load_state_dict(saved.state_dict())  # in place: the optimizer keeps its parameters
        read_trainer_state(path, self.optimizer, self.scheduler)  # RNG restored last

    def _reload(self, folder: Path) -> PreTrainedModel:
        """The fp32 weights a checkpoint's ``model/`` folder holds, as this engine's model class."""
        raise NotImplementedError
