"""Scores, confidence intervals and paired tests; pure functions checked against hand values.

ROUGE-L comes from ``rouge-score`` and BLEU from ``sacrebleu`` (the ``eval`` extra), so report
numbers match what others compute. Intervals: Wilson for proportions, percentile bootstrap for
everything else. Paired comparisons: exact McNemar for right/wrong items, paired bootstrap for
continuous per-item scores.
"""

from __future__ import annotations

import functools
import math
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from medgem.errors import require
from medgem.evaluate.extract import tokenize

T = TypeVar("T")
Z_95 = 1.959963984540054


@dataclass(frozen=True)
class Interval:
    """A point estimate with its 95% confidence interval."""

    value: float
    low: float
    high: float

    def contains(self, x: float) -> bool:
        return self.low <= x <= self.high


def accuracy(correct: Sequence[bool]) -> float:
    """Fraction correct; 0.0 for no items."""
    return sum(bool(c) for c in correct) / len(correct) if correct else 0.0


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for a proportion (well-behaved near 0 and 1, unlike Wald).

    Returns:
        (low, high); (0.0, 1.0) when n is 0.
    """
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def token_f1(prediction: str, reference: str) -> float:
    """Tokenized F1 (SQuAD-style bag-of-words overlap after normalisation).

    Both empty gives 1.0; one empty gives 0.0.
    """
    pred, ref = tokenize(prediction), tokenize(reference)
    if not pred or not ref:
        return float(pred == ref)
    overlap = sum((Counter(pred) & Counter(ref)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred), overlap / len(ref)
    return 2 * precision * recall / (precision + recall)


def binary_f1(truth: Sequence[bool], predicted: Sequence[bool]) -> float:
    """F1 of the positive class; 0.0 when there are no positives in either."""
    tp = sum(t and p for t, p in zip(truth, predicted, strict=True))
    fp = sum((not t) and p for t, p in zip(truth, predicted, strict=True))
    fn = sum(t and (not p) for t, p in zip(truth, predicted, strict=True))
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def macro_f1(truth: Sequence[Sequence[bool | None]], predicted: Sequence[Sequence[bool]]) -> float:
    """Unweighted mean over labels of each label's positive-class F1 (multi-label).

    Args:
        truth: per item, per label: True / False, or None to leave that label out for the item
            (CheXpert's uncertain or unmentioned labels under the "ignore" policy).
        predicted: per item, per label.
    """
    if not truth:
        return 0.0
    per_label = []
    for label in range(len(truth[0])):
        pairs = [(t[label], p[label]) for t, p in zip(truth, predicted, strict=True)
                 if t[label] is not None]
        per_label.append(binary_f1([bool(t) for t, _ in pairs], [p for _, p in pairs]))
    return sum(per_label) / len(per_label)


def macro_accuracy(groups: Sequence[str], correct: Sequence[bool]) -> float:
    """Unweighted mean over groups of each group's accuracy (per condition, or per true class:
    balanced accuracy); 0.0 for no items."""
    by_group: dict[str, list[bool]] = {}
    for group, right in zip(groups, correct, strict=True):
        by_group.setdefault(group, []).append(bool(right))
    return sum(accuracy(v) for v in by_group.values()) / len(by_group) if by_group else 0.0


def f1_counts(tp: int, fp: int, fn: int) -> float:
    """F1 from true/false positive and false negative counts; 1.0 when all three are 0 (nothing
    expected, nothing found)."""
    return 1.0 if tp == fp == fn == 0 else 2 * tp / (2 * tp + fp + fn)


def match_counts(predicted: Sequence[Any], reference: Sequence[Any]) -> tuple[int, int, int]:
    """(tp, fp, fn) of two multisets of hashable facts (entities, relations, lab fields)."""
    tp = sum((Counter(predicted) & Counter(reference)).values())
    return tp, len(predicted) - tp, len(reference) - tp


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two boxes given as (y0, x0, y1, x1); 0.0 when both are empty."""
    ay0, ax0, ay1, ax1 = a
    by0, bx0, by1, bx1 = b
    inter = max(0.0, min(ay1, by1) - max(ay0, by0)) * max(0.0, min(ax1, bx1) - max(ax0, bx0))
    union = (ay1 - ay0) * (ax1 - ax0) + (by1 - by0) * (bx1 - bx0) - inter
    return inter / union if union > 0 else 0.0


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (rouge-score, Porter stemming)."""
    return float(_rouge_scorer().score(reference, prediction)["rougeL"].fmeasure)


@functools.cache  # one scorer object: building it loads the stemmer
def _rouge_scorer() -> Any:
    module: Any = require("rouge_score.rouge_scorer", "eval", "ROUGE-L", "rouge-score")
    return module.RougeScorer(["rougeL"], use_stemmer=True)


def corpus_bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU (sacrebleu defaults), on a 0-100 scale."""
    sacrebleu: Any = require("sacrebleu", "eval", "BLEU")
    return float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score)


def bootstrap_interval(items: Sequence[T], statistic: Callable[[Sequence[T]], float], *,
                       samples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap 95% interval of a statistic over items (resampled with replacement)."""
    if not items:
        return 0.0, 0.0
    rng = random.Random(seed)
    n = len(items)
    values = sorted(statistic([items[rng.randrange(n)] for _ in range(n)]) for _ in range(samples))
    return values[int(0.025 * (samples - 1))], values[math.ceil(0.975 * (samples - 1))]


def mcnemar_exact(a_correct: Sequence[bool], b_correct: Sequence[bool]) -> tuple[int, int, float]:
    """Exact (binomial) McNemar test on paired right/wrong outcomes.

    Returns:
        (b, c, p): items only A got right, items only B got right, two-sided p-value.
    """
    b = sum(x and not y for x, y in zip(a_correct, b_correct, strict=True))
    c = sum(y and not x for x, y in zip(a_correct, b_correct, strict=True))
    n = b + c
    if n == 0:
        return b, c, 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2**n
    return b, c, min(1.0, 2 * tail)


def paired_bootstrap(a_scores: Sequence[float], b_scores: Sequence[float], *, samples: int = 2000,
                     seed: int = 0) -> tuple[float, float, float, float]:
    """Paired bootstrap of the mean difference B - A.

    Returns:
        (difference, low, high, p): the observed mean difference, its 95% interval, and a
        two-sided p-value (twice the share of resamples on the other side of zero).
    """
    diffs = [b - a for a, b in zip(a_scores, b_scores, strict=True)]
    if not any(diffs):  # no items, or no item differs
        return 0.0, 0.0, 0.0, 1.0
    observed = sum(diffs) / len(diffs)
    rng = random.Random(seed)
    n = len(diffs)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(samples))
    low, high = means[int(0.025 * (samples - 1))], means[math.ceil(0.975 * (samples - 1))]
    other_side = sum(m <= 0 for m in means) if observed > 0 else sum(m >= 0 for m in means)
    return observed, low, high, min(1.0, 2 * other_side / samples)
