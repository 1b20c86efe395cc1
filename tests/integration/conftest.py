"""Session fixtures: the tiny instruct model after SFT and after GRPO, trained once and shared.

test_rl checks what GRPO did; test_mopd distils the SFT model toward the GRPO model (the published
MOPD teachers are the pipeline's own RL checkpoints, sharing the student's SFT init and tokenizer).
Training them once saves ~50 s when both files run.
"""

from __future__ import annotations

import pytest

from cascade_rl.loops.rl import run_rl
from cascade_rl.loops.sft import run_sft
from tests.integration import _tiny


@pytest.fixture(scope="session")
def instruct_sft(tmp_path_factory) -> _tiny.TrainedModel:
    """SFT from the seeded random init (the BPE is trained on the procedural domains, ~4 s)."""
    backend = _tiny.backend()
    run_dir = tmp_path_factory.mktemp("instruct_sft")
    folder = run_sft(_tiny.sft_stage(), backend, _tiny.START, run_dir)
    score = _tiny.held_out(folder, run_dir / "held_out.jsonl")
    return _tiny.TrainedModel(folder, run_dir, score, backend.tokenizer(folder))


@pytest.fixture(scope="session")
def instruct_grpo(instruct_sft, tmp_path_factory) -> _tiny.TrainedModel:
    """GRPO from the SFT model (the SFT folder stays as it is: it is also the MOPD student)."""
    run_dir = tmp_path_factory.mktemp("instruct_grpo")
    folder = run_rl(_tiny.grpo_stage(), _tiny.backend(), instruct_sft.folder, run_dir)
    score = _tiny.held_out(folder, run_dir / "held_out.jsonl")
    return _tiny.TrainedModel(folder, run_dir, score, instruct_sft.tokenizer)
