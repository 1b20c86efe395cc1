"""In-process engines: one torch model on the CPU or one GPU.

``LocalPolicy`` trains (forward/backward on micro-batches, AdamW, warm-up + cosine) with fp32
master weights and, where configured, bf16 autocast for compute; ``LocalScorer`` scores tokens
under a frozen model (teachers, reference); ``LocalGenerator`` samples with a KV cache. In-process,
the generator can share the policy's module, so ``sync`` costs nothing; a separate generator copies
the weights.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from cascade_rl.algo.logprobs import chunked_lm_logprobs
from cascade_rl.algo.losses import summarize_metrics
from cascade_rl.algo.moe import load_balancing_loss
from cascade_rl.algo.step_losses import Normalisers, get_step_loss
from cascade_rl.engines.base import Policy, SamplingParams, TrainBatch, TrainSequence
from cascade_rl.engines.microbatch import (
    UNPACKABLE_MODEL_TYPES,
    MicroBatch,
    attention_pair_cost,
    make_microbatches,
    values_SL,
)
from cascade_rl.engines.sampling import sample_next
from cascade_rl.engines.training import AdamWTrainer, OptimSettings
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


def autocast(device: torch.device, dtype: torch.dtype) -> Any:
    """Compute in ``dtype`` where that is lower than the weights' fp32 (bf16 master-weight training)."""
    if dtype == torch.float32:
        return nullcontext()
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        dtype = torch.float16
    return torch.autocast(device.type, dtype=dtype)


def _model_device(model: PreTrainedModel) -> torch.device:
    return next(model.parameters()).device


@contextmanager
def checkpointed_layers(model: PreTrainedModel, enabled: bool) -> Iterator[None]:
    """While active (and grad is on), every decoder layer's forward runs under non-reentrant activation
    checkpointing: the forward keeps only each layer's input and backward recomputes the layer.

    transformers' ``gradient_checkpointing_enable`` checkpoints only in train mode, and the trainer runs in eval
    mode (no dropout), so each layer's ``forward`` is shadowed by an instance attribute for the duration instead.
    Module hooks (output capture, FSDP) stay outside the checkpoint because ``__call__`` is not wrapped.
    """
    if not enabled or not torch.is_grad_enabled():
        yield
        return
    layers = list(model.get_decoder().layers)
    shadowed = [layer.__dict__.get("forward") for layer in layers]  # an instance-level wrapper (accelerate) stays
    for layer in layers:
        layer.forward = functools.partial(checkpoint, layer.forward, use_reentrant=False)
    try:
        yield
    finally:
        for layer, previous in zip(layers, shadowed, strict=True):
            if previous is None:
                del layer.forward
            else:
                layer.forward = previous


class TokenScorer(torch.nn.Module):
    """The decoder, then the LM head on the predicting positions only (the largest matmul of a small
    model runs on scored rows, never on the whole [T, V]).

    A module of its own so that a sharded engine can wrap it as the FSDP root: the embedding, final norm
    and head are gathered by the root's forward, which the decoder-only call would bypass.
    """

    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__()
        self.lm = model

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        rows_N: torch.Tensor,
        targets_N: torch.Tensor,
        *,
        temperature: float,
        chunk_size: int,
        with_entropy: bool = False,
        router_logits: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None, tuple[torch.Tensor, ...]]:
        extra = {"output_router_logits": True} if router_logits else {}
        out = self.lm.get_decoder()(
            input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask, use_cache=False, **extra
        )
        hidden = out.last_hidden_state.flatten(0, 1).index_select(0, rows_N)
        weight = self.lm.get_output_embeddings().weight
        logprobs_N, entropy_N = chunked_lm_logprobs(
            hidden, weight, targets_N, chunk_size, temperature, with_entropy=with_entropy
        )
        return logprobs_N, entropy_N, tuple(getattr(out, "router_logits", None) or ())


