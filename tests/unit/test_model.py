"""Models: tiny specs load, generate and save as plain Hugging Face folders that ``transformers``
reloads without this package (same logits, same chat template, same token ids); tokenizer training
and initialisation are deterministic; bad specs fail with a ModelSpecError that says what is wrong."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from cascade_rl.chat import encode_prompt, render
from cascade_rl.engines.base import SamplingParams
from cascade_rl.engines.local import LocalGenerator
from cascade_rl.model import ModelSpecError, load, save, train_tokenizer
from cascade_rl.model.tiny import PAD
from tests.conftest import TINY_QWEN3, load_vectors, small_corpus

VOCAB = 512
# Small enough that a load is dominated by tokenizer training, not by initialisation.
OVERRIDES: dict[str, dict[str, Any]] = {
    "qwen3": TINY_QWEN3,
    "qwen3_moe": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "moe_intermediate_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 32,
        "num_experts": 4,
        "num_experts_per_tok": 2,
    },
    # One Mamba2, one MoE and one attention layer: every layer kind of the hybrid.
    "nemotron_h": {
        "hidden_size": 64,
        "layers_block_type": ["linear_attention", "moe", "full_attention"],
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 32,
        "moe_intermediate_size": 32,
        "moe_shared_expert_intermediate_size": 32,
        "mamba_num_heads": 4,
        "mamba_head_dim": 16,
    },
}
FAMILIES = tuple(OVERRIDES)
SPECIAL = (
    "<|im_start|>",
    "<|im_end|>",
    "<think>",
    "</think>",
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
    PAD,
)
VECTORS = load_vectors()
# Golden vectors covering both thinking modes, history trimming, tool listings, tool calls, tool
# responses, non-ASCII text and a role the format passes through.
GOLDEN = [
    v
    for v in VECTORS
    if v["id"]
    in (
        "sys_none_plain",
        "gen_true_multi",
        "multi_4turn_mixed_history",
        "multi_truncate_false_inline",
        "tooldef_system_openai",
        "toolcall_content_two_calls",
        "toolcall_history_truncated",
        "toolresp_last_agp_nothink",
        "misc_emoji",
        "misc_developer_role",
    )
]


def _timed(key: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call ``fn`` and print how long it took (``pytest -s`` shows it)."""
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    print(f"timing {key}: {time.perf_counter() - started:.2f}s")
    return result


@pytest.fixture(scope="module", params=FAMILIES)
def saved(request, tmp_path_factory) -> tuple[str, PreTrainedModel, PreTrainedTokenizerBase, Path]:
    family = request.param
    model, tok = _timed(f"load tiny:{family}", load, f"tiny:{family}", vocab_size=VOCAB, **OVERRIDES[family])
    folder = tmp_path_factory.mktemp(family) / "model"
    _timed(f"save tiny:{family}", save, model, tok, folder)
    return family, model.eval(), tok, folder


def _prompts(tok: PreTrainedTokenizerBase) -> list[list[int]]:
    return [
        encode_prompt(tok, [{"role": "user", "content": q}], enable_thinking=think)
        for q, think in (("What is 7 + 5?", False), ("Answer with one word: red or blue?", True))
    ]


def test_saved_folder_is_plain_hugging_face(saved):
    family, model, _, folder = saved
    files = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= files
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in files)  # safetensors only
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == family
    assert config["vocab_size"] == len(AutoTokenizer.from_pretrained(folder))
    # consumers that read the template from tokenizer_config.json get the same one as the .jinja file
    assert (
        json.loads((folder / "tokenizer_config.json").read_text())["chat_template"]
        == (folder / "chat_template.jinja").read_text()
    )
    assert model.num_parameters() < 1_000_000  # the overrides took effect


