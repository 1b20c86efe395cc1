"""Procedural chat with a hidden quality rubric, and preference pairs ordered by it (the RLHF miniature).

A prompt asks a few everyday questions whose answers are single words from a small fact table, with
a length limit and a format rule::

    Answer both: what colour is grass, and how many legs has a spider? Use at most 9 words.
    Start each answer with a dash.

    - Grass is green.
    - Spiders have eight legs.

The spec is the ``rubric`` verifier's (``rewards.rubric``: answered fraction, within length, format
followed; the reference scores 1). Difficulty 0: one or two questions, four formats, 1-3 words of slack
over the reference; difficulty 1: two or three questions; difficulty 2: three or four questions, the
uppercase format too, 0-2 words of slack.

Preference pairs (``ChatTask.pair`` / ``pair_of``) perturb the reference, and the rubric orders them
(``chosen`` always scores strictly higher): ``wrong_fact`` (one answer swapped for a plausible wrong one,
fluent), ``missing`` (a sub-question left out: shorter), ``too_long`` (correct, padded with fluent
filler past the limit), ``wrong_format`` (the right sentences in another layout), ``off_topic``
(fluent answers to other questions) and ``terse_wrong`` (bare wrong words: short, well formatted).
Some pairs have a perturbed ``chosen`` too (one mild fault against two), so a reward model must grade,
not just spot the reference; and length points both ways (``too_long`` loses, so do the shorter
``missing`` and ``terse_wrong``), so "shorter is better" is not a rule it can get away with.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any

from cascade_rl.data.tasks.base import Problem, make_problem


@dataclass(frozen=True)
class Fact:
    question: str  # lowercase, no question mark: it is joined into the prompt sentence
    answer: str  # one word, unique over the table (so a fact is found back from its answer)
    sentence: str  # the reference answer: a short sentence holding ``answer`` once
    kind: str  # distractors come from the same kind


FACTS: tuple[Fact, ...] = (
    Fact("what colour is the sky at noon", "blue", "The sky is blue.", "colour"),
    Fact("what colour is fresh snow", "white", "Snow is white.", "colour"),
    Fact("what colour is grass", "green", "Grass is green.", "colour"),
    Fact("what colour is a ripe banana", "yellow", "Bananas are yellow.", "colour"),
    Fact("what colour is coal", "black", "Coal is black.", "colour"),
    Fact("what colour is a ripe tomato", "red", "Tomatoes are red.", "colour"),
    Fact("how many legs has a spider", "eight", "Spiders have eight legs.", "number"),
    Fact("how many legs has a horse", "four", "Horses have four legs.", "number"),
    Fact("how many days are in a week", "seven", "A week has seven days.", "number"),
    Fact("how many wheels has a bicycle", "two", "Bicycles have two wheels.", "number"),
    Fact("how many sides has a triangle", "three", "Triangles have three sides.", "number"),
    Fact("how many fingers are on one hand", "five", "A hand has five fingers.", "number"),
    Fact("how many months are in a year", "twelve", "A year has twelve months.", "number"),
    Fact("what is the capital of france", "paris", "The capital is Paris.", "city"),
    Fact("what is the capital of italy", "rome", "The capital is Rome.", "city"),
    Fact("what is the capital of japan", "tokyo", "The capital is Tokyo.", "city"),
    Fact("what is the capital of norway", "oslo", "The capital is Oslo.", "city"),
    Fact("what is the capital of egypt", "cairo", "The capital is Cairo.", "city"),
    Fact("what do bees make", "honey", "Bees make honey.", "thing"),
    Fact("what is frozen water called", "ice", "It is called ice.", "thing"),
    Fact("which planet do we live on", "earth", "We live on Earth.", "thing"),
    Fact("what animal says moo", "cow", "A cow says moo.", "thing"),
    Fact("what animal meows", "cat", "A cat meows.", "thing"),
    Fact("what do we breathe", "air", "We breathe air.", "thing"),
)
BY_ANSWER = {f.answer: f for f in FACTS}
DISTRACTORS = {
    "colour": ("blue", "white", "green", "yellow", "black", "red", "pink", "gray"),
    "number": ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "twelve"),
    "city": ("paris", "rome", "tokyo", "oslo", "cairo", "lima", "berlin"),
    "thing": ("honey", "ice", "earth", "cow", "cat", "air", "salt", "sand"),
}
FILLERS = ("as everyone knows", "of course", "without any doubt", "as you may know", "to be honest")

FORMAT_RULES = {
    "dash": "Start each answer with a dash.",
    "numbered": "Number your answers.",
    "lowercase": "Use only lowercase letters.",
    "uppercase": "Use only capital letters.",
    "one_line": "Answer on one line.",
}
BASIC_FORMATS = ("dash", "numbered", "lowercase", "one_line")
LEADS = {1: "Answer this", 2: "Answer both", 3: "Answer all three", 4: "Answer all four"}
PERTURBATIONS = ("wrong_fact", "missing", "too_long", "wrong_format", "off_topic", "terse_wrong")
MILD = ("wrong_fact", "too_long", "wrong_format")  # faults a perturbed ``chosen`` may carry
PERTURBED_CHOSEN = 0.3  # share of pairs whose chosen is itself a (mildly) perturbed answer


def layout(sentences: list[str], fmt: str) -> str:
    """Sentences as one response in a layout: a format's own, or ``lines`` / ``broken`` (no format's)."""
    if fmt == "dash":
        return "\n".join(f"- {s}" for s in sentences)
    if fmt == "numbered":
        return "\n".join(f"{i}. {s}" for i, s in enumerate(sentences, start=1))
    if fmt == "lines":
        return "\n".join(sentences)
    if fmt == "broken":  # every sentence split over two lines
        return "\n".join(" ".join(s.split()[:1]) + "\n" + " ".join(s.split()[1:]) for s in sentences)
    text = " ".join(sentences)
    return {"lowercase": text.lower(), "uppercase": text.upper()}.get(fmt, text)


def _plan(rng: random.Random, difficulty: int) -> tuple[list[Fact], str, int]:
    low, high = {0: (1, 2), 1: (2, 3)}.get(difficulty, (3, 4))
    facts = rng.sample(FACTS, rng.randint(low, high))
    fmt = rng.choice(BASIC_FORMATS if difficulty < 2 else tuple(FORMAT_RULES))
    slack = rng.randint(1, 3) if difficulty == 0 else rng.randint(0, 2)
    return facts, fmt, slack


def _questions(facts: list[Fact]) -> str:
    qs = [f.question for f in facts]
    return qs[0] if len(qs) == 1 else ", ".join(qs[:-1]) + ", and " + qs[-1]


class ChatTask:
    """Everyday questions under a length limit and a format rule; spec ``{"type": "rubric", ...}``."""

    name = "chat"

    def generate(self, rng: random.Random, difficulty: int) -> Problem:
        from cascade_rl.rewards.rubric import count_words

        facts, fmt, slack = _plan(rng, difficulty)
        answer = layout([f.sentence for f in facts], fmt)
        max_words = count_words(answer) + slack
        user = f"{LEADS[len(facts)]}: {_questions(facts)}? Use at most {max_words} words. {FORMAT_RULES[fmt]}"
        spec = {"type": "rubric", "answers": [f.answer for f in facts], "max_words": max_words, "format": fmt}
        trace = f"Facts: {'; '.join(f'{f.question} -> {f.answer}' for f in facts)}. Format: {fmt}, {max_words} words."
        return make_problem(self.name, difficulty, user=user, spec=spec, answer=answer, reasoning=trace)

    def pair(self, rng: random.Random, difficulty: int) -> dict[str, Any]:
        """A fresh problem's preference pair (see ``pair_of``)."""
        return self.pair_of(self.generate(rng, difficulty), rng)

    def pair_of(self, problem: Problem, rng: random.Random) -> dict[str, Any]:
        """``{"prompt", "chosen", "rejected", "kind", "chosen_score", "rejected_score"}`` for one problem:
        chosen and rejected are assistant texts, ordered strictly by the hidden rubric."""
        from cascade_rl.rewards.rubric import rubric_score

        spec = problem.spec
        facts = [BY_ANSWER[a] for a in spec["answers"]]
        for _ in range(100):  # almost every draw is valid; the loop only retries the rare tie
            chosen_faults = [rng.choice(MILD)] if rng.random() < PERTURBED_CHOSEN else []
            extra = rng.choice([p for p in PERTURBATIONS if p not in chosen_faults])
            state = _Draft([f.sentence for f in facts], spec["format"])
            for fault in chosen_faults:
                _apply(rng, state, fault, facts, spec)
            chosen = state.text()
            _apply(rng, state, extra, facts, spec)  # the rejected one: the chosen one with one more fault
            rejected = state.text()
            high, low = rubric_score(chosen, spec), rubric_score(rejected, spec)
            if high > low:
                kind = f"{'+'.join(chosen_faults) or 'reference'}>{'+'.join([*chosen_faults, extra])}"
                return {
                    "prompt": [dict(m) for m in problem.messages],
                    "chosen": chosen,
                    "rejected": rejected,
                    "kind": kind,
                    "chosen_score": high,
                    "rejected_score": low,
                }
        raise RuntimeError(f"no ordered pair found for {problem.user_text!r}")  # a bug in the perturbations


