"""IFEval-style instruction verifier: each checker on a passing and a failing response."""

from __future__ import annotations

import pytest

from cascade_rl.rewards import SpecError, verify
from cascade_rl.rewards.instruct import follows, loose_variants
from cascade_rl.rewards.instruct_checks import CHECKS, detect_language, split_sentences

LOREM = "The quick brown fox jumps over the lazy dog"

# (instruction id, kwargs, a response that follows it, one that does not)
CASES = [
    ("keywords:existence", {"keywords": ["fox", "dog"]}, LOREM, "A cat sat."),
    ("keywords:frequency", {"keyword": "cat", "frequency": 2, "relation": "at least"}, "cat CAT", "one cat"),
    ("keywords:frequency", {"keyword": "cat", "frequency": 2, "relation": "less than"}, "one cat", "cat cat"),
    ("keywords:forbidden_words", {"forbidden_words": ["dog", "cat"]}, "A fox, dogged.", LOREM),
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 2, "let_relation": "at least"}, "Zz", "z"),
    ("language:response_language", {"language": "fr"}, "Le chat est sur la table et il dort.", LOREM),
    ("language:response_language", {"language": "ja"}, "これは日本語の文章です。", "这是中文句子。"),
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "less than"},
     "Hi Dr. Smith. I am e.g. fine!", "One. Two. Three."),
    ("length_constraints:number_words", {"num_words": 9, "relation": "at least"}, LOREM, "Too short."),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "One.\n***\nTwo.", "One.\n***\n\n***\nTwo."),
    ("length_constraints:nth_paragraph_first_word",
     {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "then"}, "First.\n\n\"Then, more.", "First.\n\nNow."),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "Dear [name] at [address]", "Dear [name]"),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hello.\n\nP.S. bye", "Hello. PS bye"),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"}, "Hi\nP.P.S more", "Hi\nP.S. more"),
    ("detectable_format:number_bullet_lists", {"num_bullets": 3}, "* a\n* b\n- c", "* a\n* b"),
    ("detectable_format:constrained_response", {}, "My answer is maybe.", "Maybe."),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*one* and **two**", "*one* only"),
    ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2},
     "Section 1\nfoo\nSection 2\nbar", "Section 1\nfoo"),
    ("detectable_format:json_format", {}, '```json\n{"a": 1}\n```', "{'a': 1}"),
    ("detectable_format:title", {}, "<<My Title>>\nText", "<< >>\nText"),
    ("combination:two_responses", {}, "First answer.\n******\nSecond answer.", "Same.\n******\nSame."),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Write a poem."}, "write a poem. Roses...", "Roses..."),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, 'Done. "Any other questions?"', "Done."),
    ("startend:quotation", {}, '"Quoted answer."', '"Half quoted.'),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "at least"},
     "THE fox IS here", "The fox is here"),
    ("change_case:english_capital", {}, "THE FOX IS HERE AND THE DOG IS NOT.", "The fox."),
    ("change_case:english_lowercase", {}, "the fox is here and the dog is not.", "The fox is here."),
    ("punctuation:no_comma", {}, "No commas here.", "One, two."),
]  # fmt: skip


@pytest.mark.parametrize(
    ("instruction", "kwargs", "good", "bad"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)]
)
def test_checker_pass_and_fail(instruction, kwargs, good, bad):
    spec = {"type": "instruct", "instruction_id_list": [instruction], "kwargs": [kwargs]}
    assert verify(good + "<|im_end|>", spec).score == 1.0
    assert verify(bad + "<|im_end|>", spec).score == 0.0


def test_every_supported_id_is_covered():
    assert len(CHECKS) == 25
    assert {c[0] for c in CASES} == set(CHECKS)


def test_partial_score_lists_followed_and_failed():
    spec = {
        "type": "instruct",
        "instruction_id_list": ["punctuation:no_comma", "change_case:english_lowercase", "startend:quotation"],
        "kwargs": [{}, {}, {}],
    }
    result = verify("<think>Plan, then write.</think>all lowercase, no quotes<|im_end|>", spec)
    assert round(result.score, 4) == 0.3333
    assert result.info["followed"] == ["change_case:english_lowercase"]
    assert result.info["failed"] == ["punctuation:no_comma", "startend:quotation"]
    result = verify("all lowercase no quotes", spec)
    assert round(result.score, 4) == 0.6667


def test_none_kwargs_are_ignored_like_ifeval_data():
    kwargs = {"num_words": 3, "relation": "less than", "keywords": None, "language": None, "end_phrase": None}
    spec = {"type": "instruct", "instruction_id_list": ["length_constraints:number_words"], "kwargs": [kwargs]}
    assert verify("two words", spec).score == 1.0
    assert verify("three words here", spec).score == 0.0


def test_loose_mode_forgives_wrapper_lines_and_markdown():
    spec = {"type": "instruct", "instruction_id_list": ["startend:end_checker"], "kwargs": [{"end_phrase": "Bye."}]}
    text = "Sure, here it is:\nSee you. Bye.\nHope this helps!"
    assert verify(text, spec).score == 0.0
    assert verify(text, {**spec, "strict": False}).score == 1.0
    title = {"type": "instruct", "instruction_id_list": ["startend:quotation"], "kwargs": [{}]}
    assert verify('**"Quoted"**', title).score == 0.0
    assert verify('**"Quoted"**', {**title, "strict": False}).score == 1.0
    assert len(loose_variants("a\nb\nc")) == 8


def test_empty_response_follows_nothing():
    assert not follows("", "punctuation:no_comma", {})
    assert not follows("   ", "punctuation:no_comma", {}, strict=False)


def test_sentence_splitter_keeps_abbreviations():
    assert split_sentences("Mr. Smith arrived at 3.30 p.m. today. He left! Did he? Yes") == [
        "Mr. Smith arrived at 3.30 p.m. today.",
        "He left!",
        "Did he?",
        "Yes",
    ]
    assert (
        detect_language("Привет, как дела?"),
        detect_language("Der Hund ist nicht hier."),
        detect_language("123"),
    ) == (
        "ru",
        "de",
        None,
    )


@pytest.mark.parametrize(
    ("ids", "kwargs", "message"),
    [
        (["no:such_instruction"], [{}], "unknown instruction id 'no:such_instruction'"),
        (["length_constraints:number_words"], [{"num_words": 5}], "missing \\['relation'\\]"),
        (["length_constraints:number_words"], [{"num_words": 5, "relation": "more"}], "relation must be one of"),
        (["length_constraints:number_words"], [{"num_words": "5", "relation": "at least"}], "num_words must be int"),
        (["punctuation:no_comma"], [{"bogus": 1}], "unknown keys \\['bogus'\\]"),
        (["punctuation:no_comma"], [{}, {}], "list of 1 objects"),
        ([], [], "must not be empty"),
    ],
)
def test_bad_specs(ids, kwargs, message):
    with pytest.raises(SpecError, match=message):
        verify("x", {"type": "instruct", "instruction_id_list": ids, "kwargs": kwargs})
