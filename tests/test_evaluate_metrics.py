"""Metric functions against values worked out by hand."""

from __future__ import annotations

import pytest

from medgem.evaluate.metrics import (
    accuracy,
    binary_f1,
    bootstrap_interval,
    corpus_bleu,
    macro_f1,
    mcnemar_exact,
    paired_bootstrap,
    rouge_l,
    token_f1,
    wilson_interval,
)


def test_accuracy() -> None:
    assert accuracy([True, False, True, True]) == 0.75
    assert accuracy([]) == 0.0


def test_wilson_interval_8_of_10() -> None:
    # p = 0.8, z^2/n = 0.38416: centre (0.8 + 0.19208) / 1.38416 = 0.71680,
    # half-width 1.96 * sqrt(0.016 + 0.009604) / 1.38416 = 0.22660.
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4)
    assert high == pytest.approx(0.9433, abs=1e-4)


def test_wilson_interval_edges() -> None:
    low, high = wilson_interval(0, 20)
    assert low == 0.0
    assert high == pytest.approx(0.1611, abs=1e-4)  # z^2 / (n + z^2) = 3.8415 / 23.8415
    assert wilson_interval(0, 0) == (0.0, 1.0)


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ("the left lung", "left lung base", 0.8),  # P 2/2, R 2/3
        ("Left.", "left", 1.0),  # case and punctuation ignored
        ("right", "left", 0.0),
        ("", "", 1.0),
        ("", "left", 0.0),
        ("lung lung", "lung", 2 / 3),  # P 1/2, R 1/1
    ],
)
def test_token_f1(prediction: str, reference: str, expected: float) -> None:
    assert token_f1(prediction, reference) == pytest.approx(expected)


def test_binary_and_macro_f1() -> None:
    truth = [[True, False], [True, True], [False, True], [False, False]]
    predicted = [[True, False], [False, True], [True, True], [False, True]]
    # label 0: tp 1, fp 1, fn 1 -> 0.5; label 1: tp 2, fp 1, fn 0 -> 0.8
    assert binary_f1([t[0] for t in truth], [p[0] for p in predicted]) == pytest.approx(0.5)
    assert macro_f1(truth, predicted) == pytest.approx(0.65)


def test_macro_f1_leaves_out_ignored_labels() -> None:
    truth = [[True, None], [None, True]]
    predicted = [[True, True], [True, False]]
    # label 0 uses item 0 only: F1 1.0; label 1 uses item 1 only: F1 0.0
    assert macro_f1(truth, predicted) == pytest.approx(0.5)


def test_rouge_l() -> None:
    # LCS of "the cat on the mat" and "the cat sat on the mat" is 5 words:
    # P 5/5, R 5/6, F = 10/11.
    assert rouge_l("the cat on the mat", "the cat sat on the mat") == pytest.approx(10 / 11)
    assert rouge_l("", "the cat") == 0.0


def test_corpus_bleu() -> None:
    text = "the heart size is normal and the lungs are clear"
    assert corpus_bleu([text], [text]) == pytest.approx(100.0)
    assert corpus_bleu(["completely different words here"], [text]) < 5


def test_mcnemar_exact() -> None:
    a = [True] * 1 + [False] * 6 + [True] * 3
    b = [False] * 1 + [True] * 6 + [True] * 3
    only_a, only_b, p = mcnemar_exact(a, b)
    # 7 discordant pairs, split 1:6: 2 * (C(7,0) + C(7,1)) / 2^7 = 16/128
    assert (only_a, only_b) == (1, 6)
    assert p == pytest.approx(0.125)
    assert mcnemar_exact([True, False], [True, False]) == (0, 0, 1.0)


def test_bootstrap_interval_brackets_the_mean() -> None:
    scores = [0.0, 0.5, 1.0, 1.0, 0.25, 0.75] * 5
    low, high = bootstrap_interval(scores, lambda xs: sum(xs) / len(xs), seed=3)
    assert low < sum(scores) / len(scores) < high
    assert (low, high) == bootstrap_interval(scores, lambda xs: sum(xs) / len(xs), seed=3)


def test_paired_bootstrap() -> None:
    a = [0.2, 0.4, 0.1, 0.3, 0.5] * 6
    b = [x + 0.3 for x in a]
    diff, low, high, p = paired_bootstrap(a, b)
    assert diff == pytest.approx(0.3)
    assert low == pytest.approx(0.3) and high == pytest.approx(0.3)
    assert p == 0.0
    assert paired_bootstrap(a, a) == (0.0, 0.0, 0.0, 1.0)
