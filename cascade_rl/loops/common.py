"""What every stage loop shares: building the policy, resuming from checkpoints, saving."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from cascade_rl.checkpoint import atomic_directory, latest_checkpoint, load_trainer_state, save_checkpoint
from cascade_rl.config import OptimConfig
from cascade_rl.engines.local import LocalPolicy
from cascade_rl.logging import console
from cascade_rl.model.load import save


def build_policy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    optim: OptimConfig,
    total_steps: int,
    token_budget: int,
) -> LocalPolicy:
    """The stage's trainable policy; parameters matching ``optim.freeze`` are left out of the optimizer."""
    patterns = [re.compile(p) for p in optim.freeze]
    for name, param in model.named_parameters():
        param.requires_grad_(not any(p.search(name) for p in patterns))
    return LocalPolicy(
        model,
        tokenizer,
        lr=optim.lr,
        total_steps=total_steps,
        betas=optim.betas,
        weight_decay=optim.weight_decay,
        warmup_steps=optim.warmup_steps,
        warmup_start_lr=optim.warmup_start_lr,
        min_lr=optim.min_lr,
        grad_clip=optim.grad_clip,
        token_budget=token_budget,
    )


def load_weights_into(model: PreTrainedModel, folder: Path) -> None:
    """Copy the weights of a saved HF folder into ``model`` in place (so optimizers keep their params)."""
    saved = AutoModelForCausalLM.from_pretrained(folder, dtype=next(model.parameters()).dtype)
    model.load_state_dict(saved.state_dict())


def resume(run_dir: Path, policy: LocalPolicy, name: str, total_steps: int) -> int:
    """Restore the newest complete checkpoint of ``run_dir`` (and say so); the step to continue from, 0 if none."""
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        return 0
    load_weights_into(policy.model, ckpt / "model")
    step = int(load_trainer_state(ckpt, policy.optimizer, policy.scheduler)["step"])
    console.print(f"[{name}] resuming at step {step}/{total_steps}", markup=False, highlight=False)
    return step


def checkpoint(run_dir: Path, step: int, policy: LocalPolicy, state: Mapping[str, Any]) -> Path:
    return save_checkpoint(
        run_dir,
        step,
        write_model=policy.save,
        optimizer=policy.optimizer,
        scheduler=policy.scheduler,
        state=dict(state),
    )


def save_final(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: Path) -> Path:
    """The stage's output model, written atomically: a folder that exists is complete."""
    with atomic_directory(folder) as tmp:
        save(model, tokenizer, tmp)
    return folder


def is_finished(folder: Path) -> bool:
    return (folder / "config.json").is_file()


def set_seed(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)
