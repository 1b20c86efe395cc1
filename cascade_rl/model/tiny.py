"""Tiny models built from configs, and a byte-level BPE tokenizer trained locally in seconds.

Nothing here downloads anything: the tokenizer is trained on a corpus the caller gives (by default
the procedural task domains rendered in the chat format), and the weights are randomly initialised
from a seed. The three families mirror what the framework must train: dense (``qwen3``), MoE
(``qwen3_moe``) and the hybrid Mamba2-attention-MoE of Nemotron-3 (``nemotron_h``).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerFast

from cascade_rl.chat.template import TOOL_INSTRUCTIONS, TOOLS_HEADER

PAD = "<|pad|>"
# Control tokens are "special" (skipped by decode(skip_special_tokens=True)); the format tags are
# plain added tokens so a decoded completion keeps its <think> / <tool_call> structure.
CONTROL_TOKENS = ("<|im_start|>", "<|im_end|>", PAD)
FORMAT_TOKENS = ("<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>")
# The chat format's fixed tool-use boilerplate (~250 word pieces) as single tokens: a tiny model then
# spends its compute on the task instead of on re-reading the same instructions in every tool prompt.
# The XML tags of tool listings and calls likewise (each would otherwise be three word pieces).
_TAGS = ("function", "name", "description", "parameters", "parameter", "type", "required", "tools")
BOILERPLATE_TOKENS = (
    TOOLS_HEADER,
    TOOL_INSTRUCTIONS,
    "<function=",
    "<parameter=",
    *(f"<{t}>" for t in _TAGS),
    *(f"</{t}>" for t in _TAGS),
)

TINY_FAMILIES = ("qwen3", "qwen3_moe", "nemotron_h")

_DEFAULTS: dict[str, dict[str, Any]] = {
    "qwen3": dict(
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
    ),
    "qwen3_moe": dict(
        hidden_size=128,
        intermediate_size=384,
        moe_intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        num_experts=4,
        num_experts_per_tok=2,
        decoder_sparse_step=1,
        mlp_only_layers=[],
    ),
    # Same layer kinds as Nemotron-3-Nano (Mamba2, MoE, GQA attention), a few of each.
    "nemotron_h": dict(
        hidden_size=128,
        layers_block_type=["linear_attention", "moe", "full_attention", "moe"],
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        intermediate_size=256,
        moe_intermediate_size=128,
        moe_shared_expert_intermediate_size=128,
        n_routed_experts=4,
        num_experts_per_tok=2,
        n_shared_experts=1,
        mamba_num_heads=8,
        mamba_head_dim=16,
        n_groups=1,
        ssm_state_size=16,
        chunk_size=32,
        expand=1,
    ),
}


def train_tokenizer(corpus: Iterable[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Byte-level BPE whose control and format tokens are single ids.

    Deterministic for a given corpus and vocabulary size; every byte is in the alphabet, so any
    text (including text the corpus never showed) round-trips through encode/decode.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[*CONTROL_TOKENS, *FORMAT_TOKENS, *BOILERPLATE_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    # Re-register the format tokens as ordinary added tokens: decode(skip_special_tokens=True) keeps them.
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in (*FORMAT_TOKENS, *BOILERPLATE_TOKENS)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token=PAD,
        bos_token=None,
        unk_token=None,
        model_max_length=1 << 20,
    )
    fast.add_special_tokens({"additional_special_tokens": []})
    return fast


# The domains whose renderings train a tiny model's tokenizer unless the recipe names others
# (``model.tiny_corpus``). A fixed list, not every registered task: a new task does not change the
# tokenizer, hence the token ids and every seeded result, of recipes that never use it.
CORPUS_DOMAINS = ("code", "code_tool", "instruct", "json_schema", "math", "mcqa", "tir_math", "tool_call", "workplace")


def default_corpus(n_per_domain: int = 400, seed: int = 0, domains: Sequence[str] = CORPUS_DOMAINS) -> Iterator[str]:
    """Chat-format renderings of procedural domains (both thinking modes): the tiny model's world."""
    from cascade_rl.chat.template import render
    from cascade_rl.data.tasks import make_split

    for domain in sorted(domains):
        for problem in make_split(domain, "train", n_per_domain, seed=seed):
            for thinking in (True, False):
                record = problem.sft_record(thinking)
                yield render(record["messages"], record.get("tools"))


def tiny_config(family: str, tokenizer: PreTrainedTokenizerFast, **overrides: Any) -> PretrainedConfig:
    if family not in _DEFAULTS:
        raise ValueError(f"unknown tiny model family {family!r}; expected one of {', '.join(TINY_FAMILIES)}")
    from transformers import AutoConfig

    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad = tokenizer.convert_tokens_to_ids(PAD)
    fields = {**_DEFAULTS[family], **overrides}
    return AutoConfig.for_model(
        family,
        vocab_size=len(tokenizer),
        eos_token_id=eos,
        pad_token_id=pad,
        bos_token_id=None,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        **fields,
    )


def build_tiny(
    family: str,
    *,
    seed: int = 0,
    corpus: Iterable[str] | None = None,
    corpus_domains: Sequence[str] | None = None,
    vocab_size: int = 1024,
    **overrides: Any,
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """A randomly initialised tiny model of ``family`` and its freshly trained tokenizer: trained on
    ``corpus``, else on ``default_corpus`` of ``corpus_domains`` (None: ``CORPUS_DOMAINS``)."""
    if corpus is None:
        corpus = default_corpus(domains=CORPUS_DOMAINS if corpus_domains is None else corpus_domains)
    tokenizer = train_tokenizer(corpus, vocab_size)
    config = tiny_config(family, tokenizer, **overrides)
    random.seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model, tokenizer
