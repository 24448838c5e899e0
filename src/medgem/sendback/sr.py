"""An answer as a DICOM Comprehensive SR (highdicom) in the source study: the answer text, the
model, the intended-use caveat, the review state and the audit id as TEXT items; every instance
the model saw as an IMAGE reference; each ``box_2d`` box as a POLYLINE SCOORD on its image.

The patient and study modules come from the source instances' original headers (kept in memory
by the fetch), so the report files beside the images it describes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from medgem.errors import require

#: Codes of the report's items (DCM and LOINC where the standard has one; 99MEDGEM, a private
#: coding scheme as PS3.16 allows, for what it has not).
_LOCAL = "99MEDGEM"


def _codes() -> dict[str, Any]:
    hd: Any = require("highdicom", "pacs", "Writing DICOM structured reports")
    concept = hd.sr.CodedConcept
    return {
        "title": concept("18748-4", "LN", "Diagnostic imaging report"),
        "finding": concept("121071", "DCM", "Finding"),
        "caveat": concept("121106", "DCM", "Comment"),
        "algorithm": concept("111001", "DCM", "Algorithm Name"),
        "version": concept("111003", "DCM", "Algorithm Version"),
        "audit": concept("AUDIT", _LOCAL, "Audit record id"),
        "review": concept("REVIEW", _LOCAL, "Review status"),
        "source": concept("SOURCE", _LOCAL, "Image given to the model"),
        "region": concept("111030", "DCM", "Image Region"),
        "label": concept("LABEL", _LOCAL, "Localized finding"),
    }


def report_sr(headers: Sequence[Any], *, answer: str, model: str, model_version: str, caveat: str,
              audit_id: str | None, reviewed: str | None,
              boxes: Sequence[tuple[str, float, float, float, float]] = (),
              box_instance: int = 0, reviewer: str | None = None) -> Any:
    """The SR dataset.

    Args:
        headers: the source instances' original headers (pixel data removed), in prompt order.
        answer: the answer text.
        model: the model id; ``model_version`` its revision/engine.
        caveat: the intended-use caveat.
        audit_id: the answer's audit record id.
        reviewed: who reviewed it and their verdict, or None (the SR says "not reviewed" and
            is marked unverified).
        boxes: (label, x0, y0, x1, y1) in the pixels of ``headers[box_instance]``.
        reviewer: the clinician who reviewed it, the SR's verifying observer (default: the
            part of ``reviewed`` before its first colon).

    Returns:
        A highdicom ``ComprehensiveSR`` (a pydicom Dataset), new series in the source study.
    """
    import numpy as np

    hd: Any = require("highdicom", "pacs", "Writing DICOM structured reports")
    codes = _codes()
    R = hd.sr.RelationshipTypeValues
    texts = {"finding": answer or "(empty answer)", "caveat": caveat or "no caveat",
             "algorithm": model, "version": model_version or "unknown",
             "review": reviewed or "not reviewed by a clinician (preliminary)",
             "audit": audit_id or None}  # no audit item for an answer without a record
    items: list[Any] = [hd.sr.TextContentItem(codes[name], text, relationship_type=R.CONTAINS)
                        for name, text in texts.items() if text is not None]
    for ds in headers:
        items.append(hd.sr.ImageContentItem(codes["source"], ds.SOPClassUID, ds.SOPInstanceUID,
                                            relationship_type=R.CONTAINS))
    target: Any = headers[box_instance] if headers else None
    for label, x0, y0, x1, y1 in boxes if target is not None else ():
        polyline = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=float)
        scoord = hd.sr.ScoordContentItem(codes["region"], hd.sr.GraphicTypeValues.POLYLINE, polyline,
                                         relationship_type=R.INFERRED_FROM)
        scoord.ContentSequence = hd.sr.ContentSequence([hd.sr.ImageContentItem(
            codes["source"], target.SOPClassUID, target.SOPInstanceUID,
            relationship_type=R.SELECTED_FROM)])
        text = hd.sr.TextContentItem(codes["label"], label or "box", relationship_type=R.CONTAINS)
        text.ContentSequence = hd.sr.ContentSequence([scoord])
        items.append(text)
    root = hd.sr.ContainerContentItem(codes["title"])
    root.ContentSequence = hd.sr.ContentSequence(items)
    sr = hd.sr.ComprehensiveSR(
        evidence=list(headers), content=root, series_instance_uid=hd.UID(), series_number=990,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="medgem",
        is_complete=True, is_final=False, is_verified=reviewed is not None,
        verifying_observer_name=_observer(reviewed, reviewer), verifying_organization="medgem" if reviewed else None)
    sr.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: answers are not ASCII (found by the tests)
    sr.SeriesDescription = "medgem answer (AI)" + ("" if reviewed else ", preliminary")
    return sr


def _observer(reviewed: str | None, reviewer: str | None) -> str | None:
    """The verifying observer as a DICOM person name: words joined by ``^``, a one-word name
    with a trailing ``^`` (PS3.5 6.2: otherwise it reads as unformatted), at most 64 characters."""
    if reviewed is None:
        return None
    name = "^".join((reviewer or reviewed.split(":")[0]).replace("^", " ").split())[:63] or "reviewer"
    return name if "^" in name else name + "^"