@dataclass
class _Draft:
    """A response under construction: its sentences and the layout they are written in."""

    sentences: list[str]
    fmt: str

    def text(self) -> str:
        return layout(self.sentences, self.fmt)


def _apply(rng: random.Random, draft: _Draft, fault: str, facts: list[Fact], spec: dict[str, Any]) -> None:
    """One perturbation of the response, in place (see the module docstring for what each one is)."""
    sentences = draft.sentences
    if fault == "wrong_fact":
        i = rng.randrange(len(sentences))
        sentences[i] = _swap_answer(rng, sentences[i], facts[min(i, len(facts) - 1)])
    elif fault == "missing" and len(sentences) > 1:
        del sentences[rng.randrange(len(sentences))]
    elif fault == "missing":  # one question only: answer it with nothing of substance
        draft.sentences = ["I am not sure."]
    elif fault == "too_long":
        draft.sentences = _padded(rng, sentences, spec["max_words"])
    elif fault == "wrong_format":
        draft.fmt = _other_layout(rng, draft.fmt, len(sentences))
    elif fault == "off_topic":
        others = [f for f in FACTS if f not in facts]
        draft.sentences = [f.sentence for f in rng.sample(others, len(sentences))]
    elif fault == "terse_wrong":
        draft.sentences = [_distractor(rng, f).capitalize() + "." for f in facts[: len(sentences)]]
    else:
        raise ValueError(f"unknown perturbation {fault!r}; expected one of {', '.join(PERTURBATIONS)}")


