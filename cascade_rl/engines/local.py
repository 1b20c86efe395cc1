"""In-process engines: one torch model on the CPU or one GPU.

``LocalPolicy`` trains (forward/backward on packed micro-batches, AdamW, warm-up + cosine),
``LocalScorer`` scores tokens under a frozen model (teachers, reference), and ``LocalGenerator``
samples with a KV cache. In-process, the generator can share the policy's module, so ``sync`` is
free; a separate generator copies the weights.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from cascade_rl.algo.logprobs import chunked_lm_logprobs
from cascade_rl.algo.losses import summarize_metrics
from cascade_rl.engines.base import LossFn, Policy, SamplingParams, TrainBatch, TrainSequence
from cascade_rl.engines.microbatch import (
    UNPACKABLE_MODEL_TYPES,
    MicroBatch,
    attention_pair_cost,
    make_microbatches,
    values_SL,
)
from cascade_rl.engines.sampling import sample_next
from cascade_rl.types import Completion


def supports_packing(model: PreTrainedModel) -> bool:
    """Position-id document masking isolates samples only if no layer carries state along the sequence."""
    return model.config.model_type not in UNPACKABLE_MODEL_TYPES


# Config fields with which a model transforms its logits after the LM-head matmul (Gemma-2/3,
# Granite, Cohere): the trainer's chunked log-probs would miss them, so such heads are refused.
LOGIT_TRANSFORMS = {"final_logit_softcapping": None, "logits_scaling": 1.0, "logit_scale": 1.0}


def check_plain_lm_head(model: PreTrainedModel) -> None:
    """The trainer scores tokens as ``log_softmax(hidden @ lm_head.weight.T / T)`` without calling the head;
    refuse a model whose head does more (a bias, scaling, soft-capping) rather than mis-score it."""
    config, head = model.config, model.get_output_embeddings()
    problems = [
        f"{k}={getattr(config, k)!r}" for k, plain in LOGIT_TRANSFORMS.items() if getattr(config, k, plain) != plain
    ]
    if getattr(head, "bias", None) is not None:
        problems.append("a bias on the LM head")
    if problems:
        raise ValueError(
            f"{config.model_type}: the LM head applies {', '.join(problems)} to its logits; the trainer computes "
            "log-probs from the head's weight alone, so this model is not supported"
        )


# Attention kernels that take an arbitrary 4D mask (what shared-prefix rows need); FlashAttention's
# varlen interface can only isolate whole documents, not let several suffixes share one prefix.
DENSE_MASK_ATTENTION = ("sdpa", "eager")
LAYOUTS = ("packed", "padded", "shared_prefix")


def choose_layout(model: PreTrainedModel, layout: str = "auto") -> str:
    """``packed`` rows need varlen attention to be cheap: FlashAttention skips the masked blocks, while
    SDPA would get a dense [T, T] mask and spend O(T^2) on a pack. So ``auto`` packs under
    FlashAttention. Under SDPA / eager it picks ``shared_prefix``: rollouts of one group (same prompt)
    share a row and run the prompt once, everything else gets length-sorted padded rows (O(sum L^2),
    little padding). Models with state along the sequence (Mamba) only ever get padded rows."""
    attention = str(model.config._attn_implementation)
    if layout == "auto":
        if not supports_packing(model):
            return "padded"
        if attention.startswith("flash"):
            return "packed"
        return "shared_prefix" if attention in DENSE_MASK_ATTENTION else "padded"
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be auto, {', '.join(LAYOUTS)}, got {layout!r}")
    if layout in ("packed", "shared_prefix") and not supports_packing(model):
        raise ValueError(
            f"{model.config.model_type} carries state along the sequence (Mamba layers), so packed samples would "
            "see each other; use layout='padded' (per-sample rows)"
        )
    if layout == "shared_prefix" and attention not in DENSE_MASK_ATTENTION:
        raise ValueError(f"layout='shared_prefix' needs a 4D attention mask (sdpa or eager), not {attention!r}")
    return layout


def _autocast(device: torch.device) -> Any:
    """bf16 autocast on GPUs that support it; full fp32 elsewhere (CPU bf16 is slow and lossy)."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


