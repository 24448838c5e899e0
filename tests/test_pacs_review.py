"""Reviewed answers back where clinicians look, against the real Orthanc: `medgem audit
send-back` after `medgem audit review` (the correction and the reviewer in the stored SR, and in
a FHIR DiagnosticReport), refusals that store nothing (Orthanc queried to prove it), the
server's --send-back over real HTTP (on review, or at once when unreviewed ones are allowed; a
PACS that went down fails the send, never the review), and the series a question chooses being
the same from the command line and from the server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from dicomweb_client import DICOMwebClient

from conftest import run_cli
from medgem.audit import open_store
from medgem.inputs.pacs import uid_hash
from medgem.server.app import create_app
from medgem.server.server_config import ServerConfig
from pacs_fixtures import Orthanc, start_orthanc, stored_reports
from test_server_helpers import SCRIPTED_ID, audited, scripted_model, serve_in_thread

CORRECTION = "Petit pneumothorax apical gauche ; pas d'épanchement."  # not ASCII


def _about(pacs: Orthanc, study: str, answer_id: str) -> list[Any]:
    """The SRs in the study that name this answer's audit record."""
    return [ds for ds in stored_reports(pacs, study) if _content(ds)["Audit record id"][0].TextValue == answer_id]


def _content(ds: Any) -> dict[str, list[Any]]:
    by_name: dict[str, list[Any]] = {}
    for item in ds.ContentSequence:
        by_name.setdefault(item.ConceptNameCodeSequence[0].CodeMeaning, []).append(item)
    return by_name


def _cr(pacs: Orthanc, protocol: str = "dicomweb") -> str:
    uids = pacs.uids
    if protocol == "dimse":
        return pacs.dimse(f"{uids['cr_study']}/{uids['cr_series']}/{uids['cr_instance']}")
    return f"{pacs.dicomweb}/studies/{uids['cr_study']}/series/{uids['cr_series']}/instances/{uids['cr_instance']}"


