"""What ``medgem inspect`` reports: the prepared input's PHI-free facts, or the series on offer."""

from __future__ import annotations

from pathlib import Path

from medgem.errors import ImageInputError
from medgem.inputs.options import ImagingOptions, MedicalInput
from medgem.inputs.preview import MODEL_IMAGE_SIDE
from medgem.inputs.readers import READERS, detect_format, read_chosen_series
from medgem.inputs.series import Series, folder_headers, group_series, zip_headers


def describe_sent(item: MedicalInput) -> str:
    """One line on what goes to the model, e.g. "85 RGB images 512x512 (resized to 896x896 by the
    model's processor), each followed by SLICE n"."""
    first = item.images[0]
    count = len(item.images)
    noun = "image" if count == 1 else "images"
    marker = "FRAME" if item.metadata.get("sequence") == "frames" else "SLICE"
    tail = {"volume": f", each followed by {marker} n",
            "slide": " after the pathology instruction, in reading order",
            "document": ", one per page in order"}.get(item.kind, "")
    if item.text:
        tail += f", plus {len(item.text)} characters of the PDF's text"
    return (f"{count} RGB {noun} {first.width}x{first.height} (resized to "
            f"{MODEL_IMAGE_SIDE}x{MODEL_IMAGE_SIDE} by the model's processor){tail}")


def item_report(item: MedicalInput) -> dict[str, object]:
    """The PHI-free facts ``medgem inspect`` prints about a prepared input (local or fetched)."""
    return {"kind": item.kind, "modality": item.modality, "description": item.description,
            "sends": describe_sent(item), "metadata": item.metadata,
            "study_date_present": item.study_date is not None, "warnings": list(item.warnings)}


def series_report(series: list[Series]) -> list[dict[str, object]]:
    """PHI-free rows for a series listing (short UID only)."""
    return [
        {"series": s.short_uid, "number": s.number, "modality": s.modality or None,
         "slices": len(s.members), "description": s.description or None}
        for s in series
    ]


def inspect_input(path: str | Path, options: ImagingOptions | None = None) -> tuple[dict[str, object], MedicalInput | None]:
    """Prepare ``path`` as the model would and report it; several series without a choice are
    listed instead (no error).

    Returns:
        (report dict safe to print or write as JSON — no names, IDs, dates or full UIDs, the
        prepared input or None when only series were listed).

    Raises:
        ImageInputError: for unreadable input.
    """
    path = Path(path)
    options = options or ImagingOptions()
    if not path.exists():
        raise ImageInputError(f"no image at '{path}': the path does not exist", "check the path")
    kind = detect_format(path)
    report: dict[str, object] = {"source": path.name, "format": kind}
    if kind not in ("dicom-folder", "dicom-zip"):
        item = READERS[kind](path, options)
    else:  # each header read once: for the listing and for the series chosen
        headers = (folder_headers if kind == "dicom-folder" else zip_headers)(path, options)
        series = group_series(headers)
        if len(series) > 1:
            report["series"] = series_report(series)
            if options.series is None:
                report["choose"] = "several series: pass --series UID (the short UID shown is enough)"
                return report, None
        item = read_chosen_series(headers, options, path.name)
    report.update(item_report(item))
    return report, item
