"""Studies from a real PACS (Orthanc + its DICOMweb plugin) over QIDO-RS/WADO-RS: the same
pixels and prompt as the same files read locally, only the sampled slices fetched, and every
bad reference refused in one line with nothing left behind."""

from __future__ import annotations

import glob
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
import pydicom
import pytest

from conftest import run_cli
from imaging_fixtures import PHI
from medgem.errors import PacsError
from medgem.inputs import Inputs, read_inputs
from medgem.inputs.pacs import parse_study_reference, uid_hash
from medgem.inputs.pacs.reference import is_allowed
from medgem.request.compose import request_for_inputs
from medgem.request.request import TextPart
from pacs_fixtures import FrontOfOrthanc, Orthanc, free_port, serving_front


def _pixels(inputs: Inputs) -> list[np.ndarray]:
    return [np.asarray(image) for image in inputs.images]


def _texts(inputs: Inputs, question: str) -> list[str]:
    request = request_for_inputs(question, inputs)
    return [part.text for message in request.messages for part in message.parts
            if isinstance(part, TextPart)]


@pytest.fixture(autouse=True)
def _private_tmp(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fetch's temporary folders land in a folder of this test's own, so another test file
    fetching from a PACS at the same time (another xdist worker, another run on the machine)
    never shows up among this one's leftovers."""
    private = tmp_path_factory.mktemp("pacs-tmp")
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    monkeypatch.setenv("TMPDIR", str(private))


def _leftovers() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "medgem-pacs-*")))


# --- references -------------------------------------------------------------------------------

def test_references_name_a_study_series_or_instance() -> None:
    ref = parse_study_reference("https://pacs.local/dicom-web/studies/1.2.3/series/4.5/instances/6.7")
    assert (ref.protocol, ref.root, ref.study, ref.series, ref.instance) == (
        "dicomweb", "https://pacs.local/dicom-web", "1.2.3", "4.5", "6.7")
    ref = parse_study_reference("dimse://ORTHANC@10.0.0.5:4242/1.2.3/4.5")
    assert (ref.protocol, ref.host, ref.port, ref.called_ae, ref.study, ref.series) == (
        "dimse", "10.0.0.5", 4242, "ORTHANC", "1.2.3", "4.5")
    for bad, words in [("https://pacs.local/dicom-web/1.2.3", "names no study"),
                       ("https://pacs.local/dicom-web/studies/1.2.abc", "not a DICOM study UID"),
                       ("https://pacs.local/dicom-web/studies/1.2/frames/1", "after the UIDs"),
                       ("ftp://pacs/studies/1.2", "not a study reference"),
                       ("dimse://pacs:4242/1.2", "not a DIMSE reference")]:
        with pytest.raises(PacsError, match=words):
            parse_study_reference(bad)
    # the audit keeps hashed UIDs only
    fields = parse_study_reference("https://pacs.local/dicom-web/studies/1.2.3").audit_fields()
    assert fields["study"] == uid_hash("1.2.3") and "1.2.3" not in json.dumps(fields)


def test_the_allowlist_matches_roots_not_lookalike_hosts() -> None:
    allowed = ["https://pacs.local/dicom-web", "dimse://ORTHANC@10.0.0.5:4242"]
    assert is_allowed(parse_study_reference("https://pacs.local/dicom-web/studies/1.2"), allowed)
    assert is_allowed(parse_study_reference("dimse://ORTHANC@10.0.0.5:4242/1.2"), allowed)
    for other in ["https://pacs.local.evil/dicom-web/studies/1.2",
                  "https://pacs.local/dicom-webx/studies/1.2",
                  "https://pacs.local/studies/1.2", "dimse://OTHER@10.0.0.5:4242/1.2"]:
        assert not is_allowed(parse_study_reference(other), allowed), other


# --- same pixels, same prompt -----------------------------------------------------------------

def test_a_ct_study_gives_the_pixels_and_prompt_of_the_same_files_read_locally(orthanc: Orthanc) -> None:
    before = _leftovers()
    question = "Any acute findings on this chest CT?"
    ref = parse_study_reference(f"{orthanc.dicomweb}/studies/{orthanc.uids['study']}")
    remote = read_inputs([ref], question=question)  # CT chosen from CT + MR + SR by the question
    local = read_inputs([orthanc.files["ct"][0].parent])
    assert remote.layout == local.layout == "volume"
    assert len(remote.images) == 85
    assert all(np.array_equal(a, b) for a, b in zip(_pixels(remote), _pixels(local), strict=True))
    assert _texts(remote, question) == _texts(local, question)
    for fact in ("slices_total", "slices_sent", "sampled_indices", "slice_spacing_mm", "series", "window"):
        assert remote.items[0].metadata[fact] == local.items[0].metadata[fact], fact
    assert remote.items[0].description == local.items[0].description
    # only the sampled slices moved: the 85 instances the local sampling picked, in order
    (study,) = remote.studies
    by_instance = sorted(orthanc.files["ct"], key=lambda p: int(pydicom.dcmread(p).InstanceNumber))
    picked = [str(pydicom.dcmread(by_instance[i]).SOPInstanceUID)
              for i in local.items[0].metadata["sampled_indices"]]  # type: ignore[union-attr]
    assert list(study.instances) == picked and study.total_instances == 120
    assert study.headers[0].PatientName == PHI["PatientName"]  # kept in memory for the SR only
    assert _leftovers() == before  # the temporary folder is gone


