"""IFEval-style instruction checkers: ``CHECKS[instruction_id] = Check(fn, required, optional)``.

Ids and kwarg names follow Google's IFEval release (``instruction_id_list`` / ``kwargs``). Each
checker is ``fn(response, **kwargs) -> bool``. Semantics follow IFEval's definitions; where IFEval
relies on external tools this module uses documented stand-ins:

* sentences: a regex splitter (``.``, ``!``, ``?`` followed by space / end, common abbreviations
  and initials kept) instead of NLTK punkt;
* words: ``\\w+`` tokens (as IFEval's ``RegexpTokenizer(r"\\w+")``); capital words: tokens that
  are ``isupper()`` (IFEval uses NLTK's word tokenizer);
* ``language:response_language`` and the "English" part of the change_case checks: a heuristic
  (Unicode script counts, plus stop-word overlap for Latin-script languages) instead of
  ``langdetect``. It separates scripts reliably and common Latin-script languages well, but it
  is a heuristic: short or mixed-language texts can be misjudged.

Relations are ``"less than"`` (actual < N) and ``"at least"`` (actual >= N).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

RELATIONS = ("less than", "at least")

_ABBREV = {
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e", "inc", "ltd",
    "co", "no", "fig", "approx", "dept", "est", "mt", "jan", "feb", "mar", "apr", "jun", "jul",
    "aug", "sep", "sept", "oct", "nov", "dec", "u.s", "u.k",
}  # fmt: skip
_SENT_END_RE = re.compile(r"[.!?]+[\"'”’)\]]*(?=\s|$)")
_STOPWORDS = {
    "en": "the and is are of to in that it for with this you was on be have not",
    "es": "el la los las que de y en es por con para una un del se no",
    "fr": "le la les des est et que une un pour dans pas vous sur avec du",
    "de": "der die das und ist nicht ein eine zu mit den von sie ich auf sich",
    "it": "il lo la gli che di e è per una un non sono con del della",
    "pt": "o os as que de e em um uma para com não do da é são",
    "nl": "de het een en van is dat niet op te zijn met voor ik",
    "sv": "och att det som är en på för med inte av den till har",
    "tr": "ve bir bu da de için ile ne çok ama gibi daha olarak",
    "id": "dan yang di ini itu dengan untuk tidak dari ke ada saya",
    "sw": "na ya wa kwa ni la za katika kuwa hii cha",
    "fi": "ja on ei se että hän oli ovat mutta kun tai",
    "pl": "i w nie na się jest że do to z jak co",
}
_SCRIPT_LANGS = {
    "CJK": ("zh",), "HIRAGANA": ("ja",), "KATAKANA": ("ja",), "HANGUL": ("ko",),
    "CYRILLIC": ("ru", "uk", "bg"), "ARABIC": ("ar", "fa", "ur"), "DEVANAGARI": ("hi", "mr", "ne"),
    "BENGALI": ("bn",), "GUJARATI": ("gu",), "GURMUKHI": ("pa",), "TAMIL": ("ta",),
    "TELUGU": ("te",), "KANNADA": ("kn",), "MALAYALAM": ("ml",), "THAI": ("th",),
    "HEBREW": ("he",), "GREEK": ("el",),
}  # fmt: skip


@dataclass(frozen=True)
class Check:
    """A checker with the kwargs it needs and the ones it accepts."""

    fn: Callable[..., bool]
    required: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()


def compare(actual: int, relation: str, target: int) -> bool:
    if relation == "less than":
        return actual < target
    if relation == "at least":
        return actual >= target
    raise ValueError(f"relation must be one of {RELATIONS}, got {relation!r}")


def count_words(text: str) -> int:
    return len(re.findall(r"\w+", text))


def split_sentences(text: str) -> list[str]:
    """Heuristic sentence split (see module docstring)."""
    sentences, start = [], 0
    for match in _SENT_END_RE.finditer(text):
        before = text[start : match.start()].split()
        word = before[-1].lower().strip("(\"'") if before else ""
        # "Dr.", "e.g.", "p.m.", initials: a period that does not end the sentence.
        if match.group().startswith(".") and (word in _ABBREV or "." in word or re.fullmatch(r"[a-z]", word)):
            continue
        piece = text[start : match.end()].strip()
        if piece:
            sentences.append(piece)
        start = match.end()
    tail = text[start:].strip()
    if tail:
        sentences.append(tail)
    return sentences


def _scripts(text: str) -> Counter[str]:
    counts: Counter[str] = Counter()
    for ch in text:
        if ch.isalpha():
            name = unicodedata.name(ch, "")
            counts[name.split(" ")[0] if name else "UNKNOWN"] += 1
    return counts


def detect_language(text: str) -> str | None:
    """ISO 639-1 guess (heuristic); None when undecidable (no letters)."""
    scripts = _scripts(text)
    if not scripts:
        return None
    script, _ = scripts.most_common(1)[0]
    if script in ("CJK", "HIRAGANA", "KATAKANA"):
        return "ja" if scripts["HIRAGANA"] + scripts["KATAKANA"] > 0.1 * sum(scripts.values()) else "zh"
    if script != "LATIN":
        return _SCRIPT_LANGS.get(script, ("unknown",))[0]
    words = Counter(w.lower() for w in re.findall(r"\w+", text))
    scores = sorted(((sum(words[w] for w in stop.split()), lang) for lang, stop in _STOPWORDS.items()), reverse=True)
    (best, lang), (runner_up, _) = scores[0], scores[1]
    # Too little evidence (short text, shared function words): undecidable rather than a guess.
    return lang if best >= 2 and best > runner_up else None


def is_language(text: str, language: str) -> bool:
    detected = detect_language(text)
    if detected is None:
        return True  # IFEval also passes text its detector cannot judge
    lang = language.lower().split("-")[0]
    if detected == lang:
        return True
    # Same-script languages the heuristic cannot tell apart reliably.
    return any(lang in group and detected in group for group in _SCRIPT_LANGS.values())


# --- keywords -----------------------------------------------------------------------------------


def keywords_existence(r: str, keywords: list[str]) -> bool:
    return all(re.search(re.escape(k), r, flags=re.IGNORECASE) for k in keywords)


def keywords_frequency(r: str, keyword: str, frequency: int, relation: str) -> bool:
    return compare(len(re.findall(re.escape(keyword), r, flags=re.IGNORECASE)), relation, frequency)


def forbidden_words(r: str, forbidden_words: list[str]) -> bool:
    return not any(re.search(r"\b" + re.escape(w) + r"\b", r, flags=re.IGNORECASE) for w in forbidden_words)


def letter_frequency(r: str, letter: str, let_frequency: int, let_relation: str) -> bool:
    return compare(r.lower().count(letter.lower()), let_relation, let_frequency)


# --- length -------------------------------------------------------------------------------------


def number_words(r: str, num_words: int, relation: str) -> bool:
    return compare(count_words(r), relation, num_words)


def number_sentences(r: str, num_sentences: int, relation: str) -> bool:
    return compare(len(split_sentences(r)), relation, num_sentences)


def number_paragraphs(r: str, num_paragraphs: int) -> bool:
    """Paragraphs are separated by the Markdown divider ``***``; empty inner ones fail."""
    parts = re.split(r"\s?\*\*\*\s?", r)
    count = len(parts)
    for i, part in enumerate(parts):
        if not part.strip():
            if i in (0, len(parts) - 1):
                count -= 1
            else:
                return False
    return count == num_paragraphs


def nth_paragraph_first_word(r: str, num_paragraphs: int, nth_paragraph: int, first_word: str) -> bool:
    """Paragraphs separated by blank lines (``\\n\\n``); paragraph ``nth`` starts with ``first_word``."""
    parts = re.split(r"\n\n", r)
    count = sum(1 for p in parts if p.strip())
    if nth_paragraph > count or nth_paragraph < 1:
        return False
    paragraph = parts[nth_paragraph - 1].strip()
    if not paragraph:
        return False
    word = paragraph.split()[0].strip().lstrip("'\"")
    first = ""
    for ch in word:
        if ch in ".,?!'\"":
            break
        first += ch.lower()
    return count == num_paragraphs and first == first_word.lower()


# --- detectable content / format ----------------------------------------------------------------


def number_placeholders(r: str, num_placeholders: int) -> bool:
    return len(re.findall(r"\[.*?\]", r)) >= num_placeholders


def postscript(r: str, postscript_marker: str) -> bool:
    text = r.lower()
    if postscript_marker == "P.P.S":
        pattern = r"\s*p\.\s?p\.\s?s.*$"
    elif postscript_marker == "P.S.":
        pattern = r"\s*p\.\s?s\..*$"
    else:
        pattern = r"\s*" + re.escape(postscript_marker.lower()) + r".*$"
    return bool(re.findall(pattern, text, flags=re.MULTILINE))


def number_bullet_lists(r: str, num_bullets: int) -> bool:
    stars = re.findall(r"^\s*\*[^\*].*$", r, flags=re.MULTILINE)
    dashes = re.findall(r"^\s*-.*$", r, flags=re.MULTILINE)
    return len(stars) + len(dashes) == num_bullets


def constrained_response(r: str) -> bool:
    options = ("My answer is yes.", "My answer is no.", "My answer is maybe.")
    return any(option in r.strip() for option in options)


def number_highlighted_sections(r: str, num_highlights: int) -> bool:
    single = [h for h in re.findall(r"\*[^\n\*]*\*", r) if h.strip("*").strip()]
    double = [h for h in re.findall(r"\*\*[^\n\*]*\*\*", r) if h.removeprefix("**").removesuffix("**").strip()]
    return len(single) + len(double) >= num_highlights


def multiple_sections(r: str, section_spliter: str, num_sections: int) -> bool:
    sections = re.split(r"\s?" + re.escape(section_spliter) + r"\s?\d+\s?", r)
    return len(sections) - 1 >= num_sections


def json_format(r: str) -> bool:
    text = r.strip()
    for prefix in ("```json", "```Json", "```JSON", "```"):
        text = text.removeprefix(prefix)
    text = text.removesuffix("```").strip()
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def title(r: str) -> bool:
    return any(t.lstrip("<").rstrip(">").strip() for t in re.findall(r"<<[^\n]+>>", r))


# --- combination / start-end / case / punctuation -----------------------------------------------


def two_responses(r: str) -> bool:
    parts = r.split("******")
    valid = []
    for i, part in enumerate(parts):
        if part.strip():
            valid.append(part)
        elif i not in (0, len(parts) - 1):
            return False
    return len(valid) == 2 and valid[0].strip() != valid[1].strip()


def repeat_prompt(r: str, prompt_to_repeat: str) -> bool:
    return r.strip().lower().startswith(prompt_to_repeat.strip().lower())


def end_checker(r: str, end_phrase: str) -> bool:
    return r.strip().strip('"').lower().endswith(end_phrase.strip().lower())


def quotation(r: str) -> bool:
    text = r.strip()
    return len(text) > 1 and text[0] == '"' and text[-1] == '"'


def english_capital(r: str) -> bool:
    return r.isupper() and is_language(r, "en")


def english_lowercase(r: str) -> bool:
    return r.islower() and is_language(r, "en")


def capital_word_frequency(r: str, capital_frequency: int, capital_relation: str) -> bool:
    capitals = [w for w in re.findall(r"\w+", r) if w.isupper()]
    return compare(len(capitals), capital_relation, capital_frequency)


def no_comma(r: str) -> bool:
    return "," not in r


def response_language(r: str, language: str) -> bool:
    return is_language(r, language)


CHECKS: dict[str, Check] = {
    "keywords:existence": Check(keywords_existence, ("keywords",)),
    "keywords:frequency": Check(keywords_frequency, ("keyword", "frequency", "relation")),
    "keywords:forbidden_words": Check(forbidden_words, ("forbidden_words",)),
    "keywords:letter_frequency": Check(letter_frequency, ("letter", "let_frequency", "let_relation")),
    "language:response_language": Check(response_language, ("language",)),
    "length_constraints:number_sentences": Check(number_sentences, ("num_sentences", "relation")),
    "length_constraints:number_paragraphs": Check(number_paragraphs, ("num_paragraphs",)),
    "length_constraints:number_words": Check(number_words, ("num_words", "relation")),
    "length_constraints:nth_paragraph_first_word": Check(
        nth_paragraph_first_word, ("num_paragraphs", "nth_paragraph", "first_word")
    ),
    "detectable_content:number_placeholders": Check(number_placeholders, ("num_placeholders",)),
    "detectable_content:postscript": Check(postscript, ("postscript_marker",)),
    "detectable_format:number_bullet_lists": Check(number_bullet_lists, ("num_bullets",)),
    "detectable_format:constrained_response": Check(constrained_response),
    "detectable_format:number_highlighted_sections": Check(number_highlighted_sections, ("num_highlights",)),
    "detectable_format:multiple_sections": Check(multiple_sections, ("section_spliter", "num_sections")),
    "detectable_format:json_format": Check(json_format),
    "detectable_format:title": Check(title),
    "combination:two_responses": Check(two_responses),
    "combination:repeat_prompt": Check(repeat_prompt, ("prompt_to_repeat",)),
    "startend:end_checker": Check(end_checker, ("end_phrase",)),
    "startend:quotation": Check(quotation),
    "change_case:capital_word_frequency": Check(capital_word_frequency, ("capital_frequency", "capital_relation")),
    "change_case:english_capital": Check(english_capital),
    "change_case:english_lowercase": Check(english_lowercase),
    "punctuation:no_comma": Check(no_comma),
}

# Expected kwarg types, for spec validation.
KWARG_TYPES: dict[str, Any] = {
    "keywords": list, "forbidden_words": list, "keyword": str, "frequency": int, "relation": str,
    "letter": str, "let_frequency": int, "let_relation": str, "language": str, "num_sentences": int,
    "num_paragraphs": int, "num_words": int, "nth_paragraph": int, "first_word": str,
    "num_placeholders": int, "postscript_marker": str, "num_bullets": int, "num_highlights": int,
    "section_spliter": str, "num_sections": int, "prompt_to_repeat": str, "end_phrase": str,
    "capital_frequency": int, "capital_relation": str,
}  # fmt: skip
