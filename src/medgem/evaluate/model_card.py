"""Published MedGemma results, keyed by variant and benchmark, for comparison in reports.

Numbers from the Hugging Face model cards (Jul 2025 - Apr 2026), as gathered in the project's
MEDGEMMA-FACTS.md. Values are percentages. ``baseline`` is the card's Gemma 3 number for the same
size, where the card gives one.
"""

from __future__ import annotations

from dataclasses import dataclass

from medgem.request.variants import find_variant


@dataclass(frozen=True)
class CardResult:
    """One published number.

    Attributes:
        variant: the variant key ("4b-it").
        benchmark: the benchmark key ("medqa").
        value: the published score, in percent.
        metric: the metric key it is reported in ("accuracy", "tokenized_f1", "macro_f1"...).
        baseline: Gemma 3's score on the same benchmark, when the card gives it.
        note: how the card measured it, when it matters.
    """

    variant: str
    benchmark: str
    value: float
    metric: str
    baseline: float | None = None
    note: str = ""


def _card(variant: str, rows: list[tuple[str, float, str, float | None, str]]) -> dict[
    tuple[str, str], CardResult
]:
    return {(variant, b): CardResult(variant, b, v, m, base, note) for b, v, m, base, note in rows}


PUBLISHED: dict[tuple[str, str], CardResult] = {
    **_card("4b-it", [
        ("medqa", 64.4, "accuracy", 50.7, "4 options"),
        ("medmcqa", 55.7, "accuracy", 45.4, ""),
        ("pubmedqa", 73.4, "accuracy", 68.4, ""),
        ("mmlu-med", 70.0, "accuracy", 67.2, ""),
        ("afrimed-qa", 52.0, "accuracy", 48.0, ""),
        ("pathmcqa", 69.8, "accuracy", 37.1, ""),
        ("mimic-cxr", 88.9, "macro_f1", 81.2, "macro F1 over the top 5 conditions"),
        ("chexpert", 48.1, "macro_f1", 32.6, "macro F1 over the top 5 conditions"),
        ("cxr14", 50.1, "macro_f1", 32.0, "macro F1 over 3 conditions"),
        ("slake", 72.3, "tokenized_f1", 40.2, ""),
        ("vqa-rad", 49.9, "tokenized_f1", 33.6, ""),
        ("mimic-cxr-report", 21.9, "radgraph_f1", None, "RadGraph F1 (needs the radgraph package)"),
    ]),
    **_card("27b-text-it", [
        ("medqa", 87.7, "accuracy", None, "0-shot"),
        ("medmcqa", 74.2, "accuracy", None, ""),
        ("pubmedqa", 76.8, "accuracy", None, ""),
        ("mmlu-med", 87.0, "accuracy", None, ""),
        ("afrimed-qa", 84.0, "accuracy", None, ""),
    ]),
    **_card("1.5-4b-it", [
        ("medqa", 69.1, "accuracy", None, ""),
        ("medmcqa", 59.8, "accuracy", None, ""),
        ("ehrqa", 89.6, "accuracy", None, ""),
        ("mimic-cxr", 89.5, "macro_f1", None, "macro F1 over the top 5 conditions"),
        ("slake", 82.8, "accuracy", None, ""),
        ("vqa-rad", 70.2, "accuracy", None, ""),
        ("ct-dataset-1", 61.1, "macro_accuracy", None, "CT dataset 1, 7 conditions"),
        ("mri-dataset-1", 64.7, "macro_accuracy", None, "MRI dataset 1, 10 conditions"),
        ("ct-rate", 27.0, "macro_f1", None, "CT-RATE validation, 18 conditions (P 34.2, R 42.0)"),
        ("ms-cxr-t", 65.7, "macro_accuracy", None, "MS-CXR-T longitudinal"),
        ("chest-imagenome", 38.0, "iou", None, "Chest ImaGenome anatomy boxes"),
        ("lab-report-pdf", 91.0, "macro_f1", None,
         "EHR dataset 2; micro F1 88 (EHR dataset 3: 71 / 70)"),
        ("lab-report-png", 85.0, "macro_f1", None, "Mendeley; micro F1 83"),
        ("wsi-path", 49.4, "rouge_l", None, "WSI-Path report ROUGE"),
        ("mimic-cxr-report", 27.2, "radgraph_f1", None, "RadGraph F1 (needs the radgraph package)"),
    ]),
}

BENCHMARK_ALIASES: dict[str, str] = {
    "mmlu": "mmlu-med", "afrimedqa": "afrimed-qa", "vqarad": "vqa-rad", "vqa_rad": "vqa-rad",
    "mimic": "mimic-cxr", "mimic-cxr-jpg": "mimic-cxr", "chestx-ray14": "cxr14",
    "ct": "ct-dataset-1", "mri": "mri-dataset-1", "mr": "mri-dataset-1", "ctrate": "ct-rate",
    "mscxrt": "ms-cxr-t", "imagenome": "chest-imagenome", "lab-pdf": "lab-report-pdf",
    "lab-png": "lab-report-png", "ehr-qa": "ehrqa",
}


def normalize_benchmark(name: str) -> str:
    key = name.strip().lower()
    return BENCHMARK_ALIASES.get(key, key)


def published_result(variant: str | None, benchmark: str | None) -> CardResult | None:
    """The model card's number for a variant (key, alias or hub id) on a benchmark, if any."""
    if not variant or not benchmark:
        return None
    found = find_variant(variant)
    key = found.key if found else variant.strip().lower()
    return PUBLISHED.get((key, normalize_benchmark(benchmark)))