def test_series_and_instance_urls_fetch_just_that(orthanc: Orthanc) -> None:
    uids = orthanc.uids
    mr = read_inputs([parse_study_reference(
        f"{orthanc.dicomweb}/studies/{uids['study']}/series/{uids['mr_series']}")])
    local_mr = read_inputs([orthanc.files["mr"][0].parent])
    assert all(np.array_equal(a, b) for a, b in zip(_pixels(mr), _pixels(local_mr), strict=True))
    assert len(mr.images) == 6
    cr = read_inputs([parse_study_reference(
        f"{orthanc.dicomweb}/studies/{uids['cr_study']}/series/{uids['cr_series']}/instances/{uids['cr_instance']}")])
    local_cr = read_inputs([orthanc.files["cr"][0]])
    assert cr.layout == "images" and cr.items[0].modality == "CR"
    assert np.array_equal(_pixels(cr)[0], _pixels(local_cr)[0])
    assert _texts(cr, "Pneumothorax?") == _texts(local_cr, "Pneumothorax?")
    assert cr.studies[0].instances == (uids["cr_instance"],)


def test_fetched_files_are_deidentified_before_they_touch_disk(orthanc: Orthanc) -> None:
    """The temporary copies the readers read hold no PHI: seen while they exist, through the
    reading's own cancellation hook (asked between files)."""
    seen: ClassVar[list[str]] = []

    def peek() -> bool:
        for path in glob.glob(os.path.join(tempfile.gettempdir(), "medgem-pacs-*", "*", "*.dcm")):
            seen.append(Path(path).read_bytes().decode("latin-1"))
        return False

    from medgem.inputs.options import ImagingOptions

    ref = parse_study_reference(f"{orthanc.dicomweb}/studies/{orthanc.uids['study']}/series/{orthanc.uids['mr_series']}")
    read_inputs([ref], ImagingOptions(cancelled=peek))
    assert seen
    for value in PHI.values():
        assert not any(value in text for text in seen), value


# --- bad input --------------------------------------------------------------------------------

def test_unknown_uids_a_non_image_series_and_an_ambiguous_study_are_one_line_errors(orthanc: Orthanc) -> None:
    before = _leftovers()
    base, uids = orthanc.dicomweb, orthanc.uids
    cases = [
        (f"{base}/studies/1.2.3.4.5", "is not on"),
        (f"{base}/studies/{uids['study']}/series/1.2.3.4", "matches no series"),
        (f"{base}/studies/{uids['study']}/series/{uids['sr_series']}", "SR series, not images"),
        (f"{base}/studies/{uids['lone_sr_study']}", "holds no image series"),
        (f"{base}/studies/{uids['study']}", "holds 2 image series"),  # no question to choose by
        (f"{base}/studies/{uids['cr_study']}/series/{uids['cr_series']}/instances/1.2.3", "is not in series"),
    ]
    for url, words in cases:
        with pytest.raises(PacsError, match=words) as caught:
            read_inputs([parse_study_reference(url)])
        assert "\n" not in str(caught.value)
    assert _leftovers() == before


def test_a_pacs_that_is_down_or_locked_is_refused_in_bounded_time(orthanc_locked: Orthanc) -> None:
    down = parse_study_reference(f"http://127.0.0.1:{free_port()}/dicom-web/studies/1.2.3")
    with pytest.raises(PacsError, match="cannot reach"):
        read_inputs([down.with_access(timeout=2)])
    locked = parse_study_reference(f"{orthanc_locked.dicomweb}/studies/1.2.3").with_access(token="wrong")
    with pytest.raises(PacsError, match=r"401 unauthorized.*--dicomweb-token"):
        read_inputs([locked])


