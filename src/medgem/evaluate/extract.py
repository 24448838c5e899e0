"""Read the answer out of what a model wrote.

The official MedQA evaluation takes the final option letter. Models write it in many ways: "The
answer is (C)", "**C**", "C. Metformin", the option text alone, sometimes after a thought block.
Each extractor returns None when nothing can be read; the caller counts that as wrong and lists it.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Mapping, Sequence

from medgem.request.thinking import THOUGHT_CLOSE, THOUGHT_OPEN, split_thinking

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans(dict.fromkeys(string.punctuation, " "))
_MARKUP = re.compile(r"[*_`#]+")


def answer_part(text: str) -> str:
    """The answer without any thought block (raw ``<unused94>thought ... <unused95>`` too)."""
    if THOUGHT_OPEN in text or THOUGHT_CLOSE in text:
        if THOUGHT_OPEN not in text:
            text = THOUGHT_OPEN + text  # the opening marker was cut off upstream
        return split_thinking(text)[1]
    return text.strip()


def normalize_text(text: str) -> str:
    """Lower-case, drop punctuation, articles and extra spaces (the SQuAD-style normalisation)."""
    lowered = text.lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", lowered).split())


def tokenize(text: str) -> list[str]:
    """Normalised word tokens, for tokenized F1."""
    return normalize_text(text).split()


def _letter_patterns(letters: str) -> list[re.Pattern[str]]:
    """Answer-letter patterns, most explicit first; within one pattern the last match wins."""
    cls = f"[{letters}{letters.lower()}]"
    upper = f"[{letters}]"
    wrapped = rf"[\(\[]?\s*\**\s*({cls})\s*\**\s*[\)\]]?"
    return [
        # "The answer is (C)", "Final answer: C", "correct option is **C**", "Answer - C."
        re.compile(
            # (a lower-case "a" then a word is the article: "the answer is a beta blocker")
            rf"(?:answer|option|choice)\s*(?:is|would be|:|-|=)?\s*(?:option\s*|choice\s*)?"
            rf"(?!\s*(?-i:a)\s+[A-Za-z]){wrapped}(?![A-Za-z0-9])",
            re.IGNORECASE,
        ),
        # The whole reply is a letter: "C", "(C)", "C.", "**C**", "C)".
        re.compile(rf"^\s*[\(\[]?\s*({upper})\s*[\)\]]?\s*[.:)]?\s*$"),
        # The reply starts with a letter and its option: "C. Metformin", "(C) Metformin", "C) ..."
        re.compile(rf"^\s*[\(\[]?({upper})(?:[\)\]]|[.:)]\s)"),
        # Bold letter anywhere: "**C**".
        re.compile(rf"\*\*\s*\(?({upper})\)?\s*[.:]?\s*\*\*"),
        # A parenthesised letter anywhere: "(C)".
        re.compile(rf"\(({upper})\)"),
        # A line starting with a letter and its option text.
        re.compile(rf"(?m)^\s*({upper})[.)]\s+\S"),
    ]


def extract_choice(text: str, options: Mapping[str, str]) -> str | None:
    """The option letter a reply chose.

    Args:
        text: the model's reply (thought blocks are removed here too).
        options: letter -> option text, e.g. {"A": "Aspirin", "B": "Metformin"}.

    Returns:
        The chosen letter (upper case), or None when no choice can be read.
    """
    reply = answer_part(text)
    if not reply or not options:
        return None
    letters = "".join(sorted(k.upper() for k in options))
    for pattern in _letter_patterns(letters):
        if matches := pattern.findall(reply):
            return str(matches[-1]).upper()
    return _match_option_text(reply, options)


def _match_option_text(reply: str, options: Mapping[str, str]) -> str | None:
    """The option whose text the reply names; with several, the one named last."""
    flat = normalize_text(_MARKUP.sub(" ", reply))
    if not flat:
        return None
    needles = [(letter.upper(), normalize_text(option)) for letter, option in options.items()]
    exact = [letter for letter, needle in needles if needle and needle == flat]
    if exact:
        return exact[0]
    # (position, length, letter): the latest mention wins; at the same place, the longer (more
    # specific) option; on a full tie, the first option.
    found = [(f" {flat} ".rfind(f" {needle} "), len(needle), letter)
             for letter, needle in needles if needle]
    found = [mention for mention in found if mention[0] >= 0]
    return max(found, key=lambda mention: mention[:2])[2] if found else None


def extract_label(text: str, labels: Sequence[str]) -> str | None:
    """A closed-set label (PubMedQA's yes/no/maybe; closed VQA answers) from a reply.

    Looks for "answer is X" / "Answer: X" first, then the reply's first word, then a label that is
    the only one of the set mentioned.

    Returns:
        The label as given in ``labels``, or None.
    """
    reply = answer_part(text)
    if not reply:
        return None
    by_norm = {normalize_text(label): label for label in labels}
    alternatives = "|".join(re.escape(n) for n in sorted(by_norm, key=len, reverse=True) if n)
    flat = normalize_text(_MARKUP.sub(" ", reply))
    if explicit := re.findall(rf"\banswer(?: is|)\s+({alternatives})\b", flat):
        return by_norm[explicit[-1]]
    if leading := re.match(rf"({alternatives})\b", flat):
        return by_norm[leading.group(1)]
    found = set(re.findall(rf"\b({alternatives})\b", flat))
    return by_norm[found.pop()] if len(found) == 1 else None


_NEGATION = re.compile(
    r"\b(no|not|without|negative for|free of|absence of|absent|resolved|ruled out|"
    r"no evidence of|no signs? of|unremarkable)\b"
)
_CLAUSE_SPLIT = re.compile(r"[.;\n]|\bbut\b|\bhowever\b|\bwhile\b")


def extract_findings(text: str, findings: Mapping[str, Sequence[str]]) -> dict[str, bool]:
    """Which findings a free-text reply says are present (finding -> present).

    A finding counts as present when one of its names appears in a clause that does not negate
    it ("no pleural effusion", "without edema" are absent). A reply of "none" marks all absent.

    Args:
        text: the model's reply.
        findings: finding -> names it may go by (lower case), e.g. {"Edema": ["edema", "oedema"]}.
    """
    reply = answer_part(text).lower()
    present = dict.fromkeys(findings, False)
    for clause in _CLAUSE_SPLIT.split(reply):
        for finding, names in findings.items():
            for name in names:
                index = clause.find(name)
                if index < 0:
                    continue
                before = clause[:index]
                if not _NEGATION.search(before) and not _NEGATION.search(clause[index + len(name):][:12]):
                    present[finding] = True
    return present


_TRAILING_COMMA = re.compile(r",\s*([\]}])")


def first_json_value(text: str) -> object | None:
    """The first JSON object or array in a reply: inside a ```json fence or bare in prose,
    forgiving trailing commas; None when there is none (or it was cut off before it closed).

    A run whose engine cannot constrain decoding gets free text, read as it comes; a constrained
    reply is bare JSON and reads the same way.
    """
    reply = answer_part(text)
    decoder = json.JSONDecoder()
    for start in (m.start() for m in re.finditer(r"[\[{]", reply)):
        for candidate in (reply[start:], _TRAILING_COMMA.sub(r"\1", reply[start:])):
            try:
                value, _ = decoder.raw_decode(candidate)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict | list):
                return value
    return None
