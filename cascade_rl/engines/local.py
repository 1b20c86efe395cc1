"""In-process engines: one torch model on the CPU or one GPU.

``LocalPolicy`` trains (forward/backward on packed micro-batches, AdamW, warm-up + cosine),
``LocalScorer`` scores tokens under a frozen model (teachers, reference), and ``LocalGenerator``
samples with a KV cache. In-process, the generator can share the policy's module, so ``sync`` is
free; a separate generator copies the weights.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from cascade_rl.algo.logprobs import chunked_lm_logprobs
from cascade_rl.algo.losses import summarize_metrics
from cascade_rl.engines.base import LossFn, Policy, SamplingParams, TrainBatch, TrainSequence
from cascade_rl.engines.microbatch import UNPACKABLE_MODEL_TYPES, MicroBatch, make_microbatches, values_SL
from cascade_rl.types import Completion


def supports_packing(model: PreTrainedModel) -> bool:
    """Position-id document masking isolates samples only if no layer carries state along the sequence."""
    return model.config.model_type not in UNPACKABLE_MODEL_TYPES


def choose_layout(model: PreTrainedModel, layout: str = "auto") -> str:
    """``packed`` rows need varlen attention to be cheap: FlashAttention skips the masked blocks, while
    SDPA would get a dense [T, T] mask and spend O(T^2) on a pack. So ``auto`` packs under
    FlashAttention and otherwise uses length-sorted padded rows (O(sum L^2), little padding)."""
    if layout == "auto":
        varlen = str(model.config._attn_implementation).startswith("flash")
        return "packed" if varlen and supports_packing(model) else "padded"
    if layout == "packed" and not supports_packing(model):
        raise ValueError(
            f"{model.config.model_type} carries state along the sequence (Mamba layers), so packed samples would "
            "see each other; use layout='padded' (per-sample rows)"
        )
    if layout not in ("packed", "padded"):
        raise ValueError(f"layout must be auto, packed or padded, got {layout!r}")
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
        self.model = model
        self.token_budget = token_budget
        self.chunk_size = chunk_size
        self.layout = choose_layout(model, layout)
        self.pad_id = model.config.pad_token_id or 0
        self.temperature = 1.0  # the RL loop sets the sampling temperature so pi_train matches pi_inf

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def microbatches(self, seqs: Sequence[TrainSequence]) -> list[MicroBatch]:
        return make_microbatches(seqs, self.token_budget, packed=self.layout == "packed", pad_id=self.pad_id)

    def forward_SL(self, mb: MicroBatch, *, with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Log-probs (and entropies) of every sequence token, as [S, L] (0 where not valid)."""
        dev = self.device
        with _autocast(dev):
            out = self.model.get_decoder()(
                input_ids=mb.input_ids.to(dev),
                position_ids=mb.position_ids.to(dev),
                attention_mask=None if mb.attention_mask is None else mb.attention_mask.to(dev),
                use_cache=False,
            )
        hidden = out.last_hidden_state.flatten(0, 1)
        weight = self.model.get_output_embeddings().weight
        logprobs_N, entropy_N = chunked_lm_logprobs(
            hidden, weight, mb.targets.flatten().to(dev), self.chunk_size, self.temperature, with_entropy=with_entropy
        )
        gather, valid = mb.gather_SL.to(dev), mb.valid_SL.to(dev)
        logprobs_SL = logprobs_N[gather] * valid
        entropy_SL = None if entropy_N is None else entropy_N[gather] * valid
        return logprobs_SL, entropy_SL

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

    def state_dict(self) -> Mapping[str, torch.Tensor]:
        return self.model.state_dict()

    def save(self, path: Path) -> None:
        from cascade_rl.model.load import save

        save(self.model, self.tokenizer, path)