def test_reload_without_cascade_rl_gives_identical_logits_and_generations(saved):
    family, model, tok, folder = saved
    reloaded = _timed(f"reload tiny:{family}", AutoModelForCausalLM.from_pretrained, folder).eval()
    assert type(reloaded) is type(model)
    prompts = _prompts(tok)
    for ids in prompts:
        x = torch.tensor([ids])
        with torch.no_grad():
            assert torch.equal(model(x).logits, reloaded(x).logits)
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=6, stop_token_ids=(tok.eos_token_id,), seed=5)
    before = LocalGenerator(model).generate(prompts, params)
    after = LocalGenerator(reloaded).generate(prompts, params)
    assert [[c.tokens for c in g] for g in before] == [[c.tokens for c in g] for g in after]
    assert all(1 <= len(c.tokens) <= 6 for g in before for c in g)
    # generation stops on the reloaded model's own end-of-turn id, read from the saved configs
    assert reloaded.generation_config.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    assert reloaded.config.pad_token_id == tok.pad_token_id


def test_reloaded_tokenizer_renders_and_tokenizes_like_cascade_rl(saved):
    _, _, tok, folder = saved
    reloaded = AutoTokenizer.from_pretrained(folder)
    assert len(GOLDEN) == 10
    for vector in GOLDEN:
        expected = render(vector["messages"], vector["tools"], **vector["kwargs"])
        assert expected == vector["text"]
        text = reloaded.apply_chat_template(
            vector["messages"], tools=vector["tools"], tokenize=False, **vector["kwargs"]
        )
        assert text == expected, vector["id"]
        ids = reloaded(text, add_special_tokens=False)["input_ids"]
        assert ids == tok(text, add_special_tokens=False)["input_ids"]
        assert reloaded.decode(ids) == text  # byte-level BPE: any text round-trips
    assert (reloaded.eos_token, reloaded.pad_token) == ("<|im_end|>", PAD)


@pytest.mark.parametrize("which", ["loaded", "reloaded"])
def test_chat_tokens_are_single_ids(saved, which):
    _, _, tok, folder = saved
    tok = tok if which == "loaded" else AutoTokenizer.from_pretrained(folder)
    ids = [tok.convert_tokens_to_ids(t) for t in SPECIAL]
    assert len(set(ids)) == len(SPECIAL)
    for token, i in zip(SPECIAL, ids, strict=True):
        assert tok("ab" + token + "cd", add_special_tokens=False)["input_ids"].count(i) == 1, token
        assert tok(token, add_special_tokens=False)["input_ids"] == [i], token
    # control tokens vanish from a skip_special_tokens decode; format tags stay (the parser needs them)
    text = "<|im_start|>assistant\n<think>x</think><tool_call>y</tool_call><|im_end|>"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"], skip_special_tokens=True) == (
        "assistant\n<think>x</think><tool_call>y</tool_call>"
    )


def test_tokenizer_training_is_deterministic():
    corpus = small_corpus()
    first, again = train_tokenizer(corpus, 600), train_tokenizer(corpus, 600)
    assert first.backend_tokenizer.to_str() == again.backend_tokenizer.to_str()
    assert first.get_vocab() == again.get_vocab()
    smaller = train_tokenizer(corpus, 500)
    assert (len(first), len(smaller)) == (600, 500)  # the size asked for, special tokens included
    # BPE learns merges in a fixed order: a smaller vocabulary is the larger one cut short
    merges = [json.loads(t.backend_tokenizer.to_str())["model"]["merges"] for t in (first, smaller)]
    assert len(merges[1]) == len(merges[0]) - 100 and merges[0][: len(merges[1])] == merges[1]


def test_the_tiny_tokenizer_corpus_is_a_fixed_list_that_a_recipe_can_change():
    from cascade_rl.config import ModelConfig
    from cascade_rl.data.tasks import TASKS
    from cascade_rl.engines.backend import tiny_options
    from cascade_rl.model.tiny import CORPUS_DOMAINS, default_corpus

    # registering a task does not retrain every recipe's tokenizer: the default list is explicit
    assert set(CORPUS_DOMAINS) < set(TASKS) and not {"chat", "long_context"} & set(CORPUS_DOMAINS)
    chat_only = list(default_corpus(n_per_domain=5, domains=["chat"]))
    assert len(chat_only) == 10 and all("<|im_start|>assistant" in text for text in chat_only)
    options = tiny_options(ModelConfig(tiny_corpus=["chat"], tiny={"hidden_size": 32}))
    assert options == {"seed": 0, "vocab_size": 1024, "corpus_domains": ["chat"], "hidden_size": 32}
    assert tiny_options(ModelConfig(spec="smollm2")) == {}
    small = {**OVERRIDES["qwen3"], "vocab_size": 600}
    _, default_tok = load("tiny:qwen3", **small)
    _, chat_tok = load("tiny:qwen3", corpus_domains=["chat"], **small)
    assert default_tok.get_vocab() != chat_tok.get_vocab()
    # the chat domain's own words are whole tokens only in the tokenizer that saw them
    assert len(chat_tok.tokenize(" Spiders have eight legs.")) < len(default_tok.tokenize(" Spiders have eight legs."))


