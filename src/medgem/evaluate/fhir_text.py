"""A FHIR R4 bundle as the plain-text patient record the model reads (EHRQA questions).

One line per resource, grouped by kind and in date order within a kind: demographics, problems,
medications, allergies, observations, procedures, encounters, reports, immunizations; other
resource types are listed by their coded text. Names, identifiers, addresses and contact details
are never rendered: the questions are about the record's clinical content, and the text goes
into prompts and audit hashes.
"""

from __future__ import annotations

from typing import Any

from medgem.errors import InputError

#: Resource type -> (section heading, fields holding its date, in order of preference).
SECTIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "Patient": ("Patient", ()),
    "Condition": ("Conditions", ("onsetDateTime", "recordedDate")),
    "MedicationRequest": ("Medications", ("authoredOn",)),
    "MedicationStatement": ("Medications", ("effectiveDateTime", "dateAsserted")),
    "AllergyIntolerance": ("Allergies", ("recordedDate", "onsetDateTime")),
    "Observation": ("Observations", ("effectiveDateTime", "issued")),
    "Procedure": ("Procedures", ("performedDateTime",)),
    "Encounter": ("Encounters", ()),
    "DiagnosticReport": ("Reports", ("effectiveDateTime", "issued")),
    "Immunization": ("Immunizations", ("occurrenceDateTime",)),
}


def concept_text(concept: Any) -> str:
    """A CodeableConcept's words: its text, else its first coding's display, else its code."""
    if not isinstance(concept, dict):
        return str(concept) if concept else ""
    if concept.get("text"):
        return str(concept["text"])
    for coding in concept.get("coding") or []:
        if isinstance(coding, dict) and (coding.get("display") or coding.get("code")):
            return str(coding.get("display") or coding.get("code"))
    return ""


def _value(resource: dict[str, Any]) -> str:
    quantity = resource.get("valueQuantity")
    if isinstance(quantity, dict):
        return f"{quantity.get('value', '')} {quantity.get('unit') or quantity.get('code') or ''}".strip()
    for key in ("valueString", "valueBoolean", "valueInteger", "valueDateTime"):
        if key in resource:
            return str(resource[key])
    return concept_text(resource.get("valueCodeableConcept"))


def _date(resource: dict[str, Any], fields: tuple[str, ...]) -> str:
    for field in fields:
        if resource.get(field):
            return str(resource[field])[:10]
    period = resource.get("period") or resource.get("performedPeriod") or {}
    return str(period.get("start", ""))[:10] if isinstance(period, dict) else ""


def _status(resource: dict[str, Any]) -> str:
    status = resource.get("clinicalStatus") or resource.get("status")
    return concept_text(status) if isinstance(status, dict) else str(status or "")


def resource_line(resource: dict[str, Any]) -> str:
    """One resource as one line of text (no names or identifiers)."""
    kind = str(resource.get("resourceType", ""))
    if kind == "Patient":
        parts = [f"gender {resource['gender']}" if resource.get("gender") else "",
                 f"born {resource['birthDate']}" if resource.get("birthDate") else "",
                 f"deceased {resource['deceasedDateTime'][:10]}" if resource.get("deceasedDateTime") else ""]
        return ", ".join(p for p in parts if p) or "no demographics"
    kinds = resource.get("type")
    what = concept_text(resource.get("code") or resource.get("medicationCodeableConcept")
                        or resource.get("vaccineCode")
                        or (kinds[0] if isinstance(kinds, list) and kinds else kinds))
    details = [_value(resource) if kind == "Observation" else ""]
    details += [concept_text(i) for i in resource.get("interpretation") or []]
    details += [str(d.get("text", "")) for d in resource.get("dosageInstruction") or [] if isinstance(d, dict)]
    details += [concept_text(m) for r in resource.get("reaction") or [] if isinstance(r, dict)
                for m in r.get("manifestation") or []]
    details += [str(resource.get("conclusion") or ""), _status(resource)]
    line = (what or kind) + "".join(f"; {d}" for d in details if d)
    date = _date(resource, SECTIONS.get(kind, ("", ()))[1])
    return f"{date}: {line}" if date else line


def render_bundle(bundle: Any) -> str:
    """The bundle's resources as a sectioned text record.

    Raises:
        InputError: not a FHIR Bundle (a JSON object with resourceType "Bundle").
    """
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise InputError("the patient record is not a FHIR Bundle",
                         'give a JSON object with "resourceType": "Bundle" and its "entry" list')
    sections: dict[str, list[tuple[str, str]]] = {}
    for entry in bundle.get("entry") or []:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict):
            continue
        kind = str(resource.get("resourceType", "Other"))
        heading, fields = SECTIONS.get(kind, (kind, ()))
        sections.setdefault(heading, []).append((_date(resource, fields), resource_line(resource)))
    order = list(dict.fromkeys(h for h, _ in SECTIONS.values()))
    headings = sorted(sections, key=lambda h: (order.index(h) if h in order else len(order), h))
    blocks = [f"{h}:\n" + "\n".join(f"- {line}" for _, line in sorted(sections[h], key=lambda x: x[0]))
              for h in headings]
    return "\n\n".join(blocks)
