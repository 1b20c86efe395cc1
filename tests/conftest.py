"""Shared fixtures: the golden vectors and a tiny tokenizer trained in well under a second."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

# Tiny models gain nothing from intra-op threads, and reward workers / sandboxes run beside the
# trainer: one thread avoids oversubscribing a 2-core machine (which can slow torch down 10x+).
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]

# Modules whose session fixtures (the trained tiny instruct models) are shared: one worker runs them all.
SHARED_WORKER = {"test_rl.py": "instruct-models", "test_mopd.py": "instruct-models"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """``make test`` runs two pytest-xdist workers with ``--dist loadgroup``: every module is one unit of work
    (its module fixtures are built once), and modules sharing session fixtures share a worker."""
    for item in items:
        item.add_marker(pytest.mark.xdist_group(SHARED_WORKER.get(item.path.name, item.nodeid.split("::")[0])))


VECTORS = REPO.parent / "shared" / "testdata" / "chat_template_vectors.jsonl"


# A two-layer qwen3 small enough that building it costs less than training its tokenizer.
TINY_QWEN3: dict[str, int] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 32,
}


def load_vectors() -> list[dict[str, Any]]:
    if not VECTORS.is_file():
        raise FileNotFoundError(f"golden chat-template vectors not found at {VECTORS}")
    return [json.loads(line) for line in VECTORS.read_text(encoding="utf-8").splitlines() if line.strip()]


def small_corpus() -> list[str]:
    from cascade_rl.chat.template import render

    texts = []
    for a in range(20):
        for b in range(20):
            messages = [
                {"role": "user", "content": f"What is {a} + {b}?"},
                {
                    "role": "assistant",
                    "content": f"The answer is {a + b}.",
                    "reasoning_content": f"{a} + {b} = {a + b}.",
                },
            ]
            texts.append(render(messages))
    for vector in load_vectors():
        texts.append(vector["text"])
    return texts


@pytest.fixture(scope="session")
def tokenizer():
    from cascade_rl.model.load import prepare_tokenizer
    from cascade_rl.model.tiny import train_tokenizer

    return prepare_tokenizer(train_tokenizer(small_corpus(), vocab_size=600))