class _SlowOrGuarded(FrontOfOrthanc):
    """Wants ``Bearer good`` (else 401), then forwards; or, for paths under /slow, answers
    nothing for 5 s."""

    seen: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        if self.path.startswith("/slow"):
            threading.Event().wait(5)
            return
        self.seen.append(self.headers.get("Authorization", ""))
        if self.headers.get("Authorization") != "Bearer good":
            self.send_response(401)
            self.end_headers()
            return
        self.forward()


@pytest.fixture(scope="module")
def guarded(orthanc: Orthanc) -> Iterator[str]:
    with serving_front(_SlowOrGuarded, orthanc.url) as url:
        yield url


def test_the_bearer_token_reaches_the_pacs_from_the_flag_or_the_config_file(
        orthanc: Orthanc, guarded: str, tmp_path: Path) -> None:
    url = f"{guarded}/dicom-web/studies/{orthanc.uids['study']}"
    listing = run_cli("inspect", "--study", url, "--dicomweb-token", "good")
    assert listing.returncode == 0, listing.stderr
    assert "CT CHEST" in listing.stdout and "MR HEAD" in listing.stdout
    config = tmp_path / "config.toml"
    config.write_text('dicomweb_token = "good"\n')
    from_file = run_cli("inspect", "--study", url, "--series", orthanc.uids["mr_series"][-12:],
                        "--json", env={"MEDGEM_CONFIG": str(config)})
    assert from_file.returncode == 0, from_file.stderr
    report = json.loads(from_file.stdout)
    assert report["modality"] == "MR" and report["fetched"]["instances"] == 6
    refused = run_cli("inspect", "--study", url, "--dicomweb-token", "bad")
    assert refused.returncode == 1 and "401" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert "Bearer good" in _SlowOrGuarded.seen and "Bearer bad" in _SlowOrGuarded.seen


def test_a_slow_pacs_times_out_in_one_line(guarded: str) -> None:
    slow = parse_study_reference(f"{guarded}/slow/dicom-web/studies/1.2.3").with_access(timeout=1)
    with pytest.raises(PacsError, match="did not answer within 1 s"):
        read_inputs([slow])


# --- the CLI ----------------------------------------------------------------------------------

def test_cli_ask_by_study_answers_and_records_the_fetch_without_phi(
        orthanc: Orthanc, tiny_vlm_checkpoint: Path, tmp_path: Path) -> None:
    audit = tmp_path / "audit.sqlite"
    url = f"{orthanc.dicomweb}/studies/{orthanc.uids['study']}"
    seen = tmp_path / "seen"
    result = run_cli("ask", "Any acute findings on this chest CT?", "--study", url, "--model",
                     str(tiny_vlm_checkpoint), "--max-new-tokens", "2", "--json", "--no-server",
                     "--save-preprocessed", str(seen), "--audit-db", str(audit))
    assert result.returncode == 0, result.stderr
    assert len(list(seen.glob("*.png"))) == 85
    from medgem.audit import open_store

    store = open_store(audit)
    (event,) = store.records(kind="pacs_fetch")
    body = json.dumps(event.body)
    assert event.body["study"] == uid_hash(orthanc.uids["study"])
    assert event.body["series"] == uid_hash(orthanc.uids["ct_series"])
    assert len(event.body["instances"]) == 85 and event.body["total_instances"] == 120
    assert orthanc.uids["study"] not in body and PHI["PatientName"] not in body
    assert store.count("answer") == 1
    bad = run_cli("ask", "Any findings?", "--study", f"{orthanc.dicomweb}/studies/1.2.3.4",
                  "--model", str(tiny_vlm_checkpoint), "--no-server", "--audit-db", str(audit))
    assert bad.returncode == 1 and "is not on" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    failed = [r for r in store.records(kind="pacs_fetch") if r.body.get("status") == "failed"]
    assert len(failed) == 1 and store.count("answer") == 1


def test_the_reading_limits_stop_a_fetch_and_nothing_half_fetched_stays(orthanc: Orthanc) -> None:
    from medgem.errors import ImageInputError
    from medgem.inputs.options import ImagingOptions

    before = _leftovers()
    ref = parse_study_reference(f"{orthanc.dicomweb}/studies/{orthanc.uids['study']}/series/{orthanc.uids['ct_series']}")
    with pytest.raises(ImageInputError, match="more than 200,000 bytes"):  # stopped mid-download
        read_inputs([ref], ImagingOptions(max_archive_bytes=200_000))
    with pytest.raises(ImageInputError, match="--slice-limit"):  # refused from the listing alone
        read_inputs([ref], ImagingOptions(slice_limit=100))
    with pytest.raises(ImageInputError, match="--max-total-pixels"):
        read_inputs([ref], ImagingOptions(max_total_pixels=1000))
    assert _leftovers() == before
