"""De-identification by the DICOM PS3.15 Basic Application Level Confidentiality Profile: PHI
planted in every attribute the profile names (and in private tags, overlays, curves and
sequences) is found nowhere in what is stored or sent; the profile's options do what they say;
burned-in annotation is refused unless allowed."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from imaging_fixtures import PHI, ct_slice, hu_phantom, write_ct_series
from medgem.errors import ImageInputError
from medgem.inputs import deidentify_upload, read_inputs
from medgem.request import TextPart
from medgem.request.compose import request_for_inputs

KEY = b"profile-test-key"
#: The issue's case: names and an MRN in the free-text descriptions.
STUDY_DESCRIPTION = "CT chest Jane Doe MRN123456"
SERIES_DESCRIPTION = "Doe^Jane series"
FREE_TEXT = {
    "StudyDescription": STUDY_DESCRIPTION, "SeriesDescription": SERIES_DESCRIPTION,
    "ImageComments": "pt Jane Doe says hi", "PerformedProcedureStepDescription": "Doe chest",
    "RequestedProcedureDescription": "for Jane Doe", "AdditionalPatientHistory": "Jane fell",
    "ProtocolName": "Doe protocol", "PatientComments": "Jane Doe comment",
}
SECRETS = [b"Jane", b"Doe", b"MRN123456"]
#: Per VR: a planted value that fits it, and the bytes that must not survive.
DATES = {"DA": "19230517", "DT": "19230517231759", "TM": "231759.123456"}


def stored_bytes(ds: Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def planted(keywords: list[str]) -> tuple[Dataset, list[bytes]]:
    """A CT slice with a distinct marker in every attribute of ``keywords`` whose VR holds text,
    dates, UIDs or sequences, plus a private tag, an overlay comment and a curve label."""
    ds = ct_slice(hu_phantom(8, 8), instance=1, z=0.0, series_uid=generate_uid(),
                  study_uid=generate_uid())
    markers: list[bytes] = []
    for number, keyword in enumerate(keywords):
        tag = tag_for_keyword(keyword)
        if tag is None or tag >> 16 < 0x0008:  # command set and file meta: not in a dataset body
            continue
        vr = dictionary_VR(tag)
        marker = f"PHIX{number:04d}"
        if vr in ("LO", "SH", "CS", "AE", "LT", "ST", "UT", "UC", "PN"):
            value: object = marker if vr != "PN" else f"{marker}^Secret"
        elif vr in DATES:
            value, marker = DATES[vr], DATES[vr][:10]
        elif vr == "UI":
            value = marker = f"1.2.826.0.1.3680043.9999.{number}"
        elif vr == "UR":
            value = f"http://{marker.lower()}.example"
            marker = marker.lower()
        elif vr == "DS":
            value = marker = "98765.4321"
        elif vr == "IS":
            value = marker = "987654321"
        elif vr == "AS":
            value = marker = "087Y"
        elif vr == "SQ":
            item = Dataset()
            item.PersonName = f"{marker}^Inner"
            item.TextValue = f"{marker} text"
            value = [item]
        else:
            continue
        ds.add_new(tag, vr, value)
        markers.append(marker.encode())
    ds.private_block(0x0009, "ACME 1.0", create=True).add_new(0x10, "LO", "PHIXPRIVATE")
    ds.add_new(0x60004000, "LT", "PHIXOVERLAY comment")
    ds.add_new(0x50002500, "LO", "PHIXCURVE label")
    return ds, [*markers, b"PHIXPRIVATE", b"PHIXOVERLAY", b"PHIXCURVE"]


def test_every_attribute_the_profile_names_is_cleaned() -> None:
    from medgem.inputs.deid import deidentify
    from medgem.inputs.deid_profile import PROFILE

    ds, markers = planted(sorted(PROFILE))
    assert len(markers) > 450  # nearly every attribute of Table E.1-1 carries a marker
    before = stored_bytes(ds)
    assert all(m in before for m in markers)
    after = stored_bytes(deidentify(ds, KEY))
    leaked = [m.decode() for m in markers if m in after]
    assert not leaked, f"{len(leaked)} planted values survive: {leaked[:10]}"


def test_free_text_is_cleaned_from_what_is_stored(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path / "study", np.stack([hu_phantom()] * 3))
    for path in paths:
        ds = pydicom.dcmread(path)
        for keyword, value in FREE_TEXT.items():
            setattr(ds, keyword, value)
        ds.save_as(path, enforce_file_format=True)
    single, _ = deidentify_upload(paths[0].read_bytes(), "application/dicom", KEY)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        for path in paths:
            zf.write(path, path.name)
    zipped, _ = deidentify_upload(archive.getvalue(), "application/zip", KEY)
    assert single is not None and zipped is not None
    with zipfile.ZipFile(io.BytesIO(zipped)) as zf:
        members = [zf.read(name) for name in zf.namelist()]
    for blob in [single, *members]:
        for secret in [*SECRETS, *(v.encode() for v in PHI.values())]:
            assert secret not in blob, secret


def test_the_model_sees_no_free_text(tmp_path: Path) -> None:
    study = tmp_path / "study"
    for index, description in enumerate((SERIES_DESCRIPTION, "Jane Doe scout")):
        paths = write_ct_series(study / f"s{index}", np.stack([hu_phantom()] * 2))
        for path in paths:
            ds = pydicom.dcmread(path)
            ds.StudyDescription, ds.SeriesDescription = STUDY_DESCRIPTION, description
            ds.SeriesNumber = index + 1
            ds.save_as(path, enforce_file_format=True)
    # Two series: the error that lists them travels back to clients and into the audit trail.
    with pytest.raises(ImageInputError) as listed:
        read_inputs([study])
    assert "2 series" in str(listed.value)
    assert not any(s.decode() in str(listed.value) for s in SECRETS)
    loaded = read_inputs([study / "s0"])
    request = request_for_inputs("Findings?", loaded)
    said = " ".join(part.text if isinstance(part, TextPart) else part.source  # type: ignore[union-attr]
                    for message in request.messages for part in message.parts)
    assert not any(s.decode() in said for s in SECRETS)


def test_profile_options_do_what_they_say() -> None:
    from medgem.inputs.deid import deidentify

    ds = ct_slice(hu_phantom(8, 8), instance=1, z=0.0, series_uid=generate_uid(),
                  study_uid=generate_uid())
    ds.StudyDescription, ds.DeviceSerialNumber = STUDY_DESCRIPTION, "SN-4455"
    basic = deidentify(ds, KEY)
    assert not basic.get("StudyDate") and "StudyDescription" not in basic
    assert "DeviceSerialNumber" not in basic
    assert basic.LongitudinalTemporalInformationModified == "REMOVED"
    assert [i.CodeValue for i in basic.DeidentificationMethodCodeSequence] == ["113100"]

    shifted = deidentify(ds, KEY, ["retain_modified_dates"])
    again = deidentify(ds, KEY, ["retain_modified_dates"])
    assert shifted.StudyDate != ds.StudyDate and len(shifted.StudyDate) == 8
    assert shifted.StudyDate == again.StudyDate == shifted.SeriesDate  # one shift per patient
    assert shifted.LongitudinalTemporalInformationModified == "MODIFIED"
    assert deidentify(ds, KEY, ["retain_full_dates"]).StudyDate == ds.StudyDate

    cleaned = deidentify(ds, KEY, ["clean_descriptors"]).StudyDescription
    assert cleaned.startswith("CT chest") and not any(s.decode() in cleaned for s in SECRETS)
    assert deidentify(ds, KEY, ["retain_uids"]).SeriesInstanceUID == ds.SeriesInstanceUID
    assert deidentify(ds, KEY, ["retain_device_identity"]).DeviceSerialNumber == "SN-4455"
    codes = [i.CodeValue for i in deidentify(ds, KEY, ["clean_descriptors"]).DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113105"]
    with pytest.raises(ValueError, match="unknown de-identification option"):
        deidentify(ds, KEY, ["retain_everything"])


def test_burned_in_annotation_is_flagged_and_not_stored() -> None:
    from medgem.inputs.deid import BurnedInAnnotationError, deidentify

    ds = ct_slice(hu_phantom(8, 8), instance=1, z=0.0, series_uid=generate_uid(),
                  study_uid=generate_uid())
    ds.BurnedInAnnotation = "YES"
    with pytest.raises(BurnedInAnnotationError):
        deidentify(ds, KEY)
    data = stored_bytes(ds)
    assert deidentify_upload(data, "application/dicom", KEY) == (None, "application/dicom")
    kept, _ = deidentify_upload(data, "application/dicom", KEY, allow_burned_in=True)
    assert kept is not None and b"Doe" not in kept
