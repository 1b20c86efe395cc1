"""The chat domain: its hidden rubric, reference answers, preference pairs ordered by the rubric, splits."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from cascade_rl.config import DataConfig
from cascade_rl.data.pairs import read_pairs
from cascade_rl.data.sources import DataSourceError
from cascade_rl.data.tasks import TASKS, assistant_text, get_task, make_split
from cascade_rl.data.tasks.chat import FACTS, PERTURBATIONS, ChatTask, layout
from cascade_rl.rewards import SpecError, check_spec, verify
from cascade_rl.rewards.rubric import count_words, rubric_score

SPEC = {"type": "rubric", "answers": ["blue", "eight"], "max_words": 9, "format": "dash"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("- The sky is blue.\n- Spiders have eight legs.", 1.0),  # 8 words, both answers, two dashed lines
        ("- BLUE\n- Eight.", 1.0),  # answers ignore case and punctuation
        ("- The sky is blue.", (0.5 + 1 + 0) / 3),  # one answer; one line where two are due
        ("The sky is blue. Spiders have eight legs.", 2 / 3),  # no dashes
        ("- The sky is blue, as everyone knows.\n- Spiders have eight legs, of course.", 2 / 3),  # 13 words > 9
        ("- Bluebird\n- Eighty", 2 / 3),  # not the answer words (whole words only)
        ("-The sky is blue.\n- Spiders have eight legs.", 2 / 3),  # a dash needs a space after it
        ("", 0.0),  # nothing answered, no word, no format
    ],
)
def test_rubric_scores_hand_written_dash_answers(text, expected):
    assert verify(text + "<|im_end|>", SPEC).score == pytest.approx(expected)


@pytest.mark.parametrize(
    ("fmt", "text", "followed"),
    [
        ("numbered", "1. The sky is blue.\n2. Spiders have eight legs.", True),
        ("numbered", "1. The sky is blue.\n3. Spiders have eight legs.", False),  # numbers count from 1 in order
        ("numbered", "- The sky is blue.\n- Spiders have eight legs.", False),
        ("lowercase", "the sky is blue. spiders have eight legs.", True),
        ("lowercase", "The sky is blue. spiders have eight legs.", False),
        ("uppercase", "THE SKY IS BLUE. SPIDERS HAVE EIGHT LEGS.", True),
        ("uppercase", "THE SKY IS Blue.", False),
        ("one_line", "The sky is blue. Spiders have eight legs.", True),
        ("one_line", "The sky is blue.\nSpiders have eight legs.", False),
        ("one_line", "   ", False),
    ],
)
def test_rubric_format_rules(fmt, text, followed):
    spec = {**SPEC, "format": fmt, "max_words": 100}
    result = verify(text + "<|im_end|>", spec)
    assert result.info["format_ok"] is followed
    answered = 1.0 if "eight" in text.lower() else 0.5 if "blue" in text.lower() else 0.0
    assert result.score == pytest.approx((answered + float(bool(text.strip())) + followed) / 3)


def test_rubric_counts_words_without_markers_and_reports_every_part():
    assert count_words("1. The sky is blue.\n2. Spiders' legs: eight") == 7
    result = verify("- The sky is green.\n- Spiders have eight legs.<|im_end|>", SPEC)
    assert result.info == {
        "answered": 0.5,
        "missing": ["blue"],
        "words": 8,
        "within_length": True,
        "format_ok": True,
    }
    assert result.score == pytest.approx(2.5 / 3)
    # the rubric judges the answer, never the reasoning
    assert verify("<think>blue eight</think>Spiders have eight legs.<|im_end|>", SPEC).info["missing"] == ["blue"]


@pytest.mark.parametrize(
    "bad",
    [
        {"answers": [], "max_words": 5, "format": "dash"},
        {"answers": ["two words"], "max_words": 5, "format": "dash"},
        {"answers": ["blue"], "max_words": 0, "format": "dash"},
        {"answers": ["blue"], "max_words": 5, "format": "bold"},
        {"answers": ["blue"], "format": "dash"},
    ],
)
def test_rubric_rejects_malformed_specs(bad):
    with pytest.raises(SpecError, match="rubric spec"):
        check_spec({"type": "rubric", **bad})


def test_chat_is_a_registered_task_with_unique_fact_answers():
    assert isinstance(TASKS["chat"], ChatTask)
    answers = [f.answer for f in FACTS]
    assert len(set(answers)) == len(answers)
    for fact in FACTS:  # each reference sentence holds its own answer and no other fact's
        assert rubric_score(fact.sentence, {"answers": [fact.answer], "max_words": 9, "format": "one_line"}) == 1.0
        others = {f.answer for f in FACTS if f is not fact}
        assert not others & {w.strip(".").lower() for w in fact.sentence.split()}


@pytest.mark.parametrize("difficulty", [0, 1, 2])
def test_reference_answers_score_one(difficulty):
    for i, problem in enumerate(make_split("chat", "train", 60, seed=0, difficulty=difficulty)):
        result = verify(assistant_text(problem, i % 2 == 0), problem.spec)
        assert result.score == 1.0, (problem.user_text, problem.answer, result.info)


def test_difficulty_zero_stays_small():
    """A ~1M-parameter model from scratch: one or two questions, short prompts and answers, and a format
    plus a length it can meet without knowing a single fact (2/3 of the rubric)."""
    problems = make_split("chat", "train", 200, seed=0, difficulty=0)
    assert {len(p.spec["answers"]) for p in problems} == {1, 2}
    assert {p.spec["format"] for p in problems} == {"dash", "numbered", "lowercase", "one_line"}
    assert sum(len(p.user_text) for p in problems) / len(problems) < 120
    assert sum(len(p.answer) for p in problems) / len(problems) < 40
    assert max(p.spec["max_words"] for p in problems) <= 13
    for problem in problems:  # the right layout and length without a single fact: 2/3
        knows_nothing = layout(["I think so."] * len(problem.spec["answers"]), problem.spec["format"])
        assert rubric_score(knows_nothing, problem.spec) == pytest.approx(2 / 3)
    harder = make_split("chat", "train", 100, seed=0, difficulty=2)
    assert min(len(p.spec["answers"]) for p in harder) == 3


@pytest.mark.parametrize("difficulty", [0, 1, 2])
def test_pairs_are_ordered_by_the_hidden_rubric(difficulty):
    task = get_task("chat")
    rng = random.Random(difficulty)
    kinds: Counter[str] = Counter()
    references = 0
    for problem in make_split("chat", "train", 150, seed=1, difficulty=difficulty):
        pair = task.pair_of(problem, rng)
        assert pair["prompt"] == list(problem.messages)
        chosen, rejected = rubric_score(pair["chosen"], problem.spec), rubric_score(pair["rejected"], problem.spec)
        assert chosen > rejected
        assert (chosen, rejected) == (pair["chosen_score"], pair["rejected_score"])
        references += pair["chosen"] == problem.answer
        kinds[pair["kind"].split(">")[1].split("+")[-1]] += 1
    assert set(kinds) == set(PERTURBATIONS)  # every perturbation shows up
    assert 0.55 < references / 150 < 0.85  # most chosen answers are the reference, some are faulty themselves


def test_length_alone_does_not_order_the_pairs():
    """Longer rejected answers (too_long) and shorter ones (missing, terse_wrong) both occur in quantity."""
    task = get_task("chat")
    rng = random.Random(0)
    longer = shorter = 0
    for problem in make_split("chat", "train", 300, seed=0, difficulty=0):
        pair = task.pair_of(problem, rng)
        longer += count_words(pair["rejected"]) > count_words(pair["chosen"])
        shorter += count_words(pair["rejected"]) < count_words(pair["chosen"])
    assert longer > 50 and shorter > 50


def test_pair_makes_a_fresh_problem_pair():
    pair = ChatTask().pair(random.Random(3), 0)
    assert pair["prompt"][-1]["role"] == "user" and pair["chosen_score"] > pair["rejected_score"]


def test_task_pairs_follow_the_splits():
    train = read_pairs(DataConfig(task="chat", n=300), "train")
    test = read_pairs(DataConfig(task="chat", n=200), "test")
    texts = lambda pairs: {p.prompt[-1]["content"] for p in pairs}  # noqa: E731
    assert not texts(train) & texts(test)
    assert len(train) == 300 and {p.domain for p in train} == {"chat"}
    assert train[0].chosen["role"] == "assistant" and train[0].kind
    # deterministic, and a smaller n is a prefix of a larger one
    assert read_pairs(DataConfig(task="chat", n=50), "train") == train[:50]
    # an explicit split wins over the caller's default
    assert read_pairs(DataConfig(task="chat", n=20, split="test"), "train") == test[:20]


def test_a_task_without_pairs_is_refused():
    with pytest.raises(DataSourceError, match="makes no preference pairs"):
        read_pairs(DataConfig(task="math", n=5), "train")


def test_pair_files_are_read_and_bad_lines_named_or_skipped(tmp_path, capsys):
    path = tmp_path / "prefs.jsonl"
    lines = [
        {"prompt": "Hi?", "chosen": "Hello.", "rejected": "Go away."},
        {
            "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Sky?"}],
            "chosen": {"role": "assistant", "content": "Blue."},
            "rejected": {"content": "Green, I think, or maybe some other colour."},
            "domain": "sky",
        },
        {"prompt": "Hi?", "chosen": "Same.", "rejected": "Same."},
        {"prompt": "Hi?", "chosen": "Hello."},
    ]
    path.write_text("\n".join([*(json.dumps(x) for x in lines), "{not json", ""]))
    with pytest.raises(DataSourceError, match=r"prefs\.jsonl:3: 'chosen' and 'rejected' are the same"):
        read_pairs(DataConfig(path=str(path)), "train")
    pairs = read_pairs(DataConfig(path=str(path), on_error="skip"), "train")
    assert len(pairs) == 2
    assert pairs[0].prompt == ({"role": "user", "content": "Hi?"},)
    assert pairs[0].chosen == {"role": "assistant", "content": "Hello."} and pairs[0].domain == "prefs"
    assert pairs[1].domain == "sky" and pairs[1].rejected["role"] == "assistant"
    assert pairs[1].where == f"{path}:2"
    out = capsys.readouterr().out
    assert "2 pairs used, 3 malformed lines skipped" in out and "prefs.jsonl:3" in out
    short = tmp_path / "short.jsonl"
    short.write_text(json.dumps(lines[0]) + "\n\n" + json.dumps(lines[3]) + "\n")
    with pytest.raises(DataSourceError, match=r"short\.jsonl:3: missing 'rejected'"):
        read_pairs(DataConfig(path=str(short)), "train")


def test_an_empty_or_all_bad_pair_file_is_an_error(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "x"}\n')
    with pytest.raises(DataSourceError, match="no usable preference pairs"):
        read_pairs(DataConfig(path=str(path), on_error="skip"), "train")
    with pytest.raises(DataSourceError, match="pair file not found"):
        read_pairs(DataConfig(path=str(tmp_path / "missing.jsonl")), "train")
