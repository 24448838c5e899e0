"""A Synthea-style FHIR R4 patient record built with fhir.resources (R4B models), and a
loopback FHIR REST server that serves its resources with FHIR search semantics
(``GET [base]/Patient/ID``, ``GET [base]/KIND?patient=ID&_count=N`` as searchset bundles with
``next`` links, bearer-token checks)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

#: The patient's name and MRN: planted so tests can check they never reach a prompt.
NAME = {"family": "Quincy", "given": ["Jane"]}
MRN = "MRN-99887766"


def synthea_bundle(observations: int = 40) -> dict[str, Any]:
    """Patient p1 with conditions, medications, many observations and two imaging reports."""
    from fhir.resources.R4B.bundle import Bundle
    from fhir.resources.R4B.condition import Condition
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport
    from fhir.resources.R4B.medicationrequest import MedicationRequest
    from fhir.resources.R4B.observation import Observation
    from fhir.resources.R4B.patient import Patient

    def code(text: str, system: str = "http://snomed.info/sct", value: str = "0") -> dict[str, Any]:
        return {"coding": [{"system": system, "code": value, "display": text}], "text": text}

    subject = {"reference": "Patient/p1"}
    active = code("Active", "http://terminology.hl7.org/CodeSystem/condition-clinical", "active")
    resolved = code("Resolved", "http://terminology.hl7.org/CodeSystem/condition-clinical", "resolved")
    resources: list[Any] = [
        Patient(id="p1", gender="female", birthDate="1951-04-17", name=[NAME],
                identifier=[{"system": "urn:mrn", "value": MRN}],
                address=[{"line": ["12 Elm Street"], "city": "Springfield"}]),
        Condition(id="c-copd", subject=subject, clinicalStatus=active,
                  code=code("Chronic obstructive pulmonary disease", value="13645005"),
                  onsetDateTime="2015-03-02"),
        Condition(id="c-htn", subject=subject, clinicalStatus=active,
                  code=code("Essential hypertension", value="59621000"), onsetDateTime="2010-06-11"),
        Condition(id="c-ankle", subject=subject, clinicalStatus=resolved,
                  code=code("Sprain of ankle", value="44465007"), onsetDateTime="2001-01-05"),
        MedicationRequest(id="m-tiotropium", status="active", intent="order", subject=subject,
                          medicationCodeableConcept=code("Tiotropium 18 MCG inhalation capsule",
                                                         "http://www.nlm.nih.gov/research/umls/rxnorm", "485032"),
                          authoredOn="2015-03-10", dosageInstruction=[{"text": "one capsule daily"}]),
        MedicationRequest(id="m-amox", status="completed", intent="order", subject=subject,
                          medicationCodeableConcept=code("Amoxicillin 500 MG", "http://www.nlm.nih.gov/research/umls/rxnorm", "308182"),
                          authoredOn="2019-02-01"),
        DiagnosticReport(id="r-cxr", status="final", subject=subject,
                         code=code("XR Chest 2 views", "http://loinc.org", "36643-5"),
                         effectiveDateTime="2023-01-20",
                         conclusion="Hyperinflated lungs; no focal consolidation."),
        DiagnosticReport(id="r-ct", status="final", subject=subject,
                         code=code("CT Chest without contrast", "http://loinc.org", "30745-4"),
                         effectiveDateTime="2023-03-14", conclusion="Centrilobular emphysema, upper lobes."),
    ]
    for n in range(observations):
        resources.append(Observation(
            id=f"o-{n}", status="final", subject=subject,
            code=code("Oxygen saturation" if n % 2 else "Body weight", "http://loinc.org",
                      "59408-5" if n % 2 else "29463-7"),
            effectiveDateTime=f"20{10 + n // 12:02d}-{n % 12 + 1:02d}-01",
            valueQuantity={"value": 90 + n % 7 if n % 2 else 70 + n % 5,
                           "unit": "%" if n % 2 else "kg"}))
    bundle = Bundle(type="collection", entry=[{"fullUrl": f"urn:uuid:{r.id}", "resource": r}
                                              for r in resources])
    return json.loads(bundle.model_dump_json(exclude_none=True))


class _Handler(BaseHTTPRequestHandler):
    resources: ClassVar[list[dict[str, Any]]] = []
    token: ClassVar[str | None] = None
    seen: ClassVar[list[str]] = []
    posted: ClassVar[list[dict[str, Any]]] = []

    def _json(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self.seen.append(self.path)
        if self.token and self.headers.get("Authorization") != f"Bearer {self.token}":
            self._json(401, {"resourceType": "OperationOutcome", "issue": [
                {"severity": "error", "code": "login"}]})
            return
        parts = urlsplit(self.path)
        pieces = [p for p in parts.path.split("/") if p][1:]  # drop the "fhir" base
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        if len(pieces) == 2:
            found = [r for r in self.resources if r["resourceType"] == pieces[0] and r["id"] == pieces[1]]
            self._json(200 if found else 404, found[0] if found else {"resourceType": "OperationOutcome"})
            return
        if len(pieces) == 1:
            matching = [r for r in self.resources if r["resourceType"] == pieces[0]
                        and r.get("subject", {}).get("reference") == f"Patient/{query.get('patient')}"]
            count, offset = int(query.get("_count", "100")), int(query.get("_offset", "0"))
            page = matching[offset:offset + count]
            links = [{"relation": "self", "url": self.path}]
            if offset + count < len(matching):
                base = f"http://{self.headers['Host']}{parts.path}"
                links.append({"relation": "next", "url": f"{base}?patient={query.get('patient')}"
                              f"&_count={count}&_offset={offset + count}"})
            self._json(200, {"resourceType": "Bundle", "type": "searchset", "total": len(matching),
                             "link": links, "entry": [{"resource": r} for r in page]})
            return
        self._json(404, {"resourceType": "OperationOutcome"})

    def do_POST(self) -> None:
        if self.token and self.headers.get("Authorization") != f"Bearer {self.token}":
            self._json(401, {"resourceType": "OperationOutcome"})
            return
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        kind = urlsplit(self.path).path.rstrip("/").rsplit("/", 1)[-1]
        body["id"] = f"{kind.lower()}-{len(self.posted) + 1}"
        self.posted.append(body)
        data = json.dumps(body).encode()
        self.send_response(201)
        self.send_header("Location", f"http://{self.headers['Host']}/fhir/{kind}/{body['id']}/_history/1")
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        return None


def serve_fhir(bundle: dict[str, Any], token: str | None = None,
               posted: list[dict[str, Any]] | None = None) -> Iterator[str]:
    """Serve ``bundle``'s resources on a free loopback port; yields the base URL (…/fhir).
    Resources POSTed to it are appended to ``posted``."""
    handler = type("Handler", (_Handler,), {"resources": [e["resource"] for e in bundle["entry"]],
                                             "token": token, "seen": [],
                                             "posted": posted if posted is not None else []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/fhir"
    finally:
        server.shutdown()
        server.server_close()