def test_load_is_deterministic_in_the_seed():
    overrides = OVERRIDES["qwen3"]
    a, tok_a = _timed("load tiny:qwen3 seed 0", load, "tiny:qwen3", vocab_size=VOCAB, seed=0, **overrides)
    b, tok_b = load("tiny:qwen3", vocab_size=VOCAB, seed=0, **overrides)
    c, _ = load("tiny:qwen3", vocab_size=VOCAB, seed=1, **overrides)
    assert tok_a.get_vocab() == tok_b.get_vocab()
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys() == sc.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    weights = [k for k in sa if sa[k].ndim == 2]  # norms start at 1 whatever the seed
    assert all(not torch.equal(sa[k], sc[k]) for k in weights)
    # the seed is forked, not consumed: loading does not move the caller's random stream
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load("tiny:qwen3", vocab_size=VOCAB, seed=2, **overrides)
    assert torch.equal(torch.rand(3), expected)


def test_dtype_option():
    model, _ = load("tiny:qwen3", vocab_size=VOCAB, dtype="bfloat16", **OVERRIDES["qwen3"])
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    with pytest.raises(ModelSpecError, match="unknown dtype 'int3'"):
        load("tiny:qwen3", dtype="int3")


def test_bad_specs_raise_model_spec_error(tmp_path):
    with pytest.raises(
        ModelSpecError, match=r"unknown tiny spec 'tiny:nope'.*tiny:qwen3, tiny:qwen3_moe, tiny:nemotron_h"
    ):
        load("tiny:nope")
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelSpecError, match=rf"cannot load '{missing}'.*config\.json"):
        load(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "tokenizer.json").write_text("{}")  # a folder with files, but no config.json
    with pytest.raises(ModelSpecError, match=rf"cannot load '{empty}'.*folder with config\.json"):
        load(empty)
    with pytest.raises(ModelSpecError, match="GGUF file not found"):
        load(tmp_path / "absent.gguf")
    assert issubclass(ModelSpecError, ValueError)  # callers that catch ValueError still do


def test_gguf_weights_left_quantized_are_refused():
    from cascade_rl.model.load import _forget_gguf_quantization

    model, _ = load("tiny:qwen3", vocab_size=VOCAB, **OVERRIDES["qwen3"])
    _forget_gguf_quantization(model)  # float weights: accepted, quantizer marker dropped
    assert model.hf_quantizer is None and not model.is_quantized
    layer = model.model.layers[0].mlp.up_proj
    layer.weight = torch.nn.Parameter(torch.zeros_like(layer.weight, dtype=torch.uint8), requires_grad=False)
    with pytest.raises(ModelSpecError, match=r"1 GGUF weights stayed quantized .*layers\.0\.mlp\.up_proj\.weight"):
        _forget_gguf_quantization(model)


def test_a_tokenizer_without_a_single_im_end_token_is_refused():
    """Generation stops on <|im_end|>: split into pieces, it would never stop a rollout."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from cascade_rl.model.load import ModelSpecError, prepare_tokenizer

    vocab = {c: i for i, c in enumerate(["<unk>", "<", "|", "i", "m", "_", "e", "n", "d", ">", "a"])}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>")
    assert len(tokenizer("<|im_end|>", add_special_tokens=False)["input_ids"]) > 1
    with pytest.raises(ModelSpecError, match=r"no single <\|im_end\|> token"):
        prepare_tokenizer(tokenizer)