def _distractor(rng: random.Random, fact: Fact) -> str:
    return rng.choice([w for w in DISTRACTORS[fact.kind] if w != fact.answer])


def _swap_answer(rng: random.Random, sentence: str, fact: Fact) -> str:
    """The sentence with its answer word replaced by a wrong one of the same kind (capitalised alike)."""
    wrong = _distractor(rng, fact)
    return re.sub(
        rf"\b{fact.answer}\b",
        lambda m: wrong.capitalize() if m.group(0)[0].isupper() else wrong,
        sentence,
        flags=re.IGNORECASE,
    )


def _padded(rng: random.Random, sentences: list[str], max_words: int) -> list[str]:
    """Fluent filler clauses until the answer is over the word limit (the facts stay right)."""
    from cascade_rl.rewards.rubric import count_words

    out = list(sentences)
    i = 0
    while count_words(" ".join(out)) <= max_words:
        k = i % len(out)
        out[k] = out[k].rstrip(".") + f", {rng.choice(FILLERS)}."
        i += 1
    return out


def _other_layout(rng: random.Random, fmt: str, items: int) -> str:
    """A layout that breaks ``fmt``'s rule for ``items`` sentences (the rubric confirms it)."""
    if fmt in ("dash", "numbered"):
        return rng.choice([f for f in ("dash", "numbered", "one_line") if f != fmt])
    if fmt in ("lowercase", "uppercase"):
        return rng.choice(("one_line", "dash"))  # mixed case breaks both
    return "lines" if items > 1 else "broken"
