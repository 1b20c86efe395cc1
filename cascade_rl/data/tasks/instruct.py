"""Verifiable instruction following (IFEval instruction ids and kwargs).

Each prompt is a tiny content task (repeat a word, list given words, write one word) plus
``difficulty + 1`` verifiable instructions (at most three). The reference answer is built from
the content items by applying the instructions in a fixed order (items -> case -> layout ->
title -> end phrase -> postscript -> quotes), and incompatible instruction pairs are never drawn
together, so the reference follows every instruction.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from typing import Any

from cascade_rl.data.tasks.base import Problem, make_problem, number_word
from cascade_rl.data.tasks.vocab import WORDS

CAPITAL = "change_case:english_capital"
LOWER = "change_case:english_lowercase"
NO_COMMA = "punctuation:no_comma"
QUOTE = "startend:quotation"
END = "startend:end_checker"
TITLE = "detectable_format:title"
POSTSCRIPT = "detectable_content:postscript"
EXISTS = "keywords:existence"
FORBIDDEN = "keywords:forbidden_words"
BULLETS = "detectable_format:number_bullet_lists"
JSON = "detectable_format:json_format"
FREQUENCY = "keywords:frequency"
NUM_WORDS = "length_constraints:number_words"

BASIC = (CAPITAL, LOWER, NO_COMMA, QUOTE, END, TITLE, POSTSCRIPT, EXISTS, FORBIDDEN, BULLETS, JSON)
ADVANCED = (*BASIC, FREQUENCY, NUM_WORDS)

# Pairs whose reference answers cannot satisfy both (or whose checks fight over the same end).
CONFLICTS = {
    frozenset(pair)
    for pair in (
        (CAPITAL, LOWER), (JSON, TITLE), (JSON, QUOTE), (JSON, END), (JSON, POSTSCRIPT), (JSON, BULLETS),
        (JSON, NO_COMMA), (BULLETS, QUOTE), (QUOTE, END), (END, POSTSCRIPT),
        (FREQUENCY, NO_COMMA), (FREQUENCY, FORBIDDEN),
    )
}  # fmt: skip
NEEDS_LIST = {NO_COMMA, FORBIDDEN}  # only meaningful when the content is a list of distinct words
NEEDS_REPEAT = {FREQUENCY}

END_PHRASES = ("The end.", "That is all.", "Any questions?", "Thank you.", "See you soon.")
POSTSCRIPT_TEXT = "P.S. Thanks."


@dataclass
class Draft:
    """The content items and instruction choices of one problem, before rendering."""

    kind: str  # "repeat" | "list" | "single"
    items: list[str]
    ids: list[str]
    prompt_parts: list[str] = field(default_factory=list)
    kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # the plan, in the order the answer is built

    def instruct(self, sentence: str, note: str) -> None:
        self.prompt_parts.append(sentence)
        self.notes.append(note)


def _choose_ids(rng: random.Random, count: int, difficulty: int) -> list[str]:
    pool = list(BASIC if difficulty == 0 else ADVANCED)
    while True:
        rng.shuffle(pool)
        chosen: list[str] = []
        for iid in pool:
            if all(frozenset((iid, other)) not in CONFLICTS for other in chosen):
                chosen.append(iid)
            if len(chosen) == count:
                return chosen


def _content(rng: random.Random, ids: list[str], difficulty: int) -> Draft:
    """Pick the content task the instructions fit and write its prompt sentence."""
    if NEEDS_LIST & set(ids):
        kind = "list"
    elif NEEDS_REPEAT & set(ids):
        kind = "repeat"
    else:
        kind = rng.choice(("repeat", "list", "single") if difficulty == 0 else ("repeat", "list"))
    shown = str.upper if LOWER in ids else str  # lowercasing is only a task if the prompt has capitals
    if kind == "repeat":
        word, n = rng.choice(WORDS), rng.randint(2, 4 if difficulty == 0 else 5)
        return Draft(kind, [word] * n, ids, [f"Write the word {shown(word)} {number_word(n)} times."])
    if kind == "single":
        word = rng.choice(WORDS)
        return Draft(kind, [word], ids, [f"Write the word {shown(word)}."])
    low = 3 if FORBIDDEN in ids else 2
    n = rng.randint(low, 3) if difficulty == 0 else rng.randint(max(low, 3), 5)
    words = rng.sample(WORDS, n)
    listed = ", ".join(shown(w) for w in words[:-1]) + f" and {shown(words[-1])}"
    return Draft(kind, words, ids, [f"List the words {listed}."])


def _apply_item_rules(rng: random.Random, draft: Draft) -> None:
    """Instructions that change which words appear."""
    if FORBIDDEN in draft.ids:
        banned = rng.choice(draft.items)
        draft.items = [w for w in draft.items if w != banned]
        draft.kwargs[FORBIDDEN] = {"forbidden_words": [banned]}
        draft.instruct(f"Do not use the word {banned}.", f"skip {banned}")
    if EXISTS in draft.ids:
        taken = set(draft.items) | {w for kw in draft.kwargs.values() for w in kw.get("forbidden_words", [])}
        extra = rng.choice([w for w in WORDS if w not in taken])
        draft.items.append(extra)
        draft.kwargs[EXISTS] = {"keywords": [extra]}
        draft.instruct(f"Include the word {extra}.", f"add {extra}")
    if FREQUENCY in draft.ids:
        word = draft.items[0]
        times = rng.randint(2, draft.items.count(word))
        draft.kwargs[FREQUENCY] = {"keyword": word, "frequency": times, "relation": "at least"}
        draft.instruct(f"Use the word {word} at least {number_word(times)} times.", f"{word} {times}+ times")


def _case(draft: Draft, text: str) -> str:
    if CAPITAL in draft.ids:
        return text.upper()
    if LOWER in draft.ids:
        return text.lower()
    return text


def _layout(draft: Draft) -> str:
    items = [_case(draft, w) for w in draft.items]
    if JSON in draft.ids:
        draft.instruct("Answer in JSON.", "JSON list")
        return json.dumps(items)
    if BULLETS in draft.ids:
        n = len(items)
        draft.kwargs[BULLETS] = {"num_bullets": n}
        draft.instruct(f"Use {number_word(n)} bullet point{'s' if n > 1 else ''}.", f"{n} bullets")
        return "\n".join(f"* {w}" for w in items)
    if NO_COMMA in draft.ids:
        draft.instruct("Do not use commas.", "no commas")
        return " ".join(items)
    return (", " if draft.kind == "list" else " ").join(items)


def _wrap(rng: random.Random, draft: Draft, body: str) -> str:
    """Instructions that add text around the body; order matters (quotes go outermost)."""
    text = body
    if TITLE in draft.ids:
        draft.instruct("Add a title in double angle brackets.", "add a title")
        text = f"<<{_case(draft, draft.items[0].capitalize())}>>\n{text}"
    if END in draft.ids:
        phrase = rng.choice(END_PHRASES)
        draft.kwargs[END] = {"end_phrase": phrase}
        draft.instruct(f'End with "{phrase}"', f'end with "{phrase}"')
        text += ("\n" if BULLETS in draft.ids else " ") + _case(draft, phrase)
    if POSTSCRIPT in draft.ids:
        draft.kwargs[POSTSCRIPT] = {"postscript_marker": "P.S."}
        draft.instruct("Add a P.S. at the end.", "add a P.S.")
        text += "\n" + _case(draft, POSTSCRIPT_TEXT)
    if QUOTE in draft.ids:
        draft.instruct("Wrap your answer in double quotes.", "quote it")
        text = f'"{text}"'
    return text


def _word_count_rule(rng: random.Random, draft: Draft, text: str) -> None:
    """A length bound that holds under both whitespace and \\w+ word counting."""
    counts = (len(text.split()), len(re.findall(r"\w+", text)))
    if rng.random() < 0.5:
        bound = max(counts) + rng.randint(1, 3)
        draft.kwargs[NUM_WORDS] = {"relation": "less than", "num_words": bound}
        draft.instruct(f"Use fewer than {bound} words.", f"under {bound} words")
    else:
        bound = max(1, min(counts) - rng.randint(0, 2))
        draft.kwargs[NUM_WORDS] = {"relation": "at least", "num_words": bound}
        draft.instruct(f"Use at least {bound} words.", f"{bound}+ words")


def _case_prompt(draft: Draft) -> None:
    if CAPITAL in draft.ids:
        draft.instruct("Use capital letters only.", "capitals")
    if LOWER in draft.ids:
        draft.instruct("Use lowercase letters only.", "lowercase")


class InstructTask:
    """IFEval-style prompts; spec ``{"type": "instruct", "instruction_id_list", "kwargs"}``."""

    name = "instruct"

    def generate(self, rng: random.Random, difficulty: int) -> Problem:
        ids = _choose_ids(rng, min(difficulty, 2) + 1, difficulty)
        draft = _content(rng, ids, difficulty)
        _apply_item_rules(rng, draft)
        _case_prompt(draft)
        text = _wrap(rng, draft, _layout(draft))
        if NUM_WORDS in ids:
            _word_count_rule(rng, draft, text)
        content_sentence, instructions = draft.prompt_parts[0], draft.prompt_parts[1:]
        rng.shuffle(instructions)  # the order of instructions should not be a cue
        user = " ".join([content_sentence, *instructions])
        spec = {
            "type": "instruct",
            "instruction_id_list": list(ids),
            "kwargs": [draft.kwargs.get(iid, {}) for iid in ids],
        }
        trace = f"Words: {' '.join(draft.items)}. Plan: {'; '.join(draft.notes)}"
        return make_problem(self.name, difficulty, user=user, spec=spec, answer=text, reasoning=trace)