def _ask(checkpoint: Path, audit: Path, *args: str, question: str = "Pneumothorax?") -> dict[str, Any]:
    result = run_cli("ask", question, *args, "--model", str(checkpoint), "--max-new-tokens", "3",
                     "--no-server", "--audit-db", str(audit), "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def _audit(audit: Path, *args: str) -> Any:
    return run_cli("audit", "--db", str(audit), *args)


def _refused(result: Any, words: str) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    assert words in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def _chat(base: str, source: str, question: str = "Pneumothorax?", **extra: Any) -> httpx.Response:
    body = {"model": SCRIPTED_ID, "messages": [{"role": "user", "content": [
        {"type": "image_dicom", "image_dicom": {"dicom_source": source}},
        {"type": "text", "text": question}]}], **extra}
    return httpx.post(base + "/v1/chat/completions", json=body, timeout=120)


def _review(base: str, record_id: str, verdict: str, **extra: Any) -> httpx.Response:
    return httpx.post(base + "/api/reviews", json={"record_id": record_id, "verdict": verdict, **extra},
                      timeout=120)


@pytest.mark.parametrize("protocol", ["dicomweb", "dimse"])
def test_a_corrected_answer_goes_back_with_the_correction_and_the_reviewer(
        orthanc: Orthanc, tiny_vlm_checkpoint: Path, tmp_path: Path, protocol: str) -> None:
    audit, uids, reference = tmp_path / "audit.sqlite", orthanc.uids, _cr(orthanc, protocol)
    answer = _ask(tiny_vlm_checkpoint, audit, "--study", reference)
    store = open_store(audit)
    (source,) = [r for r in store.children(answer["audit_id"]) if r.kind == "pacs_source"]
    assert source.body["instances"] == [uid_hash(uids["cr_instance"])]
    assert source.body["study"] == uid_hash(uids["cr_study"]) and uids["cr_study"] not in json.dumps(source.body)
    before = len(stored_reports(orthanc, uids["cr_study"]))

    _refused(_audit(audit, "send-back", answer["audit_id"], "--study", reference), "was not reviewed")
    assert len(stored_reports(orthanc, uids["cr_study"])) == before  # nothing stored

    review = _audit(audit, "review", answer["audit_id"], "correct", "--correction", CORRECTION,
                    "--reviewer", "Jane Roe")
    assert review.returncode == 0, review.stderr
    sent = _audit(audit, "send-back", answer["audit_id"], "--study", reference)
    assert sent.returncode == 0, sent.stderr
    assert "corrected by Jane Roe" in sent.stderr

    (sr,) = _about(orthanc, uids["cr_study"], answer["audit_id"])
    assert len(stored_reports(orthanc, uids["cr_study"])) == before + 1
    content = _content(sr)
    assert content["Finding"][0].TextValue == CORRECTION
    assert content["Comment"][0].TextValue == answer["caveat"]
    assert content["Algorithm Name"][0].TextValue == "medgem-test-vlm"
    assert "Jane Roe: corrected" in content["Review status"][0].TextValue
    assert sr.VerificationFlag == "VERIFIED" and sr.PreliminaryFlag == "PRELIMINARY"
    assert str(sr.VerifyingObserverSequence[0].VerifyingObserverName) == "Jane^Roe"
    (image,) = content["Image given to the model"]
    assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == uids["cr_instance"]
    source_header = DICOMwebClient(orthanc.dicomweb).retrieve_instance_metadata(
        uids["cr_study"], uids["cr_series"], uids["cr_instance"])
    assert sr.StudyInstanceUID == uids["cr_study"]  # filed beside its image, for that patient
    assert sr.PatientID == source_header["00100020"]["Value"][0]

    send = store.get(sent.stdout.strip())
    assert send is not None and send.kind == "pacs_send" and send.parent == answer["audit_id"]
    assert send.body["status"] == "stored" and send.body["verdict"] == "correct"
    assert send.body["review"] == store.children(answer["audit_id"])[1].id  # the review it sent
    assert send.body["reviewed"] is True and send.body["references"] == [uid_hash(uids["cr_instance"])]
    fetches = [r for r in store.children(answer["audit_id"]) if r.kind == "pacs_fetch"]
    assert [f.body["endpoint"] for f in fetches] == ["cli:audit send-back"]
    for record in store.children(answer["audit_id"]):  # UIDs hashed everywhere
        assert uids["cr_study"] not in json.dumps(record.body) and uids["cr_instance"] not in json.dumps(record.body)
    listed = _audit(audit, "list", "--kind", "pacs_send").stdout
    assert f"dicom-sr stored to {reference.split('/studies/')[0] if protocol == 'dicomweb' else 'ORTHANC@'}" in listed
    assert uids["cr_study"] not in listed
    assert _audit(audit, "verify").returncode == 0


def test_a_rejected_answer_is_refused_and_the_latest_review_stands(
        orthanc: Orthanc, tiny_vlm_checkpoint: Path, tmp_path: Path) -> None:
    from fhir_fixtures import serve_fhir, synthea_bundle

    audit, uids, reference = tmp_path / "audit.sqlite", orthanc.uids, _cr(orthanc)
    answer = _ask(tiny_vlm_checkpoint, audit, "--study", reference)
    before = len(stored_reports(orthanc, uids["cr_study"]))
    assert _audit(audit, "review", answer["audit_id"], "reject", "--reviewer", "Dr House").returncode == 0
    _refused(_audit(audit, "send-back", answer["audit_id"], "--study", reference, "--allow-unreviewed"),
             "was rejected by Dr House")
    assert len(stored_reports(orthanc, uids["cr_study"])) == before

    assert _audit(audit, "review", answer["audit_id"], "accept", "--reviewer", "Dr House").returncode == 0
    # another study, or the same study on another route than its images came by: refused first
    _refused(_audit(audit, "send-back", answer["audit_id"], "--study",
                    f"{orthanc.dicomweb}/studies/{uids['study']}"), "another study")
    _refused(_audit(audit, "send-back", answer["audit_id"], "--study", orthanc.dimse(uids["cr_study"])),
             "came from")
    assert len(stored_reports(orthanc, uids["cr_study"])) == before

    posted: list[dict[str, Any]] = []
    for base in serve_fhir(synthea_bundle(), token="fhir-ok", posted=posted):
        sent = _audit(audit, "send-back", answer["audit_id"], "--study", reference,
                      "--fhir", f"{base}/Patient/p1", "--fhir-token", "fhir-ok")
        assert sent.returncode == 0, sent.stderr
    (sr,) = _about(orthanc, uids["cr_study"], answer["audit_id"])
    assert _content(sr)["Finding"][0].TextValue == (answer["answer"] or "(empty answer)")
    assert "Dr House: accepted" in _content(sr)["Review status"][0].TextValue
    assert str(sr.VerifyingObserverSequence[0].VerifyingObserverName) == "Dr^House"
    (report,) = posted
    assert report["status"] == "preliminary"  # reviewed, and still not a final diagnosis
    assert report["resultsInterpreter"] == [{"display": "Dr House"}]
    assert report["conclusion"] == (answer["answer"] or "(empty answer)")
    assert report["imagingStudy"][0]["identifier"]["value"] == f"urn:oid:{uids['cr_study']}"
    kinds = [r.kind for r in open_store(audit).children(answer["audit_id"])]
    assert kinds == ["pacs_source", "review", "review", "pacs_fetch", "pacs_send", "fhir_send"]


def test_unreviewed_goes_only_when_allowed_and_an_answer_without_a_study_goes_nowhere(
        orthanc: Orthanc, tiny_vlm_checkpoint: Path, tmp_path: Path) -> None:
    audit, uids, reference = tmp_path / "audit.sqlite", orthanc.uids, _cr(orthanc)
    answer = _ask(tiny_vlm_checkpoint, audit, "--study", reference)
    sent = _audit(audit, "send-back", answer["audit_id"], "--study", reference, "--allow-unreviewed")
    assert sent.returncode == 0, sent.stderr
    (sr,) = _about(orthanc, uids["cr_study"], answer["audit_id"])
    assert sr.VerificationFlag == "UNVERIFIED" and "VerifyingObserverSequence" not in sr
    assert "not reviewed" in _content(sr)["Review status"][0].TextValue

    text = _ask(tiny_vlm_checkpoint, audit, question="What is a pneumothorax?")
    assert _audit(audit, "review", text["audit_id"], "accept", "--reviewer", "Dr House").returncode == 0
    _refused(_audit(audit, "send-back", text["audit_id"], "--study", reference), "not about a study from a PACS")
    _refused(_audit(audit, "send-back", "chatcmpl-nope", "--study", reference), "no answer record")


def test_the_question_chooses_the_same_series_from_the_cli_and_the_server(
        orthanc: Orthanc, tiny_vlm_checkpoint: Path, tmp_path: Path) -> None:
    uids = orthanc.uids
    study = f"{orthanc.dicomweb}/studies/{uids['study']}"
    question = "Any nodule on this chest CT?"
    cli_audit = tmp_path / "cli.sqlite"
    _ask(tiny_vlm_checkpoint, cli_audit, "--study", study, question=question)
    (cli_fetch,) = open_store(cli_audit).records(kind="pacs_fetch")

    store = open_store(tmp_path / "server.sqlite")
    config = ServerConfig(allowed_pacs=(orthanc.dicomweb,))
    model = audited(scripted_model(context_length=32768), store)  # 85 slices of 256 tokens
    with serve_in_thread(create_app(config, model)) as base:
        chest = _chat(base, study, question)
        assert chest.status_code == 200, chest.text
        assert "Seen 85 image(s)" in chest.json()["choices"][0]["message"]["content"]  # CT, sampled
        head = _chat(base, study, "Is this head MRI normal?")
        assert head.status_code == 200, head.text
        assert "Seen 6 image(s)" in head.json()["choices"][0]["message"]["content"]  # the MR
        unsaid = _chat(base, study, "Anything?")  # two image series, no word for either
        assert unsaid.status_code == 400 and "holds 2 image series" in unsaid.json()["error"]["message"]
    server_chest, server_head = store.records(kind="pacs_fetch")
    assert cli_fetch.body["series"] == server_chest.body["series"] == uid_hash(uids["ct_series"])
    assert cli_fetch.body["instances"] == server_chest.body["instances"]  # the same slices, too
    assert server_head.body["series"] == uid_hash(uids["mr_series"])


def test_the_server_sends_back_on_review_and_says_why_not(
        orthanc: Orthanc, tmp_path: Path) -> None:
    uids, reference = orthanc.uids, _cr(orthanc)
    audit = tmp_path / "audit.sqlite"
    store = open_store(audit)
    config = ServerConfig(allowed_pacs=(orthanc.dicomweb,), send_back=True)
    before = len(stored_reports(orthanc, uids["cr_study"]))
    with serve_in_thread(create_app(config, audited(scripted_model(), store))) as base:
        asked = _chat(base, reference)
        assert asked.status_code == 200, asked.text
        answer_id = asked.json()["medgem"]["audit_id"]
        assert asked.json()["medgem"]["send_back"] is None  # nobody reviewed it: nothing goes
        assert [r.kind for r in store.children(answer_id)] == ["pacs_source"]
        assert len(stored_reports(orthanc, uids["cr_study"])) == before

        rejected = _review(base, answer_id, "reject", reviewer="Dr Grey")
        assert rejected.status_code == 201, rejected.text
        assert rejected.json()["send_back"]["status"] == "not_sent"
        assert "rejected by Dr Grey" in rejected.json()["send_back"]["message"]
        assert len(stored_reports(orthanc, uids["cr_study"])) == before

        corrected = _review(base, answer_id, "correct", correction=CORRECTION, reviewer="Dr Grey")
        assert corrected.status_code == 201, corrected.text
        sent = corrected.json()["send_back"]
        assert sent["status"] == "stored" and sent["reviewed"] is True and sent["pacs"] == orthanc.dicomweb
        (sr,) = _about(orthanc, uids["cr_study"], answer_id)
        assert _content(sr)["Finding"][0].TextValue == CORRECTION
        assert str(sr.VerifyingObserverSequence[0].VerifyingObserverName) == "Dr^Grey"
        send = store.get(sent["record_id"])
        assert send is not None and send.body["endpoint"] == "/api/reviews" and send.body["verdict"] == "correct"

        text = httpx.post(base + "/v1/chat/completions", json={
            "model": SCRIPTED_ID, "messages": [{"role": "user", "content": "Hello?"}]}, timeout=60)
        plain = _review(base, text.json()["medgem"]["audit_id"], "accept", reviewer="Dr Grey")
        assert plain.status_code == 201 and "send_back" not in plain.json()  # no study: nothing to say

    with serve_in_thread(create_app(config, audited(scripted_model(), store))) as base:  # restarted
        late = _review(base, answer_id, "accept", reviewer="Dr Grey")
        assert late.status_code == 201 and late.json()["send_back"]["status"] == "not_sent"
        assert f"medgem audit send-back {answer_id}" in late.json()["send_back"]["message"]
    store.close()
    by_cli = _audit(audit, "send-back", answer_id, "--study", reference)  # what the reply said to do
    assert by_cli.returncode == 0, by_cli.stderr
    assert len(_about(orthanc, uids["cr_study"], answer_id)) == 2
    assert len(stored_reports(orthanc, uids["cr_study"])) == before + 2


def _stream_extra(base: str, source: str) -> dict[str, Any]:
    """The ``medgem`` object of a streamed answer's last chunk."""
    body = {"model": SCRIPTED_ID, "stream": True, "messages": [{"role": "user", "content": [
        {"type": "image_dicom", "image_dicom": {"dicom_source": source}}, {"type": "text", "text": "Pneumothorax?"}]}]}
    extra: dict[str, Any] = {}
    with httpx.stream("POST", base + "/v1/chat/completions", json=body, timeout=120) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                extra = json.loads(line[6:]).get("medgem") or extra
    return extra


def test_unreviewed_server_answers_go_at_once_when_allowed_and_a_failed_send_keeps_the_review(
        orthanc: Orthanc, tmp_path: Path) -> None:
    own = start_orthanc(tmp_path / "pacs")  # one this test may stop
    try:
        own.upload(orthanc.files["cr"])
        own.uids.update({k: orthanc.uids[k] for k in ("cr_study", "cr_series", "cr_instance")})
        reference = _cr(own)
        store = open_store(tmp_path / "audit.sqlite")
        config = ServerConfig(allowed_pacs=(own.dicomweb,), send_back=True, send_back_unreviewed=True)
        with serve_in_thread(create_app(config, audited(scripted_model(), store))) as base:
            asked = _chat(base, reference)
            assert asked.status_code == 200, asked.text
            sent = asked.json()["medgem"]["send_back"]
            assert sent["status"] == "stored" and sent["reviewed"] is False
            (sr,) = _about(own, own.uids["cr_study"], asked.json()["medgem"]["audit_id"])
            assert sr.VerificationFlag == "UNVERIFIED"
            streamed = _stream_extra(base, reference)
            assert streamed["send_back"]["status"] == "stored"
            assert len(_about(own, own.uids["cr_study"], streamed["audit_id"])) == 1

            own.stop()  # the PACS goes down before the clinician reviews
            review = _review(base, asked.json()["medgem"]["audit_id"], "accept", reviewer="Dr Grey")
            assert review.status_code == 201, review.text  # the review stands
            failed = review.json()["send_back"]
            assert failed["status"] == "failed" and "cannot reach" in failed["message"]
            record = store.get(failed["record_id"])
            assert record is not None and record.kind == "pacs_send" and record.body["status"] == "failed"
            assert store.get(review.json()["id"]) is not None
            assert httpx.get(base + "/healthz").status_code == 200
    finally:
        own.stop()


def test_serve_refuses_send_back_flags_that_could_do_nothing(tiny_vlm_checkpoint: Path) -> None:
    alone = run_cli("serve", "--model", str(tiny_vlm_checkpoint), "--send-back-unreviewed")
    _refused(alone, "add --send-back")
    no_pacs = run_cli("serve", "--model", str(tiny_vlm_checkpoint), "--send-back")
    _refused(no_pacs, "--allow-pacs")