class LocalScorer:
    """Token log-probs under a frozen model, computed without [T, V] logits in memory.

    ``offload``: the model waits in CPU memory and visits ``device`` only while it scores (teachers
    loaded once, held off the accelerator between uses; on a CPU-only machine nothing moves).
    """

    activation_checkpointing: bool = False  # LocalPolicy sets it from the recipe's engine section

    def __init__(
        self,
        model: PreTrainedModel,
        *,
        token_budget: int = 4096,
        chunk_size: int = 1024,
        layout: str = "auto",
        compute_dtype: torch.dtype = torch.float32,
        offload: bool = False,
    ) -> None:
        check_plain_lm_head(model)
        self.model = model
        self.scoring = self._scoring_module(model)
        self.token_budget = token_budget
        self.chunk_size = chunk_size
        self.layout = choose_layout(model, layout)
        self.pad_id = model.config.pad_token_id or 0
        self.compute_dtype = compute_dtype
        self.pair_cost = attention_pair_cost(model.config) if self.layout == "shared_prefix" else 0.0
        self.home = _model_device(model)
        self.offload = offload and self.home.type != "cpu"
        if self.offload:
            self.model.to("cpu")

    def _scoring_module(self, model: PreTrainedModel) -> torch.nn.Module:
        return TokenScorer(model)

    @property
    def device(self) -> torch.device:
        return _model_device(self.model)

    def microbatches(self, seqs: Sequence[TrainSequence]) -> list[MicroBatch]:
        return make_microbatches(
            seqs,
            self.token_budget,
            packed=self.layout == "packed",
            shared_prefix=self.layout == "shared_prefix",
            pad_id=self.pad_id,
            pair_cost=self.pair_cost,
        )

    def forward_SL(
        self, mb: MicroBatch, temperature: float, *, with_entropy: bool = False, router_logits: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None, tuple[torch.Tensor, ...]]:
        """Log-probs (and entropies) of the micro-batch's scored tokens as [S, L] (0 where not scored),
        plus the per-layer router logits of MoE models when ``router_logits`` is asked for."""
        dev = self.device
        scored = mb.scored_SL.to(dev)
        if mb.rows_N.numel() == 0:  # nothing to score (e.g. only overlong-filtered rollouts): skip the model
            zeros = torch.zeros(scored.shape, device=dev)
            return zeros, (zeros.clone() if with_entropy else None), ()
        with autocast(dev, self.compute_dtype), checkpointed_layers(self.model, self.activation_checkpointing):
            logprobs_N, entropy_N, routers = self.scoring(
                mb.input_ids.to(dev),
                mb.position_ids.to(dev),
                self._attention_mask(mb),
                mb.rows_N.to(dev),
                mb.targets_N.to(dev),
                temperature=temperature,
                chunk_size=self.chunk_size,
                with_entropy=with_entropy,
                router_logits=router_logits,
            )
        gather = mb.gather_SL.to(dev)
        logprobs_SL = logprobs_N[gather] * scored
        entropy_SL = None if entropy_N is None else entropy_N[gather] * scored
        return logprobs_SL, entropy_SL, routers

    def _attention_mask(self, mb: MicroBatch) -> torch.Tensor | None:
        if mb.attention_mask is None:
            return None
        mask = mb.attention_mask.to(self.device)
        if mask.ndim == 4 and self.model.config._attn_implementation == "eager":
            # eager attention adds the mask to the scores: it needs 0 / very negative, not booleans
            return torch.zeros(mask.shape, device=mask.device).masked_fill(~mask, torch.finfo(torch.float32).min)
        return mask

    @contextmanager
    def _resident(self) -> Iterator[None]:
        if not self.offload:
            yield
            return
        self.model.to(self.home)
        try:
            yield
        finally:
            self.model.to("cpu")

    @torch.no_grad()
    def logprobs(self, sequences: Sequence[TrainSequence], temperature: float = 1.0) -> list[list[float]]:
        self.model.eval()
        result: list[list[float]] = [[] for _ in sequences]
        with self._resident():
            for mb in self.microbatches(sequences):
                logprobs_SL, _, _ = self.forward_SL(mb, temperature)
                if mb.filler:
                    continue
                for s, i in enumerate(mb.indices):
                    mask = torch.tensor(sequences[i].mask, device=self.device)
                    result[i] = (logprobs_SL[s, : len(sequences[i].tokens)] * mask).float().cpu().tolist()
        return result


