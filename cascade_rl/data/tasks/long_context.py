"""Long-context problems generated locally: needle retrieval, multi-hop lookup and variable tracking.

Every prompt is a long text followed by one question whose answer is a number, judged by the ``math``
verifier (the last number of the reply; integers compare exactly). Three kinds, drawn by the rng:

* ``needle``: filler prose with one key fact ("The access code of the blue room is 4821.") at a random
  depth; difficulty adds distractor facts of the same shape that share the key's words.
* ``multi_hop``: titled documents; the answer needs a chain of two or three facts, each in a different
  document ("Ana works in the Oslo office." -> "The Oslo office's manager is Tomas." -> "Tomas's phone
  extension is 4821."); every office / manager has the asked attribute, so no single document answers it,
  and difficulty adds people, offices and facts about the chain's own entities.
* ``variables``: assignments ("Let QXV = 42. ... Let KLM = QXV.") scattered through filler; the question
  asks one variable's final value. Difficulty lengthens the chain, adds distractor chains and, at 2,
  chains that branch off the asked one and later reassignments of its variables (order matters).

``context_length`` is the target length of the user text in tokens, estimated as characters /
``CHARS_PER_TOKEN`` (4, the usual figure for English under a large BPE vocabulary). The filler mixes short
common words with longer, rarer ones, so real tokenizers land near it: SmolLM2's 49K-vocabulary tokenizer
counts 0.91-1.02 tokens per estimated token on these prompts. A tokenizer trained on other text splits
the filler finer (the 600-token test tokenizer: ~2.3x). The facts are a floor that cannot shrink: at a
few hundred tokens a difficulty-2 prompt can come out longer than asked.

Answers are plain integers and variable names letters only, because the verifier reads the reply's last
number; the reference reply is "The answer is N." as in the math domain.
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Callable
from dataclasses import dataclass

from cascade_rl.data.tasks.base import Problem, make_problem

CHARS_PER_TOKEN = 4
HEADER = "Read the text below, then answer the question that follows it."

# Filler vocabulary: no digits, colours, names, cities or the key words of the facts, so only the
# facts carry an answer. Several words split into more than one token, as real prose does.
ADJECTIVES = (
    "quiet", "ancient", "narrow", "dusty", "gentle", "hollow", "crooked", "weathered", "peculiar",
    "restless", "sleepy", "brittle", "tangled", "humble", "distant", "mossy", "patient", "curious",
    "damp", "fragrant", "solemn", "lopsided", "drowsy", "rickety", "whimsical", "threadbare",
)  # fmt: skip
NOUNS = (
    "lantern", "meadow", "harbor", "orchard", "pebble", "kettle", "window", "ladder", "cottage",
    "bridge", "thistle", "barrel", "wagon", "chimney", "cobblestone", "willow", "basket", "compass",
    "feather", "anchor", "blanket", "lighthouse", "marmalade", "teapot", "violin", "carpet", "mitten",
    "scarecrow", "pinecone", "wheelbarrow", "gramophone", "periwinkle", "sundial", "weathervane",
)  # fmt: skip
VERBS = (
    "drifted", "wandered", "rested", "waited", "glimmered", "hummed", "leaned", "lingered", "rolled",
    "shivered", "tumbled", "settled", "flickered", "creaked", "rustled", "wobbled", "dozed", "meandered",
)  # fmt: skip
PREPOSITIONS = ("past", "near", "under", "beside", "behind", "across", "through", "around", "toward", "beyond")
TIMES = (
    "At dawn", "By noon", "Later that evening", "In the spring", "Long ago", "That winter", "Every morning",
    "Once in a while", "After the storm", "Before supper", "On windy afternoons",
)  # fmt: skip
ADVERBS = ("slowly", "quietly", "again", "softly", "at last", "without a sound", "for a while", "once more")


def _w(rng: random.Random, words: tuple[str, ...]) -> str:
    return words[int(rng.random() * len(words))]  # rng.choice's draw, without its per-call overhead


SLOTS = {"adj": ADJECTIVES, "noun": NOUNS, "verb": VERBS, "prep": PREPOSITIONS, "time": TIMES, "adv": ADVERBS}
TEMPLATES = (
    "The {adj} {noun} {verb} {prep} the {noun}.",
    "{time}, the {noun} {verb} {prep} a {adj} {noun}.",
    "Nobody expected the {noun} to be so {adj}.",
    "A {adj} {noun} and a {adj} {noun} {verb} {prep} the {noun}.",
    "Now and then, the {adj} {noun} {verb} {adv}.",
    "Some said the {noun} was {adj}, others that it was {adj}.",
    "It was {adj} near the {noun}, and the {noun} {verb} {adv}.",
    "{time}, someone left a {noun} {prep} the {adj} {noun}.",
)


def _compile(template: str) -> tuple[str | tuple[str, ...], ...]:
    """A template as its parts: literal text, and word lists to draw one word from."""
    parts = re.split(r"\{(\w+)\}", template)
    return tuple(SLOTS[p] if i % 2 else p for i, p in enumerate(parts) if p)


_COMPILED = tuple(_compile(t) for t in TEMPLATES)


def _sentence(rng: random.Random) -> str:
    parts = _COMPILED[int(rng.random() * len(_COMPILED))]
    return "".join(p if isinstance(p, str) else _w(rng, p) for p in parts)


def filler(rng: random.Random, n_chars: int) -> list[str]:
    """Pseudo-sentences totalling about ``n_chars`` characters (with one space after each)."""
    out: list[str] = []
    total = 0
    while total < n_chars:
        sentence = _sentence(rng)
        out.append(sentence)
        total += len(sentence) + 1
    if out and total - n_chars > (len(out[-1]) + 1) / 2:  # the nearer of stopping before or after it
        out.pop()
    return out


def paragraphs(rng: random.Random, sentences: list[str]) -> str:
    """Sentences joined into paragraphs of three to eight."""
    parts, i = [], 0
    while i < len(sentences):
        size = rng.randint(3, 8)
        parts.append(" ".join(sentences[i : i + size]))
        i += size
    return "\n".join(parts)


def scatter(rng: random.Random, facts: list[str], n_chars: int) -> list[str]:
    """Filler of about ``n_chars`` in total, with ``facts`` inserted in their order at random places."""
    sentences = filler(rng, n_chars - sum(len(f) + 1 for f in facts))
    slots = sorted(rng.randint(0, len(sentences)) for _ in facts)
    for offset, (slot, fact) in enumerate(zip(slots, facts, strict=True)):
        sentences.insert(slot + offset, fact)
    return sentences


@dataclass(frozen=True)
class Draft:
    """One problem before it becomes a ``Problem``: the long text, the question and the solution."""

    kind: str
    context: str
    question: str
    value: int
    reasoning: str


def _context_chars(context_length: int, question: str) -> int:
    """Characters the long text may take so that the whole user text is ``context_length`` tokens."""
    return context_length * CHARS_PER_TOKEN - len(HEADER) - len(question) - len("\n\n\n\nQuestion: ")


# Needle retrieval ------------------------------------------------------------------------------------------------

COLORS = ("red", "blue", "green", "black", "white", "pink", "gray", "orange", "purple", "yellow")
PLACES = ("room", "vault", "tower", "hall", "cellar", "attic", "gate", "shed")
NEEDLE_DISTRACTORS = (0, 2, 5)  # same-shape facts about other keys, per difficulty


def needle(rng: random.Random, difficulty: int, context_length: int) -> Draft:
    """One key fact at a random depth; distractor keys share the colour or the place with it."""
    color, place = _w(rng, COLORS), _w(rng, PLACES)
    keys = [(c, p) for c in COLORS for p in PLACES if (c == color) != (p == place)]  # share exactly one word
    others = rng.sample(keys, NEEDLE_DISTRACTORS[min(difficulty, 2)])
    values = rng.sample(range(1000, 10000), len(others) + 1)
    fact = f"The access code of the {color} {place} is {values[0]}."
    decoys = [f"The access code of the {c} {p} is {v}." for (c, p), v in zip(others, values[1:], strict=True)]
    question = f"What is the access code of the {color} {place}?"
    sentences = scatter(rng, decoys, _context_chars(context_length, question) - len(fact) - 1)
    sentences.insert(round(rng.random() * len(sentences)), fact)  # the depth: uniform over the text
    return Draft("needle", paragraphs(rng, sentences), question, values[0], f"The text says: {fact}")


# Multi-hop over documents ----------------------------------------------------------------------------------------

PEOPLE = (
    "Ana", "Tomas", "Bruno", "Clara", "Diego", "Elena", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Karin",
    "Luca", "Mira", "Nils", "Olga", "Pavel", "Rosa", "Sven", "Tara", "Umar", "Vera", "Wanda", "Yusuf",
)  # fmt: skip
CITIES = (
    "Oslo", "Rome", "Lima", "Cairo", "Tokyo", "Delhi", "Berlin", "Paris", "Quito", "Dakar", "Hanoi", "Perth",
    "Riga", "Sofia", "Porto", "Nairobi",
)  # fmt: skip
SEASONS = ("spring", "summer", "autumn", "winter")
# per difficulty: (hop choices, offices, people besides the asked one, facts about the chain's own entities)
HOP_LEVELS = (((2,), 3, 2, 0), ((2, 3), 4, 4, 2), ((3,), 6, 7, 4))


def _chain_facts(rng: random.Random, difficulty: int) -> tuple[list[str], list[str], str, int]:
    """(chain facts in hop order, distractor facts, question, answer) of one multi-hop problem."""
    hop_choices, n_offices, n_people, n_same = HOP_LEVELS[min(difficulty, 2)]
    hops = rng.choice(hop_choices)
    offices = rng.sample(CITIES, n_offices)
    names = rng.sample(PEOPLE, 1 + n_people + (n_offices if hops == 3 else 0))
    person, others, managers = names[0], names[1 : 1 + n_people], names[1 + n_people :]
    numbers = rng.sample(range(100, 10000), n_offices + 2)  # the offices' (or managers') values, then two spare
    works = [f"{person} works in the {offices[0]} office."]
    works += [f"{p} works in the {rng.choice(offices)} office." for p in others]  # some share the asked office
    if hops == 2:
        final = [f"The {o} office's door code is {n}." for o, n in zip(offices, numbers, strict=False)]
        chain, middle = [works[0], final[0]], []
        question = f"What is the door code of the office where {person} works?"
    else:
        middle = [f"The {o} office's manager is {m}." for o, m in zip(offices, managers, strict=True)]
        final = [f"{m}'s phone extension is {n}." for m, n in zip(managers, numbers, strict=False)]
        chain = [works[0], middle[0], final[0]]
        question = f"What is the phone extension of the manager of the office where {person} works?"
    spare = numbers[n_offices:]
    same = [
        f"{person} visited the {rng.choice(offices[1:])} office last {rng.choice(SEASONS)}.",
        f"The {offices[0]} office has {spare[1]} desks.",
        f"{person}'s desk number is {spare[0]}.",
        f"{managers[0] if managers else person} once worked in the {rng.choice(offices[1:])} office.",
    ][:n_same]
    distractors = works[1:] + middle[1:] + final[1:] + same
    return chain, distractors, question, numbers[0]


def multi_hop(rng: random.Random, difficulty: int, context_length: int) -> Draft:
    """Titled documents, the chain's facts each in a different one, distractors anywhere."""
    chain, distractors, question, value = _chain_facts(rng, difficulty)
    n_docs = len(chain) + 1 + 2 * min(difficulty, 2)
    docs: list[list[str]] = [[] for _ in range(n_docs)]
    for doc, fact in zip(rng.sample(range(n_docs), len(chain)), chain, strict=True):
        docs[doc].append(fact)
    for fact in distractors:
        docs[rng.randrange(n_docs)].append(fact)
    titles = [f"Document {i + 1}: The {_w(rng, ADJECTIVES)} {_w(rng, NOUNS)}" for i in range(n_docs)]
    budget = _context_chars(context_length, question) - sum(len(t) + 3 for t in titles)
    bodies = []
    for facts in docs:
        rng.shuffle(facts)
        bodies.append(paragraphs(rng, scatter(rng, facts, budget // n_docs)))
    context = "\n\n".join(f"{t}\n{b}" for t, b in zip(titles, bodies, strict=True))
    return Draft("multi_hop", context, question, value, " ".join(chain))


# Variable tracking -----------------------------------------------------------------------------------------------

LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"
VARIABLE_NAMES = tuple(a + b + c for a in LETTERS for b in LETTERS for c in LETTERS)
# per difficulty: (copies along the asked chain, distractor chains, branches off the asked chain, reassignments)
VARIABLE_LEVELS = (((1, 2), 1, 0, 0), ((3, 4), 3, 0, 0), ((5, 6), 3, 2, 2))


@dataclass(frozen=True)
class _Assign:
    target: str
    source: str | int  # a constant, or the variable copied
    after: str | None  # a variable that must be assigned before this statement may come


def _schedule(rng: random.Random, chains: list[list[_Assign]]) -> list[_Assign]:
    """The chains' statements interleaved at random, each chain in order, every prerequisite first."""
    out: list[_Assign] = []
    defined: set[str] = set()
    queues = [list(c) for c in chains]
    while any(queues):
        ready = [q for q in queues if q and (q[0].after is None or q[0].after in defined)]
        step = rng.choice(ready).pop(0)
        out.append(step)
        defined.add(step.target)
    return out


def evaluate(statements: list[_Assign]) -> dict[str, int]:
    """Every variable's value after the statements run in order (assignment copies the value)."""
    env: dict[str, int] = {}
    for s in statements:
        env[s.target] = s.source if isinstance(s.source, int) else env[s.source]
    return env


def _trace(statements: list[_Assign], variable: str) -> str:
    """Back from the end: the assignments that decide ``variable``'s final value."""
    steps, end = [], len(statements)
    while True:
        end = max(i for i in range(end) if statements[i].target == variable)
        source = statements[end].source
        steps.append(f"{variable} = {source}")
        if isinstance(source, int):
            return ", ".join(steps) + "."
        variable = source


def _variable_chains(rng: random.Random, difficulty: int) -> tuple[list[list[_Assign]], str]:
    copy_choices, n_decoys, n_branches, n_reassign = VARIABLE_LEVELS[min(difficulty, 2)]
    lengths = [rng.choice(copy_choices)] + [rng.randint(1, max(copy_choices)) for _ in range(n_decoys)]
    n_vars = sum(n + 1 for n in lengths) + n_branches * 2
    names = rng.sample(VARIABLE_NAMES, n_vars)
    values = rng.sample(range(10, 1000), len(lengths) + n_reassign)
    chains, asked = [], names[: lengths[0] + 1]
    for length, value in zip(lengths, values, strict=False):
        chain_vars, names = names[: length + 1], names[length + 1 :]
        chains.append([_Assign(chain_vars[0], value, None)])
        chains[-1] += [_Assign(b, a, a) for a, b in itertools.pairwise(chain_vars)]
    for _ in range(n_branches):  # distractors copied from the asked chain: they share its values
        start, (first, second), names = rng.choice(asked[:-1]), names[:2], names[2:]
        chains.append([_Assign(first, start, start), _Assign(second, first, first)])
    for value in values[len(lengths) :]:  # a new value for a variable of the asked chain, after it was set
        variable = rng.choice(asked[:-1])
        chains.append([_Assign(variable, value, variable)])
    return chains, asked[-1]


def variables(rng: random.Random, difficulty: int, context_length: int) -> Draft:
    """Assignment statements spread through filler; the final value of one variable is asked."""
    chains, target = _variable_chains(rng, difficulty)
    statements = _schedule(rng, chains)
    facts = [f"Let {s.target} = {s.source}." for s in statements]
    question = f"What is the value of {target} at the end of the text?"
    context = paragraphs(rng, scatter(rng, facts, _context_chars(context_length, question)))
    return Draft("variables", context, question, evaluate(statements)[target], _trace(statements, target))


KINDS: dict[str, Callable[[random.Random, int, int], Draft]] = {
    "needle": needle,
    "multi_hop": multi_hop,
    "variables": variables,
}


class LongContextTask:
    """Long texts with one numeric question; spec ``{"type": "math", "answer": "<int>"}``."""

    name = "long_context"

    def generate(self, rng: random.Random, difficulty: int, context_length: int = 1024) -> Problem:
        kind = rng.choice(tuple(KINDS))
        return self.generate_kind(rng, kind, difficulty, context_length)

    def generate_kind(self, rng: random.Random, kind: str, difficulty: int, context_length: int = 1024) -> Problem:
        """A problem of one kind (``needle``, ``multi_hop`` or ``variables``)."""
        if context_length < 1:
            raise ValueError(f"context_length must be >= 1 token, got {context_length}")
        draft = KINDS[kind](rng, difficulty, context_length)
        return make_problem(
            self.name,
            difficulty,
            user=f"{HEADER}\n\n{draft.context}\n\nQuestion: {draft.question}",
            spec={"type": "math", "answer": str(draft.value)},
            answer=f"The answer is {draft.value}.",
            reasoning=f"{draft.reasoning} The answer is {draft.value}.",
        )