class LocalGenerator:
    """Batched sampling with a KV cache; log-probs are those of the distribution actually sampled."""

    def __init__(self, model: PreTrainedModel, *, batch_size: int = 64) -> None:
        self.model = model
        self.batch_size = batch_size
        self.pad_id = model.config.pad_token_id or 0

    def sync(self, policy: Policy) -> None:
        if isinstance(policy, LocalScorer) and policy.model is self.model:
            return  # same module in-process: already current
        self.model.load_state_dict(policy.state_dict())

    @torch.no_grad()
    def generate(self, prompts: Sequence[list[int]], params: SamplingParams) -> list[list[Completion]]:
        self.model.eval()
        jobs = [(p, k) for p in range(len(prompts)) for k in range(params.n)]
        # Similar lengths together: less left padding, and the order is deterministic.
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
        width = max(len(p) for p in prompts)
        ids = torch.full((rows, width), self.pad_id, dtype=torch.long, device=dev)
        attention = torch.zeros(rows, width, dtype=torch.long, device=dev)
        for r, p in enumerate(prompts):  # left padding: every row's next token lands in the same column
            ids[r, width - len(p) :] = torch.tensor(p, device=dev)
            attention[r, width - len(p) :] = 1
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        stop = torch.tensor(params.stop_token_ids or [-1], device=dev)
        tokens = torch.zeros(rows, params.max_new_tokens, dtype=torch.long, device=dev)
        logprobs = torch.zeros(rows, params.max_new_tokens, device=dev)
        done = torch.zeros(rows, dtype=torch.bool, device=dev)
        lengths = torch.full((rows,), params.max_new_tokens, device=dev)
        with _autocast(dev):
            out = self.model(input_ids=ids, attention_mask=attention, position_ids=positions, use_cache=True)
        cache, last_pos = out.past_key_values, positions[:, -1]
        for t in range(params.max_new_tokens):
            nxt, lp = sample_next(out.logits[:, -1].float(), params, gen)
            nxt = torch.where(done, self.pad_id, nxt)
            tokens[:, t], logprobs[:, t] = nxt, lp
            newly = ~done & torch.isin(nxt, stop)
            lengths = torch.where(newly, t + 1, lengths)
            done |= newly
            if bool(done.all()) or t + 1 == params.max_new_tokens:
                break
            attention = torch.cat([attention, torch.ones(rows, 1, dtype=attention.dtype, device=dev)], 1)
            last_pos = last_pos + 1
            with _autocast(dev):
                out = self.model(
                    input_ids=nxt[:, None],
                    attention_mask=attention,
                    position_ids=last_pos[:, None],
                    cache=cache,
                    use_cache=True,
                )
            cache = out.past_key_values
        result = []
        for r in range(rows):
            n = int(lengths[r])
            result.append(
                Completion(
                    tokens=tuple(tokens[r, :n].tolist()),
                    logprobs=tuple(logprobs[r, :n].tolist()),
                    finish_reason="stop" if bool(done[r]) else "length",
                )
            )
        return result


def sample_next(
    logits_BV: torch.Tensor, params: SamplingParams, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per row; return it and its log-prob under the (tempered, truncated) distribution."""
    if params.temperature == 0:
        logp = torch.log_softmax(logits_BV, -1)
        token = logp.argmax(-1)
        return token, logp.gather(-1, token[:, None]).squeeze(-1)
    scores = logits_BV / params.temperature
    if params.top_k > 0 and params.top_k < scores.shape[-1]:
        kth = torch.topk(scores, params.top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=True, dim=-1)
        cumulative = torch.softmax(sorted_scores, -1).cumsum(-1)
        # Keep the smallest prefix whose mass reaches top_p (the first token is always kept).
        drop_sorted = (cumulative - torch.softmax(sorted_scores, -1)) >= params.top_p
        scores = scores.masked_fill(torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted), float("-inf"))
    logp = torch.log_softmax(scores, -1)
    token = torch.multinomial(logp.exp(), 1, generator=gen).squeeze(-1)
    return token, logp.gather(-1, token[:, None]).squeeze(-1)
