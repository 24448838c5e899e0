"""Answers back to the PACS: a DICOM SR stored on the real Orthanc (STOW-RS and C-STORE) and read
back with its answer, references and boxes intact; refused unless the operator allows
unreviewed answers; every send audited; nothing stored on error."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import run_cli
from medgem.errors import PacsError
from medgem.inputs import read_inputs
from medgem.inputs.pacs import parse_study_reference, uid_hash
from medgem.sendback import diagnostic_report, send_report
from pacs_fixtures import Orthanc, free_port, stored_reports


def _content(ds: Any) -> dict[str, list[Any]]:
    by_name: dict[str, list[Any]] = {}
    for item in ds.ContentSequence:
        by_name.setdefault(item.ConceptNameCodeSequence[0].CodeMeaning, []).append(item)
    return by_name


def _cr(orthanc: Orthanc, protocol: str = "dicomweb") -> Any:
    uids = orthanc.uids
    path = f"{uids['cr_study']}/series/{uids['cr_series']}/instances/{uids['cr_instance']}"
    text = (f"{orthanc.dicomweb}/studies/{path}" if protocol == "dicomweb"
            else orthanc.dimse(f"{uids['cr_study']}/{uids['cr_series']}/{uids['cr_instance']}"))
    return read_inputs([parse_study_reference(text)]).studies[0]


@pytest.mark.parametrize("protocol", ["dicomweb", "dimse"])
def test_the_sr_is_stored_and_read_back_with_answer_references_and_boxes(orthanc: Orthanc, protocol: str) -> None:
    study = _cr(orthanc, protocol)
    before = len(stored_reports(orthanc, orthanc.uids["cr_study"]))
    answer = f"Petit pneumothorax apical gauche, côté gauche ({protocol})."  # not ASCII
    sr, body = send_report(study, answer=answer, model="medgem-test-vlm", model_version="abc (hf)",
                           caveat="Not for clinical use.", audit_id="answer-123", reviewed=None,
                           boxes=[("pneumothorax", 10.0, 20.0, 110.0, 220.0)])
    stored = stored_reports(orthanc, orthanc.uids["cr_study"])
    assert len(stored) == before + 1
    (back,) = [ds for ds in stored if ds.SOPInstanceUID == sr.SOPInstanceUID]
    assert back.StudyInstanceUID == orthanc.uids["cr_study"]  # filed beside its image
    assert back.VerificationFlag == "UNVERIFIED"
    content = _content(back)
    assert content["Finding"][0].TextValue == answer
    assert content["Comment"][0].TextValue == "Not for clinical use."
    assert content["Algorithm Name"][0].TextValue == "medgem-test-vlm"
    assert content["Audit record id"][0].TextValue == "answer-123"
    assert "not reviewed" in content["Review status"][0].TextValue
    (image,) = content["Image given to the model"]
    assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == orthanc.uids["cr_instance"]
    (box,) = content["Localized finding"]
    assert box.TextValue == "pneumothorax"
    scoord = box.ContentSequence[0]
    assert scoord.ValueType == "SCOORD" and scoord.GraphicType == "POLYLINE"
    assert np.allclose(np.asarray(scoord.GraphicData, float).reshape(-1, 2),
                       [[10, 20], [110, 20], [110, 220], [10, 220], [10, 20]])
    assert scoord.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == orthanc.uids["cr_instance"]
    evidence = back.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == orthanc.uids["cr_instance"]
    assert body["references"] == [uid_hash(orthanc.uids["cr_instance"])]
    assert orthanc.uids["cr_study"] not in json.dumps(body)


def test_nothing_is_stored_when_the_pacs_is_down(orthanc: Orthanc) -> None:
    study = _cr(orthanc)
    before = len(stored_reports(orthanc, orthanc.uids["cr_study"]))
    gone = dataclasses.replace(study, reference=dataclasses.replace(
        study.reference, root=f"http://127.0.0.1:{free_port()}/dicom-web", timeout=2))
    with pytest.raises(PacsError, match="cannot reach"):
        send_report(gone, answer="x", model="m", model_version="v", caveat="c", audit_id=None, reviewed=None)
    assert len(stored_reports(orthanc, orthanc.uids["cr_study"])) == before


def test_cli_send_back_is_refused_unreviewed_and_audited_when_allowed(
        orthanc: Orthanc, tiny_vlm_checkpoint: Path, tmp_path: Path) -> None:
    from medgem.audit import open_store

    audit = tmp_path / "audit.sqlite"
    uids = orthanc.uids
    url = f"{orthanc.dicomweb}/studies/{uids['cr_study']}/series/{uids['cr_series']}/instances/{uids['cr_instance']}"
    before = len(stored_reports(orthanc, uids["cr_study"]))
    common = ["--model", str(tiny_vlm_checkpoint), "--max-new-tokens", "3", "--no-server",
              "--audit-db", str(audit)]
    refused = run_cli("ask", "Pneumothorax?", "--study", url, "--send-back", *common)
    assert refused.returncode == 1 and "not sent back" in refused.stderr
    assert "--send-back-unreviewed" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    store = open_store(audit)
    assert store.count() == 0  # refused before anything was fetched or generated
    assert len(stored_reports(orthanc, uids["cr_study"])) == before
    sent = run_cli("ask", "Pneumothorax?", "--study", url, "--send-back", "--send-back-unreviewed",
                   "--json", *common)
    assert sent.returncode == 0, sent.stderr
    answer = json.loads(sent.stdout)
    stored = stored_reports(orthanc, uids["cr_study"])
    assert len(stored) == before + 1
    (new,) = [ds for ds in stored if _content(ds)["Audit record id"][0].TextValue == answer["audit_id"]]
    assert _content(new)["Finding"][0].TextValue == (answer["answer"] or "(empty answer)")
    assert answer["caveat"] and _content(new)["Comment"][0].TextValue == answer["caveat"]
    source, send = store.children(answer["audit_id"])  # the study it saw, then the send
    assert source.kind == "pacs_source" and source.body["study"] == uid_hash(uids["cr_study"])
    assert send.kind == "pacs_send" and send.body["study"] == uid_hash(uids["cr_study"])
    assert send.body["reviewed"] is False and uids["cr_study"] not in json.dumps(send.body)
    no_study = run_cli("ask", "Anything?", "--send-back", "--send-back-unreviewed", *common)
    assert no_study.returncode == 1 and "needs exactly one --study" in no_study.stderr


def test_the_fhir_report_stays_preliminary_once_reviewed_and_names_the_reviewer() -> None:
    report = diagnostic_report(patient="p1", study_uid="1.2.3", answer="No acute findings.",
                               model="medgem-test-vlm", caveat="Not for clinical use.", audit_id="answer-9")
    assert report["resourceType"] == "DiagnosticReport" and report["status"] == "preliminary"
    assert report["conclusion"] == "No acute findings."
    assert "Not for clinical use." in report["text"]["div"] and "answer-9" in report["text"]["div"]
    assert report["imagingStudy"][0]["identifier"]["value"] == "urn:oid:1.2.3"
    assert "resultsInterpreter" not in report
    reviewed = diagnostic_report(patient="p1", study_uid=None, answer="x", model="m", caveat="c",
                                 audit_id=None, reviewed="dr.who: accepted", reviewer="dr.who")
    # MedGemma's outputs must not directly inform diagnosis: reviewed or not, never "final"
    assert reviewed["status"] == "preliminary" and "dr.who" in reviewed["text"]["div"]
    assert reviewed["resultsInterpreter"] == [{"display": "dr.who"}]


def test_cli_send_back_also_posts_a_preliminary_diagnostic_report_to_the_fhir_server(
        orthanc: Orthanc, tiny_vlm_checkpoint: Path, tmp_path: Path) -> None:
    from fhir_fixtures import serve_fhir, synthea_bundle
    from medgem.audit import open_store

    uids = orthanc.uids
    url = f"{orthanc.dicomweb}/studies/{uids['cr_study']}/series/{uids['cr_series']}/instances/{uids['cr_instance']}"
    audit = tmp_path / "audit.sqlite"
    posted: list[dict[str, Any]] = []
    for base in serve_fhir(synthea_bundle(), token="fhir-ok", posted=posted):
        result = run_cli("ask", "Pneumothorax?", "--study", url, "--fhir", f"{base}/Patient/p1",
                         "--fhir-token", "fhir-ok", "--send-back", "--send-back-unreviewed", "--json",
                         "--model", str(tiny_vlm_checkpoint), "--max-new-tokens", "3", "--no-server",
                         "--audit-db", str(audit))
        assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    (report,) = posted
    assert report["resourceType"] == "DiagnosticReport" and report["status"] == "preliminary"
    assert report["subject"] == {"reference": "Patient/p1"}
    assert report["conclusion"] == (answer["answer"] or "(empty answer)")
    assert answer["audit_id"] in report["text"]["div"]
    kinds = {r.kind: r.body for r in open_store(audit).children(answer["audit_id"])}
    assert set(kinds) == {"fhir_context", "pacs_source", "pacs_send", "fhir_send"}
    assert kinds["fhir_send"]["id"] == "diagnosticreport-1"
