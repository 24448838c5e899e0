"""Patient context from FHIR R4: a bundle file or a FHIR server's ``Patient/ID`` -> the
resources validated by ``fhir.resources`` -> one cited line each -> the most relevant lines
that fit the budget, rendered before the question.

Each line starts with its resource id (``[Condition/c1]``) so the answer and the audit trail can
cite what the model was given. Names, identifiers, addresses and contact details are never
rendered: only the record's clinical content (gender and birth date of the patient).

Relevance, for trimming: reports and active problems first, then active medications, then
observations, each raised by the words it shares with the question and, within a kind, by
recency. What is kept is rendered by kind, oldest first, as the EHR notebooks lay it out.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from medgem.errors import PacsError, require

#: The resource types read from a FHIR server for one patient, with the section they go in and
#: the fields holding their date (first present wins).
KINDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "Patient": ("Patient", ()),
    "Condition": ("Conditions", ("onsetDateTime", "recordedDate")),
    "MedicationRequest": ("Medications", ("authoredOn",)),
    "Observation": ("Observations", ("effectiveDateTime", "issued")),
    "DiagnosticReport": ("Reports", ("effectiveDateTime", "issued")),
}
#: Base relevance by kind (higher first): what a reader of a new image wants to know first.
_WEIGHT = {"Patient": 100.0, "DiagnosticReport": 6.0, "Condition": 5.0, "MedicationRequest": 3.0,
           "Observation": 2.0}
_WORD = re.compile(r"[a-z]{4,}")


@dataclass(frozen=True)
class RecordLine:
    """One resource as the model reads it.

    Attributes:
        ref: its id as cited (``Condition/c1``).
        kind: its resource type.
        date: its ISO date (YYYY-MM-DD) or "".
        text: the line without the id (no names or identifiers).
        active: whether its status says it is current (active conditions and medications,
            final reports and observations).
    """

    ref: str
    kind: str
    date: str
    text: str
    active: bool

    def render(self) -> str:
        return f"- [{self.ref}] {self.date + ': ' if self.date else ''}{self.text}"


@dataclass(frozen=True)
class PatientContext:
    """What goes into the prompt and what it cites.

    Attributes:
        text: the rendered record (empty when nothing fits).
        cited: the resource ids rendered, most relevant first.
        total: how many resources the record had.
        source: where it came from, for messages (a file name or the server's URL, no ids).
    """

    text: str
    cited: tuple[str, ...]
    total: int
    source: str

    def prompt(self, question: str) -> str:
        """The question with the record before it."""
        if not self.text:
            return question
        return (f"Patient record (FHIR R4; each line starts with its resource id, cite it when you "
                f"use it; {len(self.cited)} of {self.total} resources, most relevant kept):\n"
                f"{self.text}\n\n{question}")

    def audit_fields(self) -> dict[str, object]:
        return {"source": self.source, "cited": list(self.cited), "total": self.total}


def server_origin(url: str) -> str:
    """A FHIR server as messages and the audit trail name it: scheme and host, no patient id."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _not_fhir(where: str, why: str) -> PacsError:
    return PacsError(f"{where} is not a FHIR R4 record ({why})",
                     'give a FHIR Bundle (JSON with "resourceType": "Bundle") or a FHIR server\'s '
                     "https://HOST/fhir/Patient/ID")


def _models() -> Any:
    return require("fhir.resources.R4B", "pacs", "Reading FHIR R4 patient records", "fhir.resources")


def parse_resources(data: Any, where: str) -> list[Any]:
    """A Bundle's (or one resource's) entries as validated ``fhir.resources`` R4 models.

    Raises:
        PacsError: not JSON FHIR, or a resource that fails FHIR R4 validation.
    """
    from pydantic import ValidationError

    r4: Any = _models()
    if not isinstance(data, dict) or "resourceType" not in data:
        raise _not_fhir(where, "no resourceType")
    try:
        if data["resourceType"] == "Bundle":
            bundle = r4.get_fhir_model_class("Bundle").model_validate(data)
            return [entry.resource for entry in bundle.entry or [] if entry.resource is not None]
        return [r4.get_fhir_model_class(str(data["resourceType"])).model_validate(data)]
    except (KeyError, ValueError) as exc:
        if isinstance(exc, ValidationError):
            first = exc.errors()[0]
            place = ".".join(str(p) for p in first["loc"][:4])
            raise _not_fhir(where, f"{place}: {first['msg'][:80]}") from None
        raise _not_fhir(where, f"unknown resourceType {str(data['resourceType'])[:40]!r}") from None


def _concept(concept: Any) -> str:
    if concept is None:
        return ""
    if getattr(concept, "text", None):
        return str(concept.text)
    for coding in getattr(concept, "coding", None) or []:
        if coding.display or coding.code:
            return str(coding.display or coding.code)
    return ""


def _date(resource: Any, fields: tuple[str, ...]) -> str:
    for name in fields:
        value = getattr(resource, name, None)
        if value:
            return str(value)[:10]
    return ""


def to_line(resource: Any) -> RecordLine | None:
    """One resource as a cited line, or None for kinds not rendered."""
    kind = resource.get_resource_type()
    if kind not in KINDS:
        return None
    ref = f"{kind}/{resource.id or '?'}"
    fields = KINDS[kind][1]
    if kind == "Patient":
        parts = [f"gender {resource.gender}" if resource.gender else "",
                 f"born {resource.birthDate}" if resource.birthDate else ""]
        return RecordLine(ref, kind, "", ", ".join(p for p in parts if p) or "no demographics", True)
    status = ""
    if kind == "Condition":
        what, status = _concept(resource.code), _concept(resource.clinicalStatus)
    elif kind == "MedicationRequest":
        what = _concept(getattr(resource, "medicationCodeableConcept", None)) or "medication"
        status = str(resource.status or "")
        dose = "; ".join(d.text for d in resource.dosageInstruction or [] if d.text)
        what += f"; {dose}" if dose else ""
    elif kind == "Observation":
        what, status = _concept(resource.code), str(resource.status or "")
        quantity = getattr(resource, "valueQuantity", None)
        if quantity is not None:
            what += f": {quantity.value:g} {quantity.unit or quantity.code or ''}".rstrip()
        elif getattr(resource, "valueString", None):
            what += f": {resource.valueString}"
        elif getattr(resource, "valueCodeableConcept", None):
            what += f": {_concept(resource.valueCodeableConcept)}"
        flags = ", ".join(_concept(i) for i in resource.interpretation or [])
        what += f" ({flags})" if flags else ""
    else:  # DiagnosticReport
        what, status = _concept(resource.code), str(resource.status or "")
        if resource.conclusion:
            what += f": {resource.conclusion}"
    active = status.lower() in ("active", "final", "amended", "corrected", "recurrence", "relapse")
    text = what + (f" [{status}]" if status else "")
    return RecordLine(ref, kind, _date(resource, fields), " ".join(text.split()), active)


def _score(line: RecordLine, words: set[str]) -> float:
    overlap = len(words & set(_WORD.findall(line.text.lower())))
    standing = 0.0
    if line.kind in ("Condition", "MedicationRequest"):  # a resolved problem, a stopped drug
        standing = 2.0 if line.active else -3.0
    return _WEIGHT.get(line.kind, 1.0) + standing + 3.0 * overlap


def patient_context(lines: Sequence[RecordLine], question: str, budget_chars: int,
                    source: str) -> PatientContext:
    """The most relevant lines that fit ``budget_chars``, rendered by kind (oldest first).

    Args:
        lines: every resource's line.
        question: the question, whose words raise the lines that share them.
        budget_chars: most characters of record text (about 4 per token).
        source: where the record came from, for messages and the audit trail.
    """
    words = set(_WORD.findall(question.lower()))
    ranked = sorted(lines, key=lambda line: (-_score(line, words), line.date == "", _neg(line.date)))
    kept: list[RecordLine] = []
    used = 0
    for line in ranked:
        cost = len(line.render()) + 1
        if used + cost > budget_chars:
            continue
        kept.append(line)
        used += cost
    order = list(dict.fromkeys(section for section, _ in KINDS.values()))
    blocks = []
    for section in order:
        members = sorted((line for line in kept if KINDS[line.kind][0] == section), key=lambda x: x.date)
        if members:
            blocks.append(f"{section}:\n" + "\n".join(line.render() for line in members))
    return PatientContext("\n".join(blocks), tuple(line.ref for line in kept), len(lines), source)


def _neg(date: str) -> str:
    """A sort key that puts later ISO dates first."""
    return "".join(chr(0x10FFFF - ord(c)) for c in date)


def read_bundle(path: Path) -> list[RecordLine]:
    """A bundle file's resources as lines.

    Raises:
        PacsError: missing, not JSON, or not FHIR R4.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PacsError(f"no FHIR record at '{path}'", "check the path") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _not_fhir(path.name, f"not JSON: {str(exc)[:60]}") from None
    return [line for r in parse_resources(data, path.name) if (line := to_line(r)) is not None]


def read_patient(url: str, token: str | None = None, timeout: float = 30.0,
                 max_pages: int = 20) -> list[RecordLine]:
    """A FHIR server's ``…/Patient/ID``: the patient, then each kind in ``KINDS`` searched by
    ``patient=ID`` (``_count=100``, following ``next`` links up to ``max_pages``).

    Raises:
        PacsError: not a Patient URL, the server down/slow (bounded by ``timeout``), 401/403,
            404, or answers that are not FHIR.
    """
    import requests

    match = re.match(r"^(https?://[^?#]+?)/Patient/([A-Za-z0-9\-.]{1,64})/?$", url.strip())
    if not match:
        raise PacsError(f"'{url[:80]}' is not a FHIR Patient URL", "give https://HOST/fhir/Patient/ID")
    base, patient = match.groups()
    where = server_origin(base)
    session = requests.Session()
    session.headers["Accept"] = "application/fhir+json"
    if token:
        session.headers["Authorization"] = f"Bearer {token}"

    def get(address: str, params: dict[str, str] | None = None) -> Any:
        try:
            answer = session.get(address, params=params, timeout=timeout)
        except requests.Timeout:
            raise PacsError(f"{where} did not answer within {timeout:g} s",
                            "check that the FHIR server is up") from None
        except requests.ConnectionError:
            raise PacsError(f"cannot reach the FHIR server {where}", "check the URL and that it is up") from None
        if answer.status_code in (401, 403):
            raise PacsError(f"{where} refused medgem ({answer.status_code})",
                            "pass a valid token with --fhir-token (or fhir_token in the config file)")
        if answer.status_code == 404:
            raise PacsError(f"{where} has no such patient (404)", "check the Patient id")
        if answer.status_code >= 400:
            raise PacsError(f"{where} answered {answer.status_code}", "check the FHIR server")
        try:
            return answer.json()
        except ValueError:
            raise _not_fhir(where, "the answer is not JSON") from None

    resources = parse_resources(get(f"{base}/Patient/{patient}"), where)
    for kind in KINDS:
        if kind == "Patient":
            continue
        address: str | None = f"{base}/{kind}"
        params: dict[str, str] | None = {"patient": patient, "_count": "100"}
        for _ in range(max_pages):
            if address is None:
                break
            page = get(address, params)
            resources += parse_resources(page, where)
            address = next((link.get("url") for link in page.get("link") or []
                            if link.get("relation") == "next"), None)
            params = None  # the next link carries its own query
    session.close()
    return [line for r in resources if (line := to_line(r)) is not None]


def load_context(source: str, question: str, *, token: str | None = None, timeout: float = 30.0,
                 budget_chars: int = 6000) -> PatientContext:
    """``--fhir SOURCE`` (a bundle file or a Patient URL) as the prompt's patient context."""
    if source.startswith(("http://", "https://")):
        lines = read_patient(source, token, timeout)
        shown = server_origin(source)
    else:
        lines = read_bundle(Path(source).expanduser())
        shown = Path(source).name
    return patient_context(lines, question, budget_chars, shown)
