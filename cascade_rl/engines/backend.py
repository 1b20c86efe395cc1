"""Backends: what builds the engines the loops are handed.

A backend turns a model (an HF folder, a ``.gguf`` file, ``smollm2`` or ``tiny:<family>``) into the
Generator, Policy and Scorers of the ``engines.base`` protocols. The loops (``run_sft``, ``run_rl``),
the evaluator and the MOPD teacher router only ever call a backend, so running the same recipe on
another engine (vLLM rollouts, FSDP2 trainers, Ray placement) means registering another backend,
not editing a loop. ``build_backend`` picks one by the recipe's ``engine.kind``.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from cascade_rl.config import EngineConfig, ModelConfig, OptimConfig
from cascade_rl.engines.base import Generator, Policy, Scorer
from cascade_rl.engines.local import LocalGenerator, LocalPolicy, LocalScorer, OptimSettings
from cascade_rl.engines.reward_model import LocalRewardModel, RewardModel
from cascade_rl.logging import console

ModelSource = str | Path


class Backend(Protocol):
    def tokenizer(self, model: ModelSource) -> PreTrainedTokenizerBase:
        """The model's tokenizer, prepared for the Cascade-2 chat format."""
        ...

    def policy(
        self, model: ModelSource, optim: OptimConfig, total_steps: int, *, microbatch_tokens: int | None = None
    ) -> Policy:
        """A trainable policy initialised from ``model``, with AdamW and the LR schedule of ``optim``."""
        ...

    def generator(self, policy: Policy, *, separate: bool = False) -> Generator:
        """The rollout generator that samples from ``policy`` (kept current by ``Generator.sync``); ``separate``:
        with weights of its own, so that it can sample while the policy trains (asynchronous rollouts)."""
        ...

    def scorer(self, model: ModelSource, *, offload: bool = False) -> Scorer:
        """A frozen scorer (MOPD teacher, KL reference); ``offload`` keeps it off the accelerator between uses."""
        ...

    def eval_generator(self, model: ModelSource, batch_size: int) -> Generator:
        """A generator for held-out evaluation of a saved model."""
        ...

    def reward_model(
        self, model: ModelSource, optim: OptimConfig, total_steps: int, *, max_length: int = 1024, seed: int = 0
    ) -> RewardModel:
        """A scalar reward model (one-output score head) from a causal LM or a reward-model folder, with AdamW
        and the LR schedule of ``optim``; ``seed`` initialises a new score head."""
        ...

    def close(self) -> None:
        """Stop whatever the backend started (engines, actors); the run is over."""
        ...


def tiny_options(model: ModelConfig) -> dict[str, Any]:
    """``load`` keyword arguments of a recipe's tiny spec (seed, tokenizer, config overrides); {} otherwise."""
    if not model.spec.startswith("tiny:"):
        return {}
    return {"seed": model.seed, "vocab_size": model.vocab_size, "corpus_domains": model.tiny_corpus, **model.tiny}


def resolve_dtype(dtype: str) -> torch.dtype:
    """``auto``: bf16 compute on a GPU that supports it, else fp32."""
    if dtype == "auto":
        cuda_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]


def apply_freeze(model: PreTrainedModel, patterns: list[str]) -> int:
    """Freeze parameters whose name matches one of ``patterns`` (regexes); returns how many were frozen.

    A pattern that matches no parameter is an error: a typo would otherwise train the routers one
    meant to freeze.
    """
    compiled = [re.compile(p) for p in patterns]
    hits = {p.pattern: 0 for p in compiled}
    frozen = 0
    for name, param in model.named_parameters():
        matched = [p for p in compiled if p.search(name)]
        for p in matched:
            hits[p.pattern] += 1
        param.requires_grad_(not matched)
        frozen += bool(matched)
    unused = [p for p, n in hits.items() if n == 0]
    if unused:
        example = next(iter(dict(model.named_parameters())), "")
        raise ValueError(
            f"optim.freeze: {', '.join(repr(p) for p in unused)} matched no parameter of "
            f"{model.config.model_type} (names look like {example!r})"
        )
    if patterns:
        total = sum(1 for _ in model.parameters())
        count = sum(p.numel() for p in model.parameters() if not p.requires_grad)
        console.print(f"frozen: {frozen}/{total} parameter tensors ({count:,} weights)", highlight=False)
    return frozen