class LocalPolicy(LocalScorer, AdamWTrainer):
    """A trainable policy: forward/backward over micro-batches with the step's global normalisers, then AdamW.

    The module's parameters stay fp32 (the master weights: a bf16 weight cannot take a 3e-6 step, its
    spacing near 0.02 is ~1e-4) and ``compute_dtype`` runs the forward under autocast. The forward runs
    in eval mode: no dropout, so the trainer's log-probs are the sampler's (ratio 1 on-policy).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        optim: OptimSettings,
        *,
        token_budget: int = 4096,
        layout: str = "auto",
        compute_dtype: torch.dtype = torch.float32,
        save_dtype: torch.dtype | None = None,
        activation_checkpointing: bool = False,
    ) -> None:
        if any(p.is_floating_point() and p.dtype != torch.float32 for p in model.parameters()):
            raise ValueError("LocalPolicy keeps fp32 master weights: load the trained model in float32")
        super().__init__(model, token_budget=token_budget, layout=layout, compute_dtype=compute_dtype)
        self.tokenizer = tokenizer
        self.save_dtype = save_dtype
        self.activation_checkpointing = activation_checkpointing
        # MoE routers that train get the load-balancing loss the CausalLM forward would have added.
        self.router_aux_coef = float(getattr(model.config, "router_aux_loss_coef", 0.0) or 0.0)
        if not any(p.requires_grad for n, p in model.named_parameters() if ".gate." in n or "router" in n):
            self.router_aux_coef = 0.0
        self._init_optimizer(optim)

    def forward_backward(
        self, batch: TrainBatch, loss: str, config: Mapping[str, Any] | None = None
    ) -> dict[str, float]:
        """Accumulate gradients of the registered step loss over the batch (normalisers from the batch)."""
        return summarize_metrics(self.microbatch_metrics(batch, loss, config))

    def microbatch_metrics(
        self, batch: TrainBatch, loss: str, config: Mapping[str, Any] | None = None
    ) -> list[dict[str, float]]:
        """``forward_backward``'s work, returning one additive metrics dict per micro-batch (data-parallel
        ranks add theirs up before the per-token means are derived)."""
        spec, config = get_step_loss(loss), dict(config or {})
        norm = Normalisers(batch.num_tokens, batch.num_sequences)
        self.model.eval()  # dropout off: see the class docstring
        microbatches = self.microbatches(batch.sequences)
        real_total = self._step_real_tokens(microbatches) if self.router_aux_coef > 0 else 0  # MoE routers only
        per_mb: list[dict[str, float]] = []
        for mb in microbatches:
            logprobs_SL, entropy_SL, routers = self.forward_SL(
                mb, batch.temperature, with_entropy=spec.entropy, router_logits=self.router_aux_coef > 0
            )
            if mb.filler:  # a zero loss through the whole graph: the backward collectives still run
                (logprobs_SL.sum() * 0.0).backward()
                continue
            tensors = {k: v.to(logprobs_SL.device) for k, v in values_SL(batch.sequences, mb).items()}
            value, metrics = spec.fn(logprobs_SL, tensors, norm, config)
            metrics = {k: float(v) for k, v in metrics.items()}
            if routers:
                # each micro-batch's mean over its real tokens, weighted by its share of the step's tokens
                aux = self._router_aux(routers, mb) * (_real_tokens(mb) / real_total)
                value = value + self.router_aux_coef * aux
                metrics["router_aux_loss"] = float(aux.detach())
            if value.requires_grad:  # a micro-batch with nothing scored has no graph (and no gradient)
                value.backward()
            metrics["loss"] = float(value.detach())
            if entropy_SL is not None:
                metrics["entropy_sum"] = float((entropy_SL.detach() * tensors["mask"]).sum())
                metrics.setdefault("tokens", float(tensors["mask"].sum()))
            per_mb.append(metrics)
        return per_mb

    def _step_real_tokens(self, microbatches: Sequence[MicroBatch]) -> int:
        """Real input positions of the whole step (what the router loss's per-micro-batch shares divide by)."""
        return sum(_real_tokens(mb) for mb in microbatches if not mb.filler)

    def _router_aux(self, routers: tuple[torch.Tensor, ...], mb: MicroBatch) -> torch.Tensor:
        config = self.model.config
        real = None if mb.real_RT is None else mb.real_RT.flatten().to(self.device)
        experts = getattr(config, "num_experts", None) or config.n_routed_experts
        return load_balancing_loss(routers, experts, config.num_experts_per_tok, real)

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        return untied(self.model, {k: v.detach().cpu() for k, v in self.model.state_dict().items()})

    def save(self, path: Path) -> None:
        from cascade_rl.model.load import save

        save(self.model, self.tokenizer, path, dtype=self.save_dtype)

    def _reload(self, folder: Path) -> PreTrainedModel:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)


