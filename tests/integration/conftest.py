"""Session fixtures: the tiny instruct model after SFT and after GRPO, trained once and shared.

test_rl checks what GRPO did; test_mopd distils the SFT model toward the GRPO model (the published
MOPD teachers are the pipeline's own RL checkpoints, sharing the student's SFT init and tokenizer).
Training them once saves ~50 s when both files run.
"""

from __future__ import annotations

import pytest

from cascade_rl.loops.rl import run_rl
from cascade_rl.loops.sft import run_sft
from cascade_rl.model.load import load
from tests.integration import _tiny


@pytest.fixture(scope="session")
def instruct_sft(tmp_path_factory) -> _tiny.TrainedModel:
    """SFT from the seeded random init (the BPE is trained on the procedural domains, ~4 s)."""
    model, tokenizer = load("tiny:qwen3", vocab_size=_tiny.VOCAB_SIZE, seed=_tiny.MODEL_SEED, **_tiny.TINY)
    run_dir = tmp_path_factory.mktemp("instruct_sft")
    folder = run_sft(_tiny.sft_stage(), model, tokenizer, run_dir)
    score = _tiny.held_out(_tiny.load_model(folder), tokenizer, run_dir / "held_out.jsonl")
    return _tiny.TrainedModel(folder, run_dir, score, tokenizer)


@pytest.fixture(scope="session")
def instruct_grpo(instruct_sft, tmp_path_factory) -> _tiny.TrainedModel:
    """GRPO from the SFT model (a fresh copy: the SFT folder stays the MOPD student)."""
    tokenizer = instruct_sft.tokenizer
    run_dir = tmp_path_factory.mktemp("instruct_grpo")
    folder = run_rl(_tiny.grpo_stage(), _tiny.load_model(instruct_sft.folder), tokenizer, run_dir)
    score = _tiny.held_out(_tiny.load_model(folder), tokenizer, run_dir / "held_out.jsonl")
    return _tiny.TrainedModel(folder, run_dir, score, tokenizer)
