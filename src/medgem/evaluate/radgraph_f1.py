"""RadGraph F1 for generated radiology reports (the model cards' report-generation metric).

The `radgraph` package (Stanford AIMI) annotates a report into entities (tokens + label, e.g.
"effusion" / "Observation::definitely present") and relations between them (located_at,
modify, suggestive_of). A report's facts are its entities (tokens, label) and its relations
(source tokens, source label, relation, target tokens, target label); RadGraph F1 is the F1 of
the generated report's facts against the reference's (entities and relations together, as
RadGraph's "partial" reward counts them), averaged over reports. The package and its model
files are optional: without them the metric is left out and the report says what to install.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from medgem.evaluate.metrics import f1_counts, match_counts

Fact = tuple[str, ...]
INSTALL = ("install the `radgraph` package (pip install radgraph); it fetches its model files "
           "from Hugging Face on first use")


def graph_facts(annotation: dict[str, Any]) -> list[Fact]:
    """The distinct entity and relation facts of one RadGraph annotation (one report's
    ``{"entities": {id: {"tokens", "label", "relations": [[relation, target id], ...]}}}``)."""
    entities = annotation.get("entities") or {}
    found: set[Fact] = set()
    for entity in entities.values():
        source = (str(entity.get("tokens", "")).lower(), str(entity.get("label", "")))
        found.add(source)
        for relation, target_id in entity.get("relations") or []:
            target = entities.get(str(target_id))
            if target is not None:
                found.add((*source, str(relation), str(target.get("tokens", "")).lower(),
                           str(target.get("label", ""))))
    return sorted(found)


def report_f1(predicted: Sequence[Fact], reference: Sequence[Fact]) -> float:
    """F1 of one report's facts against the reference's (1.0 when neither has any)."""
    return f1_counts(*match_counts(predicted, reference))


@functools.cache
def _annotator() -> tuple[Any, str]:
    """(the RadGraph annotator, "") or (None, why it is unavailable)."""
    try:
        import radgraph  # type: ignore[import-not-found]
    except ImportError:
        return None, f"RadGraph F1 not computed: {INSTALL}."
    try:
        return radgraph.RadGraph(), ""
    except Exception as exc:  # missing model files, no network: the rest of the report stands
        return None, f"RadGraph F1 not computed: the radgraph model could not load ({exc}); {INSTALL}."


def unavailable() -> str:
    """Why RadGraph F1 cannot be computed here, or "" when it can."""
    return _annotator()[1]


@functools.lru_cache(maxsize=4096)  # reports are re-scored per category and per rebuild
def _facts(text: str) -> tuple[Fact, ...]:
    annotator, _ = _annotator()
    annotation = annotator([text]) if text.strip() else {}
    return tuple(graph_facts(next(iter(annotation.values()), {}))) if annotation else ()


def radgraph_scores(predictions: Sequence[str], references: Sequence[str]) -> list[float] | None:
    """Per-report RadGraph F1, or None when the radgraph package or its model is missing."""
    if unavailable():
        return None
    return [report_f1(_facts(p), _facts(r)) for p, r in zip(predictions, references, strict=True)]
