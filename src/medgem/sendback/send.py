"""Sending an answer back to the PACS it came from, and the rule that guards it: an answer goes
back only once reviewed, unless the operator explicitly allows unreviewed ones; checked before
anything is fetched or generated, so a refusal costs nothing and sends nothing."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import closing
from typing import Any

from medgem.errors import InputError
from medgem.inputs.pacs.connect import open_client
from medgem.inputs.pacs.fetch import FetchedStudy
from medgem.inputs.pacs.reference import uid_hash


class SendBackRefused(InputError):
    """Sending back was asked for where it may not happen (unreviewed, or no PACS study)."""


def check_send_back(*, studies: int, reviewed: bool, allow_unreviewed: bool) -> None:
    """Raise unless an answer about ``studies`` PACS studies may be sent back.

    Raises:
        SendBackRefused: no study from a PACS, more than one, or unreviewed without permission.
    """
    if studies != 1:
        raise SendBackRefused("--send-back needs exactly one --study from a PACS",
                              "ask about one study given with --study")
    if not reviewed and not allow_unreviewed:
        raise SendBackRefused(
            "an answer nobody reviewed is not sent back to the PACS",
            "review it first (medgem audit review ID accept|correct), then send it with "
            "`medgem audit send-back ID --study REF`; or let unreviewed answers go back as "
            "preliminary reports with --send-back-unreviewed")


def send_report(study: FetchedStudy, *, answer: str, model: str, model_version: str, caveat: str,
                audit_id: str | None, reviewed: str | None,
                boxes: Sequence[tuple[str, float, float, float, float]] = (),
                reviewer: str | None = None) -> tuple[Any, dict[str, object]]:
    """Build the SR for ``study`` and store it on the PACS it came from (STOW-RS for DICOMweb,
    C-STORE for DIMSE).

    Returns:
        (the SR dataset, the audit event's body: destination, hashed UIDs, bytes).

    Raises:
        PacsError: the PACS refused it or is down (the SR was built, nothing stored).
    """
    from medgem.sendback.sr import report_sr

    sr = report_sr(study.headers, answer=answer, model=model, model_version=model_version,
                   caveat=caveat, audit_id=audit_id, reviewed=reviewed, boxes=boxes, reviewer=reviewer)
    with closing(open_client(study.reference)) as client:
        client.store(sr)
    body: dict[str, object] = {
        **study.reference.audit_fields(), "series": uid_hash(study.series),
        "report": uid_hash(str(sr.SOPInstanceUID)), "references": [uid_hash(u) for u in study.instances],
        "boxes": len(boxes), "reviewed": reviewed is not None, "bytes": client.bytes_moved,
        "kind": "dicom-sr"}
    return sr, body
