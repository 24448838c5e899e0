"""An answer sent back after a clinician reviewed it, by ``medgem audit send-back`` and by the
server's ``--send-back``.

The audit store says what the answer was about and what the review decided, without holding a
UID: the answer's ``pacs_source`` record keeps the PACS and the hashed study, series and
instance UIDs it saw (what every audit event keeps), and its latest review decides what goes
(accept: the answer; correct: the correction; reject: nothing). A study reference given again
must match those hashes, and the study is found again on the PACS from them. Every send, stored
or failed, is a ``pacs_send`` (or ``fhir_send``) record under the answer, naming the review.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from medgem.errors import InputError
from medgem.inputs.pacs.fetch import FetchedStudy
from medgem.inputs.pacs.reference import StudyReference, uid_hash
from medgem.sendback.send import SendBackRefused, send_report

if TYPE_CHECKING:  # the records are read through the store a surface hands in
    from medgem.audit import AuditRecord, AuditStore

#: The record, under an answer, of the PACS study the answer saw (hashed UIDs only).
SOURCE = "pacs_source"


def source_body(study: FetchedStudy) -> dict[str, object]:
    """What an answer's ``pacs_source`` record keeps of the study it saw: the PACS and the
    hashed study, series and instance UIDs, the instances in prompt order."""
    return {**study.reference.audit_fields(), "series": uid_hash(study.series),
            "instances": [uid_hash(uid) for uid in study.instances]}


def record_sources(store: AuditStore, answer_id: str, studies: Sequence[FetchedStudy]) -> None:
    """One ``pacs_source`` record per study under the answer's record: the link a later
    send-back follows."""
    for study in studies:
        store.append(SOURCE, source_body(study), parent=answer_id)


@dataclass(frozen=True)
class Decision:
    """What goes back for an answer, as its review decided.

    Attributes:
        text: the answer, or the reviewer's correction.
        review_id: the review record that decided it; None for an unreviewed answer.
        verdict: "accept" or "correct"; None when unreviewed.
        reviewer: who reviewed it.
    """

    text: str
    review_id: str | None = None
    verdict: str | None = None
    reviewer: str | None = None

    @property
    def reviewed(self) -> str | None:
        """The review as the report says it ("dr.who: corrected (review …)"), or None."""
        if self.review_id is None:
            return None
        done = "accepted" if self.verdict == "accept" else "corrected"
        return f"{self.reviewer}: {done} (audit review {self.review_id})"


def answer_record(store: AuditStore, answer_id: str) -> AuditRecord:
    """The answer's record.

    Raises:
        InputError: no answer record with that id.
    """
    record = store.get(answer_id)
    if record is None or record.kind != "answer":
        raise InputError(f"no answer record '{answer_id}'", "see `medgem audit list --kind answer`")
    return record


def decide(store: AuditStore, answer: AuditRecord, *, allow_unreviewed: bool) -> Decision:
    """What goes back for ``answer``: its latest review stands (a correction after an accept
    is what the clinician last said).

    Raises:
        SendBackRefused: no review and unreviewed answers not allowed, or the latest review
            rejected it.
    """
    reviews = [r for r in store.children(answer.id) if r.kind == "review"]
    if not reviews:
        if not allow_unreviewed:
            raise SendBackRefused(
                f"answer {answer.id} was not reviewed, so it is not sent back",
                "review it first (medgem audit review ID accept|correct --reviewer NAME), or send "
                "it as a preliminary, unverified report with --allow-unreviewed")
        return Decision(str(answer.body.get("output") or ""))
    latest = reviews[-1].body
    reviewer = str(latest.get("reviewer") or latest.get("user") or "reviewer")
    if latest.get("verdict") == "reject":
        raise SendBackRefused(f"answer {answer.id} was rejected by {reviewer}, so it is not sent back",
                              "nothing goes to the PACS for a rejected answer; ask again")
    text = latest.get("correction") if latest.get("verdict") == "correct" else answer.body.get("output")
    return Decision(str(text or ""), reviews[-1].id, str(latest.get("verdict")), reviewer)


def source_of(store: AuditStore, answer: AuditRecord) -> AuditRecord:
    """The ``pacs_source`` record of the one PACS study the answer saw.

    Raises:
        SendBackRefused: the answer was about no PACS study, or about several.
    """
    sources = [r for r in store.children(answer.id) if r.kind == SOURCE]
    if not sources:
        raise SendBackRefused(
            f"answer {answer.id} was not about a study from a PACS (its record names none), so "
            "there is nowhere to send it back",
            "send back answers to `medgem ask --study` or to image_dicom questions")
    if len(sources) > 1:
        raise SendBackRefused(f"answer {answer.id} was about {len(sources)} PACS studies; a report "
                              "goes back about one", "ask about one study to send the answer back")
    return sources[0]


def check_reference(source: AuditRecord, reference: StudyReference) -> None:
    """Refuse a study reference other than the one the answer saw: another study or series
    (their hashes differ from the record's) or another PACS than the images came from.

    Raises:
        SendBackRefused: the reference does not match the record.
    """
    body = source.body
    if uid_hash(reference.study) != body.get("study"):
        raise SendBackRefused(f"--study names another study than the one answer {source.parent} was about",
                              "give the --study the question was asked about")
    if reference.series and uid_hash(reference.series) != body.get("series"):
        raise SendBackRefused(f"--study names another series than the one answer {source.parent} saw",
                              "give the study, or the series the answer saw")
    if (reference.protocol, reference.where) != (body.get("protocol"), body.get("pacs")):
        raise SendBackRefused(f"answer {source.parent}'s images came from {body.get('pacs')}, not "
                              f"{reference.where}", "a report goes back to the PACS its images came "
                              "from: give the --study as the question was asked")


def _boxes(text: str, study: FetchedStudy) -> list[tuple[str, float, float, float, float]]:
    """``box_2d`` boxes in the text, in the pixels of the one image the answer saw (none for
    a series: the model's boxes name no slice)."""
    from medgem.answer.boxes import parse_boxes

    if len(study.headers) != 1:
        return []
    header = study.headers[0]
    size = (int(header.get("Columns") or 0), int(header.get("Rows") or 0))
    if min(size) <= 0:
        return []
    return [(b.label, b.x0, b.y0, b.x1, b.y1) for b in parse_boxes(text, size)]


def send_sr(store: AuditStore, answer: AuditRecord, study: FetchedStudy, decision: Decision, *,
            user: str, endpoint: str) -> tuple[Any, AuditRecord]:
    """Store the decided text as a DICOM SR on the study's PACS, the reviewer as its verifying
    observer, and record the send under the answer.

    Returns:
        (the SR dataset, the ``pacs_send`` record).

    Raises:
        PacsError: the PACS refused it or is down; the failure was recorded first (its id is
            the error's ``audit_id``).
    """
    model = answer.body.get("model") or {}
    facts: dict[str, object] = {"user": user, "endpoint": endpoint, "review": decision.review_id,
                                "verdict": decision.verdict}
    try:
        sr, body = send_report(
            study, answer=decision.text, model=str(model.get("id") or "unknown"),
            model_version=f"{model.get('revision') or 'unknown'} ({model.get('engine') or 'unknown'})",
            caveat=str(answer.body.get("caveat") or ""), audit_id=answer.id, reviewed=decision.reviewed,
            boxes=_boxes(decision.text, study), reviewer=decision.reviewer)
    except Exception as exc:
        failed = store.append("pacs_send", {**facts, **study.reference.audit_fields(), "kind": "dicom-sr",
                                            "status": "failed", "error": str(exc)}, parent=answer.id)
        exc.audit_id = failed.id  # type: ignore[attr-defined]
        raise
    return sr, store.append("pacs_send", {**facts, **body, "status": "stored"}, parent=answer.id)


def send_fhir(store: AuditStore, answer: AuditRecord, study_uid: str, decision: Decision, *,
              patient_url: str, token: str | None, timeout: float, user: str,
              endpoint: str) -> AuditRecord:
    """POST the decided text as a preliminary DiagnosticReport (the reviewer as its results
    interpreter) to the FHIR server the patient is on, and record it under the answer.

    Raises:
        PacsError: the FHIR server refused it or is down (recorded first).
    """
    import re

    from medgem.sendback.fhir_report import diagnostic_report, post_report

    patient = re.sub(r"^.*/Patient/([^/]+)/?$", r"\1", patient_url.strip())
    report = diagnostic_report(patient=patient, study_uid=study_uid, answer=decision.text,
                               model=str((answer.body.get("model") or {}).get("id") or "unknown"),
                               caveat=str(answer.body.get("caveat") or ""), audit_id=answer.id,
                               reviewed=decision.reviewed, reviewer=decision.reviewer)
    facts: dict[str, object] = {"user": user, "endpoint": endpoint, "review": decision.review_id,
                                "verdict": decision.verdict}
    try:
        body = post_report(patient_url, report, token=token, timeout=timeout)
    except Exception as exc:
        store.append("fhir_send", {**facts, "kind": "fhir-diagnostic-report", "status": "failed",
                                   "error": str(exc)}, parent=answer.id)
        raise
    return store.append("fhir_send", {**facts, **body}, parent=answer.id)
