"""Models and tokenizers: tiny specs, GGUF, Hugging Face folders; HF-compatible save."""

from cascade_rl.model.load import ModelSpecError, load, save, smollm2_path
from cascade_rl.model.tiny import build_tiny, train_tokenizer

__all__ = ["ModelSpecError", "build_tiny", "load", "save", "smollm2_path", "train_tokenizer"]
