"""A scalar reward model in-process: a sequence-classification head with one output on a decoder LM.

``AutoModelForSequenceClassification.from_pretrained(causal_lm_folder, num_labels=1)`` keeps the
decoder's weights (``model.*``), drops the LM head and adds ``score``, a bias-free ``Linear(hidden, 1)``
initialised like the model's other linears (normal, ``initializer_range``); qwen3, qwen3_moe and llama
(SmolLM2) all build it this way (``GenericForSequenceClassification``). A folder that already is a
reward model loads as it is. The score of a conversation is ``score(h_last)``: the head applied to the
hidden state of its last token. Transformers finds that token as the rightmost one that is not
``pad_token_id``, so the config's ``pad_token_id`` is set to the tokenizer's pad; here the last token is
taken from the attention mask (right padding), which is the same token for every conversation the chat
format renders (they end with ``<|im_end|>\\n``, never with a pad), and the same score plain
transformers gives.

Training mirrors ``LocalPolicy``: fp32 master weights with ``compute_dtype`` autocast, AdamW without
decay on norms and biases, the warm-up + cosine ``lr_lambda`` schedule, clipping, and a non-finite
gradient norm that is not applied (``nonfinite_update``). ``save`` writes a plain HF folder (with the
tokenizer); ``save_state`` / ``load_state`` resume exactly, through ``checkpoint.write_trainer_state``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from cascade_rl.algo.losses import bradley_terry_loss, summarize_metrics
from cascade_rl.chat import render
from cascade_rl.engines.local import autocast
from cascade_rl.engines.training import AdamWTrainer, OptimSettings

Encoded = Sequence[int]


class RewardModel(Protocol):
    """What a backend's reward model offers the loops and rewards (``LocalRewardModel`` in-process)."""

    def encode(
        self,
        prompt: Sequence[Mapping[str, Any]],
        response: str | Mapping[str, Any],
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> list[int]:
        """Token ids of the conversation ``prompt`` + ``response`` (the assistant turn), as it is scored."""
        ...

    def scores(self, inputs: Sequence[str | Encoded], batch_size: int = 32) -> list[float]:
        """One scalar per input (rendered text or token ids), without gradients."""
        ...

    def forward_backward(self, pairs: Sequence[tuple[Encoded, Encoded]], num_pairs: float) -> dict[str, float]:
        """Accumulate Bradley-Terry gradients over (chosen, rejected) token-id pairs."""
        ...

    def optim_step(self) -> dict[str, float]: ...

    def freeze(self) -> None:
        """Scoring only from now on: no gradients, weights in the compute precision (the score head in fp32)."""
        ...

    def save(self, path: Path) -> None: ...

    def save_state(self, path: Path) -> None: ...

    def load_state(self, path: Path) -> None: ...


def encode_conversation(
    tokenizer: PreTrainedTokenizerBase,
    prompt: Sequence[Mapping[str, Any]],
    response: str | Mapping[str, Any],
    max_length: int,
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> list[int]:
    """Token ids of the chat rendering of ``prompt`` + ``response`` as the assistant turn.

    Longer than ``max_length``: the first tokens go (the start of the prompt), so the response, at
    whose end the score is read, is kept whole unless it alone is longer than ``max_length``.
    """
    message = {"role": "assistant", "content": response} if isinstance(response, str) else dict(response)
    text = render([*prompt, message], tools)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids[-max_length:]


def load_reward_model(folder: str | Path, *, seed: int = 0, name: str | None = None) -> PreTrainedModel:
    """An ``AutoModelForSequenceClassification`` with one output, fp32, from a causal-LM or RM folder.

    A new score head is initialised from ``seed`` without touching the global RNG; ``name`` is what
    errors call the model (default: the folder).
    """
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    verbosity, progress = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # "newly initialized: score.weight" is the point, not a warning
    hf_logging.disable_progress_bar()  # a loading bar per checkpoint resume is noise in the run's output
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1, dtype=torch.float32)
    except ValueError as err:
        if "Unrecognized configuration class" in str(err):
            from transformers import AutoConfig

            kind = AutoConfig.from_pretrained(folder).model_type
            raise ValueError(
                f"{name or folder}: transformers has no sequence-classification model for {kind!r}, so it cannot "
                "be a reward model (qwen3, qwen3_moe and llama-family models can)"
            ) from None
        raise
    finally:
        hf_logging.set_verbosity(verbosity)
        if progress:
            hf_logging.enable_progress_bar()
    if not isinstance(getattr(model, "score", None), torch.nn.Linear):
        raise ValueError(f"{name or folder}: {type(model).__name__} has no linear 'score' head on the last token")
    return model


class LocalRewardModel(AdamWTrainer):
    """Scores conversations and trains on preference pairs with the Bradley-Terry loss.

    ``token_budget``: padded tokens per forward pass (rows x longest row), the pair's two rows kept
    together; ``max_length``: tokens per conversation at most (``encode``).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        optim: OptimSettings,
        *,
        max_length: int = 1024,
        token_budget: int = 4096,
        compute_dtype: torch.dtype = torch.float32,
        save_dtype: torch.dtype | None = None,
    ) -> None:
        if any(p.is_floating_point() and p.dtype != torch.float32 for p in model.parameters()):
            raise ValueError("LocalRewardModel keeps fp32 master weights: load the model in float32")
        self.model, self.tokenizer = model, tokenizer
        self.max_length, self.token_budget = max_length, token_budget
        self.compute_dtype, self.save_dtype = compute_dtype, save_dtype
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        model.config.pad_token_id = self.pad_id  # transformers' own pooling finds the last token by it
        self._init_optimizer(optim)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def freeze(self) -> None:
        self.model.eval().requires_grad_(False)
        if self.compute_dtype != torch.float32:  # half the memory of fp32 master weights next to the policy
            self.model.to(self.compute_dtype)
            self.model.score.float()

    def encode(
        self,
        prompt: Sequence[Mapping[str, Any]],
        response: str | Mapping[str, Any],
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> list[int]:
        """Token ids of one conversation as the model scores it (``encode_conversation``)."""
        return encode_conversation(self.tokenizer, prompt, response, self.max_length, tools)

    def _scores_of(self, rows: Sequence[Encoded]) -> torch.Tensor:
        """[R] scores of token rows, right-padded into one batch (with grad when enabled)."""
        dev, width = self.device, max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros(len(rows), width, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(list(row), dtype=torch.long)
            attention[i, : len(row)] = 1
        ids, attention = ids.to(dev), attention.to(dev)
        with autocast(dev, self.compute_dtype):
            hidden = self.model.base_model(input_ids=ids, attention_mask=attention, use_cache=False).last_hidden_state
        last = hidden[torch.arange(len(rows), device=dev), attention.sum(-1) - 1]
        head = self.model.score
        # the head runs in its own (fp32) precision: bf16 would round scores to steps of ~0.03 at |r| ~ 4
        return head(last.to(head.weight.dtype)).float().squeeze(-1)

    def _chunks(self, lengths: Sequence[int], rows_per_item: int) -> list[list[int]]:
        """Consecutive items grouped so that each group's padded size stays within the token budget."""
        chunks: list[list[int]] = []
        width = 0
        for i, n in enumerate(lengths):
            wider = max(width, n)
            if chunks and wider * rows_per_item * (len(chunks[-1]) + 1) <= self.token_budget:
                chunks[-1].append(i)
                width = wider
            else:
                chunks.append([i])
                width = n
        return chunks

    @torch.no_grad()
    def scores(self, inputs: Sequence[str | Encoded], batch_size: int = 32) -> list[float]:
        """The score of each input: rendered conversation text (its last ``max_length`` tokens) or token ids."""
        self.model.eval()
        rows = [
            self.tokenizer(x, add_special_tokens=False)["input_ids"][-self.max_length :] if isinstance(x, str) else x
            for x in inputs
        ]
        if any(len(r) == 0 for r in rows):
            raise ValueError("an empty input has no last token to score")
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))  # similar lengths together: less padding
        out = [0.0] * len(rows)
        for start in range(0, len(order), batch_size):
            members = order[start : start + batch_size]
            for i, score in zip(members, self._scores_of([rows[i] for i in members]).tolist(), strict=True):
                out[i] = score
        return out

    def forward_backward(self, pairs: Sequence[tuple[Encoded, Encoded]], num_pairs: float) -> dict[str, float]:
        """Accumulate gradients of the Bradley-Terry loss over ``(chosen ids, rejected ids)`` pairs.

        ``num_pairs`` counts the pairs of the whole optimizer step. Metrics: ``loss``, ``pairs``,
        ``accuracy`` (chosen scored higher) and ``margin`` (mean r_c - r_r), plus their ``_sum`` forms.
        """
        self.model.eval()  # no dropout, as the policy trains
        per_mb: list[dict[str, torch.Tensor | float]] = []
        for members in self._chunks([max(len(c), len(r)) for c, r in pairs], rows_per_item=2):
            rows = [row for i in members for row in pairs[i]]  # chosen, rejected, chosen, ...
            scores = self._scores_of(rows)
            loss, metrics = bradley_terry_loss(scores[0::2], scores[1::2], num_pairs)
            loss.backward()
            per_mb.append({**metrics, "loss": float(loss.detach())})
        totals = summarize_metrics(per_mb)
        count = max(totals.get("pairs", 0.0), 1.0)
        return {**totals, "accuracy": totals["accuracy_sum"] / count, "margin": totals["margin_sum"] / count}

    def save(self, path: Path) -> None:
        """A plain HF folder (``AutoModelForSequenceClassification``, one label) with the tokenizer."""
        from cascade_rl.model.load import save

        save(self.model, self.tokenizer, path, dtype=self.save_dtype)

    def _reload(self, folder: Path) -> PreTrainedModel:
        return load_reward_model(folder)
