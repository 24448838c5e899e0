"""Answer extraction on a table of tricky model outputs."""

from __future__ import annotations

import pytest

from medgem.evaluate.extract import (
    answer_part,
    extract_choice,
    extract_findings,
    extract_label,
    normalize_text,
)
from medgem.evaluate.tasks.cxr_labels import FINDINGS

OPTIONS = {"A": "Aspirin", "B": "Metformin", "C": "Insulin glargine", "D": "Warfarin"}


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("C", "C"),
        ("(C)", "C"),
        ("C.", "C"),
        ("**C**", "C"),
        ("**C. Insulin glargine**", "C"),
        ("The answer is (C).", "C"),
        ("The answer is C", "C"),
        ("Final answer: **C**", "C"),
        ("Answer: c", "C"),
        ("The correct option is B, metformin.", "B"),
        ("C. Insulin glargine", "C"),
        ("C) Insulin glargine", "C"),
        ("Insulin glargine", "C"),
        ("The best choice here is insulin glargine because the HbA1c is very high.", "C"),
        # Final letter wins when the reply changes its mind.
        ("At first (A) looks right, but the answer is (D).", "D"),
        ("A patient like this needs insulin. The answer is (C)", "C"),  # article "A" is no answer
        # "answer is a ..." is the article, not option A: the option named after it is the answer
        ("The answer is a long-acting insulin: insulin glargine.", "C"),
        ("The best choice is a vitamin K antagonist, (D) Warfarin", "D"),
        ("The answer is a biguanide, metformin.", "B"),
        ("The answer is a.", "A"),
        # Thought blocks: the thought's letters are ignored.
        ("<unused94>thought\nMaybe A? No, B fits.<unused95>The answer is (C)", "C"),
        ("<unused94>thought\nLet me think about (A) and (B).<unused95>**D**", "D"),
        ("thought text only<unused95>Answer: B", "B"),  # opening marker cut off upstream
        # Option text named after another option.
        ("Not aspirin; warfarin is correct.", "D"),
    ],
)
def test_extract_choice(reply: str, expected: str) -> None:
    assert extract_choice(reply, OPTIONS) == expected


@pytest.mark.parametrize(
    "reply",
    [
        "",
        "I am not sure.",
        "<unused94>thought\nThe answer is (B) I think",  # budget ran out inside the thought
        "Consult a specialist.",
        "The answer is (F).",  # not an option
    ],
)
def test_extract_choice_unparseable(reply: str) -> None:
    assert extract_choice(reply, OPTIONS) is None


def test_extract_choice_five_options() -> None:
    options = {**OPTIONS, "E": "Heparin"}
    assert extract_choice("The answer is E.", options) == "E"
    assert extract_choice("The answer is E.", OPTIONS) is None


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("yes", "yes"),
        ("Yes.", "yes"),
        ("**Maybe**", "maybe"),
        ("No, there is no association.", "no"),
        ("The answer is yes.", "yes"),
        ("Answer: maybe", "maybe"),
        ("Based on the results, yes", "yes"),
        ("<unused94>thought\nno? maybe?<unused95>yes", "yes"),
        ("The data suggest no benefit, but maybe in subgroups; overall uncertain", None),
        ("Unclear.", None),
    ],
)
def test_extract_label(reply: str, expected: str | None) -> None:
    assert extract_label(reply, ("yes", "no", "maybe")) == expected


@pytest.mark.parametrize(
    ("reply", "present"),
    [
        ("Cardiomegaly and a left pleural effusion.", {"Cardiomegaly", "Pleural Effusion"}),
        ("None", set()),
        ("No pleural effusion. Mild pulmonary oedema.", {"Edema"}),
        ("Atelectasis at the left base; no consolidation, edema or effusion.", {"Atelectasis"}),
        ("The heart is enlarged.", {"Cardiomegaly"}),
        ("Effusion is absent. Consolidation in the right lower lobe.", {"Consolidation"}),
    ],
)
def test_extract_findings(reply: str, present: set[str]) -> None:
    found = extract_findings(reply, FINDINGS)
    assert {k for k, v in found.items() if v} == present


def test_answer_part_and_normalize() -> None:
    assert answer_part("<unused94>thought\nhmm<unused95> Yes") == "Yes"
    assert answer_part("  plain  ") == "plain"
    assert normalize_text("The  Left, lung!") == "left lung"