class LocalScorer:
    """Token log-probs under a frozen model, computed without [T, V] logits in memory."""

    def __init__(
        self, model: PreTrainedModel, *, token_budget: int = 4096, chunk_size: int = 1024, layout: str = "auto"
    ) -> None:
        check_plain_lm_head(model)
        self.model = model
        self.token_budget = token_budget
        self.chunk_size = chunk_size
        self.layout = choose_layout(model, layout)
        self.pad_id = model.config.pad_token_id or 0
        self.temperature = 1.0  # the RL loop sets the sampling temperature so pi_train matches pi_inf
        self.pair_cost = attention_pair_cost(model.config) if self.layout == "shared_prefix" else 0.0

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def microbatches(self, seqs: Sequence[TrainSequence]) -> list[MicroBatch]:
        return make_microbatches(
            seqs,
            self.token_budget,
            packed=self.layout == "packed",
            shared_prefix=self.layout == "shared_prefix",
            pad_id=self.pad_id,
            pair_cost=self.pair_cost,
        )

    def forward_SL(self, mb: MicroBatch, *, with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Log-probs (and entropies) of the micro-batch's scored tokens, as [S, L] (0 where not scored)."""
        dev = self.device
        scored = mb.scored_SL.to(dev)
        if mb.rows_N.numel() == 0:  # nothing to score (e.g. only overlong-filtered rollouts): skip the model
            zeros = torch.zeros(scored.shape, device=dev)
            return zeros, (zeros.clone() if with_entropy else None)
        with _autocast(dev):
            out = self.model.get_decoder()(
                input_ids=mb.input_ids.to(dev),
                position_ids=mb.position_ids.to(dev),
                attention_mask=self._attention_mask(mb),
                use_cache=False,
            )
        # The LM head (the largest matmul of a small model) runs on the predicting positions only.
        hidden = out.last_hidden_state.flatten(0, 1).index_select(0, mb.rows_N.to(dev))
        weight = self.model.get_output_embeddings().weight
        logprobs_N, entropy_N = chunked_lm_logprobs(
            hidden, weight, mb.targets_N.to(dev), self.chunk_size, self.temperature, with_entropy=with_entropy
        )
        gather = mb.gather_SL.to(dev)
        logprobs_SL = logprobs_N[gather] * scored
        entropy_SL = None if entropy_N is None else entropy_N[gather] * scored
        return logprobs_SL, entropy_SL

    def _attention_mask(self, mb: MicroBatch) -> torch.Tensor | None:
        if mb.attention_mask is None:
            return None
        mask = mb.attention_mask.to(self.device)
        if mask.ndim == 4 and self.model.config._attn_implementation == "eager":
            # eager attention adds the mask to the scores: it needs 0 / very negative, not booleans
            return torch.zeros(mask.shape, device=mask.device).masked_fill(~mask, torch.finfo(torch.float32).min)
        return mask

    @torch.no_grad()
    def logprobs(self, sequences: Sequence[TrainSequence]) -> list[list[float]]:
        result: list[list[float]] = [[] for _ in sequences]
        for mb in self.microbatches(sequences):
            logprobs_SL, _ = self.forward_SL(mb)
            for s, i in enumerate(mb.indices):
                row = logprobs_SL[s, : len(sequences[i].tokens)] * torch.tensor(sequences[i].mask, device=self.device)
                result[i] = row.float().cpu().tolist()
        return result


def lr_lambda(step: int, *, warmup: int, total: int, start_ratio: float, floor_ratio: float | None) -> float:
    """Linear warm-up from ``start_ratio`` to 1, then cosine to ``floor_ratio`` (None: constant)."""
    if step < warmup:
        return start_ratio + (1.0 - start_ratio) * step / warmup
    if floor_ratio is None:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor_ratio + (1.0 - floor_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class LocalPolicy(LocalScorer):
    """A trainable policy: forward/backward over micro-batches with a global normaliser, then AdamW."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        lr: float,
        total_steps: int,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        warmup_start_lr: float = 0.0,
        min_lr: float | None = None,
        grad_clip: float = 1.0,
        token_budget: int = 4096,
        layout: str = "auto",
    ) -> None:
        super().__init__(model, token_budget=token_budget, layout=layout)
        self.tokenizer = tokenizer
        self.grad_clip = grad_clip
        decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2 and "norm" not in n]
        no_decay = [p for n, p in model.named_parameters() if p.requires_grad and (p.ndim < 2 or "norm" in n)]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=lr,
            betas=betas,
            foreach=True,
        )
        ratio = None if min_lr is None else min_lr / lr
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: lr_lambda(
                s, warmup=warmup_steps, total=total_steps, start_ratio=warmup_start_lr / lr, floor_ratio=ratio
            ),
        )

    def forward_backward(self, batch: TrainBatch, loss_fn: LossFn, *, with_entropy: bool = False) -> dict[str, float]:
        """Accumulate gradients of ``loss_fn`` over the batch; losses already carry the global normaliser."""
        self.model.train()
        per_mb: list[dict[str, torch.Tensor | float]] = []
        for mb in self.microbatches(batch.sequences):
            logprobs_SL, entropy_SL = self.forward_SL(mb, with_entropy=with_entropy)
            tensors = {k: v.to(logprobs_SL.device) for k, v in values_SL(batch.sequences, mb).items()}
            loss, metrics = loss_fn(logprobs_SL, tensors)
            if loss.requires_grad:  # a micro-batch with nothing scored has no graph (and no gradient)
                loss.backward()
            metrics = dict(metrics)
            metrics["loss"] = float(loss.detach())
            if entropy_SL is not None:
                metrics["entropy_sum"] = float((entropy_SL.detach() * tensors["mask"]).sum())
                metrics.setdefault("tokens", float(tensors["mask"].sum()))
            per_mb.append(metrics)
        return summarize_metrics(per_mb)

    def optim_step(self) -> dict[str, float]:
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        if self.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        else:
            norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"grad_norm": float(norm), "lr": lr}

    def skip_step(self) -> None:
        """No update this step (nothing to train on), but the LR schedule keeps its pace."""
        with warnings.catch_warnings():  # torch warns when the schedule moves before any optimizer step
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler")
            self.scheduler.step()

    def state_dict(self) -> Mapping[str, torch.Tensor]:
        return self.model.state_dict()

    def save(self, path: Path) -> None:
        from cascade_rl.model.load import save

        save(self.model, self.tokenizer, path)


@dataclass
class _Decoding:
    """What the decode loop carries for a batch of rows."""

    logits: torch.Tensor  # [B, V] next-token logits
    cache: Any  # the model's KV (and, for hybrids, SSM) cache
    attention: torch.Tensor  # [B, T] 1 on real tokens (prompts are left-padded)
    position: torch.Tensor  # [B] position id of each row's last token


class LocalGenerator:
    """Batched sampling with a KV cache; log-probs are those of the distribution actually sampled."""

    def __init__(self, model: PreTrainedModel, *, batch_size: int = 64) -> None:
        self.model = model
        self.batch_size = batch_size
        self.pad_id = model.config.pad_token_id or 0
        # Prefill only needs the last position's logits; the [rows, prompt, V] head output is waste.
        self._last_logits_only = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._copy_cache_rows = True  # cleared once a cache kind turns out not to support it

    def sync(self, policy: Policy) -> None:
        if isinstance(policy, LocalScorer) and policy.model is self.model:
            return  # same module in-process: already current
        self.model.load_state_dict(policy.state_dict())

    @torch.no_grad()
    def generate(self, prompts: Sequence[list[int]], params: SamplingParams) -> list[list[Completion]]:
        self.model.eval()
        jobs = [(p, k) for p in range(len(prompts)) for k in range(params.n)]
        # Similar lengths together: less left padding, and the order is deterministic. The n rows of a
        # prompt stay adjacent, which lets the prefill run each distinct prompt once.
        jobs.sort(key=lambda job: (len(prompts[job[0]]), job[0], job[1]))
        gen = torch.Generator(device=self.device).manual_seed(params.seed)
        results: list[list[Completion | None]] = [[None] * params.n for _ in prompts]
        for start in range(0, len(jobs), self.batch_size):
            chunk = jobs[start : start + self.batch_size]
            for (p, k), completion in zip(chunk, self._batch([prompts[p] for p, _ in chunk], params, gen), strict=True):
                results[p][k] = completion
        return [[c for c in row if c is not None] for row in results]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _batch(self, prompts: Sequence[list[int]], params: SamplingParams, gen: torch.Generator) -> list[Completion]:
        dev, rows = self.device, len(prompts)
        state = self._prefill(prompts)
        stop = torch.tensor(params.stop_token_ids or [-1], device=dev)
        tokens = torch.zeros(rows, params.max_new_tokens, dtype=torch.long, device=dev)
        logprobs = torch.zeros(rows, params.max_new_tokens, device=dev)
        done = torch.zeros(rows, dtype=torch.bool, device=dev)
        lengths = torch.full((rows,), params.max_new_tokens, device=dev)
        for t in range(params.max_new_tokens):
            nxt, lp = sample_next(state.logits.float(), params, gen)
            nxt = torch.where(done, self.pad_id, nxt)
            tokens[:, t], logprobs[:, t] = nxt, lp
            newly = ~done & torch.isin(nxt, stop)
            lengths = torch.where(newly, t + 1, lengths)
            done |= newly
            if bool(done.all()) or t + 1 == params.max_new_tokens:
                break
            self._step(state, nxt)
        token_rows, logprob_rows = tokens.tolist(), logprobs.tolist()
        return [
            Completion(
                tokens=tuple(token_rows[r][:n]),
                logprobs=tuple(logprob_rows[r][:n]),
                finish_reason="stop" if finished else "length",
            )
            for r, (n, finished) in enumerate(zip(lengths.tolist(), done.tolist(), strict=True))
        ]

    def _prefill(self, prompts: Sequence[list[int]]) -> _Decoding:
        """Run the prompts through the model. A prompt's n rows are adjacent, so each distinct prompt
        runs once and its cache rows are then copied n times."""
        firsts = [r for r in range(len(prompts)) if r == 0 or prompts[r] != prompts[r - 1]]
        if not self._copy_cache_rows or len(firsts) == len(prompts):
            return self._forward_prompts(prompts)
        is_first = torch.zeros(len(prompts), dtype=torch.long)
        is_first[firsts] = 1
        source = (is_first.cumsum(0) - 1).to(self.device)  # row -> its distinct prompt
        state = self._forward_prompts([prompts[r] for r in firsts])
        try:
            # Beam search's reorder (row i <- row source[i]) is implemented by every cache layer kind,
            # Mamba conv / SSM states included, unlike batch_repeat_interleave / batch_select_indices.
            state.cache.reorder_cache(source)
        except (AttributeError, NotImplementedError):
            self._copy_cache_rows = False  # a cache that cannot copy rows: prefill every row, as before
            return self._forward_prompts(prompts)
        return _Decoding(state.logits[source], state.cache, state.attention[source], state.position[source])

    def _forward_prompts(self, prompts: Sequence[list[int]]) -> _Decoding:
        dev, rows = self.device, len(prompts)
        width = max(len(p) for p in prompts)
        ids = torch.full((rows, width), self.pad_id, dtype=torch.long, device=dev)
        attention = torch.zeros(rows, width, dtype=torch.long, device=dev)
        for r, p in enumerate(prompts):  # left padding: every row's next token lands in the same column
            ids[r, width - len(p) :] = torch.tensor(p, device=dev)
            attention[r, width - len(p) :] = 1
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        keep = {"logits_to_keep": 1} if self._last_logits_only else {}
        with _autocast(dev):
            out = self.model(input_ids=ids, attention_mask=attention, position_ids=positions, use_cache=True, **keep)
        return _Decoding(out.logits[:, -1], out.cache, attention, positions[:, -1])

    def _step(self, state: _Decoding, nxt: torch.Tensor) -> None:
        """Feed every row's sampled token; ``state`` then holds the next logits."""
        state.attention = torch.cat([state.attention, state.attention.new_ones(len(nxt), 1)], 1)
        state.position = state.position + 1
        with _autocast(self.device):
            out = self.model(
                input_ids=nxt[:, None],
                attention_mask=state.attention,
                position_ids=state.position[:, None],
                cache=state.cache,
                use_cache=True,
            )
        state.logits, state.cache = out.logits[:, -1], out.cache