def untied(model: PreTrainedModel, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` without the second name of a tied weight (a tied LM head travels as the embedding only)."""
    first: dict[int, str] = {}
    duplicates = set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in first:
            duplicates.add(name)
        first.setdefault(id(param), name)
    return {k: v for k, v in state.items() if k not in duplicates}


def load_untied(model: PreTrainedModel, state: dict[str, torch.Tensor]) -> None:
    """Load a state dict that ``untied`` stripped: only the tied names may be missing."""
    tied = set(model.state_dict()) - set(untied(model, model.state_dict()))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if set(missing) - tied or unexpected:
        raise KeyError(f"weights do not fit the model: missing {sorted(set(missing) - tied)}, unexpected {unexpected}")


def _real_tokens(mb: MicroBatch) -> int:
    return int(mb.input_ids.numel() if mb.real_RT is None else mb.real_RT.sum())


@dataclass
class _Decoding:
    """What the decode loop carries for a batch of rows."""

    logits: torch.Tensor  # [B, V] next-token logits
    cache: Any  # the model's KV (and, for hybrids, SSM) cache
    attention: torch.Tensor  # [B, T] 1 on real tokens (prompts are left-padded)
    position: torch.Tensor  # [B] position id of each row's last token


class LocalGenerator:
    """Batched sampling with a KV cache; log-probs are those of the distribution actually sampled."""

    def __init__(
        self, model: PreTrainedModel, *, batch_size: int = 64, compute_dtype: torch.dtype = torch.float32
    ) -> None:
        self.model = model
        self.batch_size = batch_size
        self.compute_dtype = compute_dtype
        self.version = 0
        self.pad_id = model.config.pad_token_id or 0
        # Prefill only needs the last position's logits; the [rows, prompt, V] head output is waste.
        self._last_logits_only = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._copy_cache_rows = True  # cleared once a cache kind turns out not to support it

    def sync(self, policy: Policy, version: int) -> None:
        self.version = version
        if isinstance(policy, LocalScorer) and policy.model is self.model:
            return  # same module in-process: already current
        if isinstance(policy, LocalScorer):
            self.model.load_state_dict(policy.model.state_dict())  # casts to this model's dtype
            return
        load_untied(self.model, policy.full_state_dict())  # a remote policy: its gathered weights

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
        return _model_device(self.model)

    def _batch(self, prompts: Sequence[list[int]], params: SamplingParams, gen: torch.Generator) -> list[Completion]:
        dev, rows = self.device, len(prompts)
        state = self._prefill(prompts)
        stop = torch.tensor(params.stop_token_ids or [-1], device=dev)
        tokens = torch.zeros(rows, params.max_new_tokens, dtype=torch.long, device=dev)
        logprobs = torch.zeros(rows, params.max_new_tokens, device=dev)
        done = torch.zeros(rows, dtype=torch.bool, device=dev)
        lengths = torch.full((rows,), params.max_new_tokens, device=dev)
        live = torch.arange(rows, device=dev)  # the batch row of each row still in the decode state
        for t in range(params.max_new_tokens):
            points = torch.rand(rows, generator=gen, device=dev)  # one per batch row, whatever has finished
            nxt, lp = sample_next(state.logits.float(), params, points[live])
            stale = done[live]  # finished rows not yet dropped from the decode state
            nxt = torch.where(stale, self.pad_id, nxt)
            tokens[live, t], logprobs[live, t] = nxt, lp
            newly = ~stale & torch.isin(nxt, stop)
            lengths[live[newly]] = t + 1
            done[live[newly]] = True
            if bool(done.all()) or t + 1 == params.max_new_tokens:
                break
            stale = done[live]
            # Finished rows leave the decode state once they are a quarter of it: each step then costs
            # what the rows still sampling need, and the cache is copied at most ~log(rows) / log(4/3) times.
            # The rows left sample what they would have in the full batch, up to floating-point effects of
            # the batch size on the kernels (rare flips of near-tied tokens).
            if 4 * int(stale.sum()) >= len(live) and self._keep_rows(state, (~stale).nonzero().squeeze(1)):
                live, nxt = live[~stale], nxt[~stale]
            self._step(state, nxt)
        token_rows, logprob_rows = tokens.tolist(), logprobs.tolist()
        return [
            Completion(
                tokens=tuple(token_rows[r][:n]),
                logprobs=tuple(logprob_rows[r][:n]),
                finish_reason="stop" if finished else "length",
                policy_version=self.version,
            )
            for r, (n, finished) in enumerate(zip(lengths.tolist(), done.tolist(), strict=True))
        ]

    def _keep_rows(self, state: _Decoding, keep: torch.Tensor) -> bool:
        """Drop every decode row but ``keep`` from ``state``. False for a cache kind without row reordering (the
        base ``Cache`` raises before it changes anything); the rows then stay, as they did before compaction."""
        if not self._copy_cache_rows:
            return False
        try:
            state.cache.reorder_cache(keep)
        except (AttributeError, NotImplementedError):
            self._copy_cache_rows = False
            return False
        state.attention, state.position = state.attention[keep], state.position[keep]
        return True

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
        with autocast(dev, self.compute_dtype):
            out = self.model(input_ids=ids, attention_mask=attention, position_ids=positions, use_cache=True, **keep)
        return _Decoding(out.logits[:, -1], out.cache, attention, positions[:, -1])

    def _step(self, state: _Decoding, nxt: torch.Tensor) -> None:
        """Feed every row's sampled token; ``state`` then holds the next logits."""
        state.attention = torch.cat([state.attention, state.attention.new_ones(len(nxt), 1)], 1)
        state.position = state.position + 1
        with autocast(self.device, self.compute_dtype):
            out = self.model(
                input_ids=nxt[:, None],
                attention_mask=state.attention,
                position_ids=state.position[:, None],
                cache=state.cache,
                use_cache=True,
            )
        state.logits, state.cache = out.logits[:, -1], out.cache