class LocalBackend:
    """Everything in this process, on the GPU when there is one, else the CPU."""

    def __init__(self, engine: EngineConfig, model: ModelConfig) -> None:
        self.engine = engine
        self.model_config = model
        self.dtype = resolve_dtype(model.dtype)
        self._tiny: dict[str, tuple[PreTrainedModel, PreTrainedTokenizerBase]] = {}

    def _load(self, source: ModelSource, dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        from cascade_rl.model.load import load

        spec = str(source)
        if not spec.startswith("tiny:"):
            return load(spec, dtype=dtype)
        if spec not in self._tiny:  # built from its seed (the tokenizer is trained on the spot): build once
            self._tiny[spec] = load(spec, dtype=torch.float32, **tiny_options(self.model_config))
        model, tokenizer = self._tiny[spec]
        return copy.deepcopy(model).to(dtype), tokenizer

    def tokenizer(self, model: ModelSource) -> PreTrainedTokenizerBase:
        from cascade_rl.model.load import load_tokenizer

        spec = str(model)
        return self._load(spec, self.dtype)[1] if spec.startswith("tiny:") else load_tokenizer(spec)

    def policy(
        self, model: ModelSource, optim: OptimConfig, total_steps: int, *, microbatch_tokens: int | None = None
    ) -> LocalPolicy:
        module, tokenizer = self._load(model, torch.float32)  # fp32 master weights, whatever the compute dtype
        apply_freeze(module, list(optim.freeze))
        settings = OptimSettings.from_config(optim, total_steps)
        return LocalPolicy(
            module,
            tokenizer,
            settings,
            token_budget=microbatch_tokens or self.engine.microbatch_tokens,
            layout=self.engine.layout,
            compute_dtype=self.dtype,
            save_dtype=None if self.dtype == torch.float32 else self.dtype,
            activation_checkpointing=self.engine.activation_checkpointing,
        )

    def generator(self, policy: Policy, *, separate: bool = False) -> LocalGenerator:
        if not isinstance(policy, LocalPolicy):
            raise TypeError(f"the local backend generates from its own LocalPolicy, got {type(policy).__name__}")
        # the policy's own module unless asked otherwise: sync is free, the sampler's numerics are the trainer's
        module = copy.deepcopy(policy.model).eval().requires_grad_(False) if separate else policy.model
        return LocalGenerator(module, batch_size=self.engine.decode_batch, compute_dtype=self.dtype)

    def scorer(self, model: ModelSource, *, offload: bool = False) -> LocalScorer:
        module, _ = self._load(model, self.dtype)
        module.eval().requires_grad_(False)
        return LocalScorer(
            module, token_budget=self.engine.microbatch_tokens, layout=self.engine.layout, offload=offload
        )

    def eval_generator(self, model: ModelSource, batch_size: int) -> LocalGenerator:
        module, _ = self._load(model, self.dtype)
        return LocalGenerator(module.eval(), batch_size=batch_size)

    def reward_model(
        self, model: ModelSource, optim: OptimConfig, total_steps: int, *, max_length: int = 1024, seed: int = 0
    ) -> LocalRewardModel:
        """An HF folder (causal LM or reward model) loads directly; other specs (tiny, GGUF) are loaded as
        causal LMs first and pass through a temporary folder, where the score head is added."""
        import tempfile

        from cascade_rl.engines.reward_model import load_reward_model
        from cascade_rl.model.load import load_tokenizer, save

        source = Path(str(model)).expanduser()
        if (source / "config.json").is_file():
            module, tokenizer = load_reward_model(source, seed=seed), load_tokenizer(source)
        else:
            causal, tokenizer = self._load(model, torch.float32)
            with tempfile.TemporaryDirectory() as tmp:
                save(causal.cpu(), tokenizer, tmp)
                module = load_reward_model(tmp, seed=seed, name=str(model))
            del causal
        module.to("cuda" if torch.cuda.is_available() else "cpu")
        apply_freeze(module, list(optim.freeze))
        settings = OptimSettings.from_config(optim, total_steps)
        return LocalRewardModel(
            module,
            tokenizer,
            settings,
            max_length=max_length,
            token_budget=self.engine.microbatch_tokens,
            compute_dtype=self.dtype,
            save_dtype=None if self.dtype == torch.float32 else self.dtype,
        )

    def close(self) -> None:
        self._tiny.clear()


def _ray_backend(engine: EngineConfig, model: ModelConfig) -> Backend:
    from cascade_rl.engines.ray import RayBackend  # Ray and vLLM stay unimported on the local path

    return RayBackend(engine, model)


BACKENDS: dict[str, Callable[[EngineConfig, ModelConfig], Backend]] = {"local": LocalBackend, "ray": _ray_backend}


def build_backend(engine: EngineConfig, model: ModelConfig) -> Backend:
    """The backend the recipe's ``engine.kind`` names."""
    try:
        factory = BACKENDS[engine.kind]
    except KeyError:
        raise ValueError(f"unknown engine kind {engine.kind!r}; registered: {', '.join(sorted(BACKENDS))}") from None
    return factory(engine, model)
