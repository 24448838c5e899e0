"""De-identification: nothing identifying survives into any file medgem writes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from imaging_fixtures import PHI, hu_phantom, write_ct_series
from medgem.inputs import read_inputs, save_preprocessed
from medgem.inputs.deid import deidentify, pseudonym, remap_uid

KEY = b"test-secret-key"


@pytest.fixture
def series(tmp_path: Path) -> list[Path]:
    return write_ct_series(tmp_path / "study", np.stack([hu_phantom()] * 3))


def identifying_values(paths: list[Path]) -> list[bytes]:
    """Every PHI value planted in the files, plus their UIDs and the ISO form of the dates."""
    values = {v for v in PHI.values()}
    values |= {f"{PHI['StudyDate'][:4]}-{PHI['StudyDate'][4:6]}-{PHI['StudyDate'][6:]}"}
    for path in paths:
        ds = pydicom.dcmread(path)
        values |= {ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.FrameOfReferenceUID}
    return sorted(v.encode() for v in values)


def assert_clean(files: list[Path], secrets: list[bytes]) -> None:
    assert files
    for path in files:
        blob = path.read_bytes()
        leaked = [s for s in secrets if s in blob]
        assert not leaked, f"{path.name} leaks {leaked}"


def test_deidentified_dicom_holds_no_identifiers(series: list[Path], tmp_path: Path) -> None:
    secrets = identifying_values(series)
    out = tmp_path / "clean"
    out.mkdir()
    written = []
    for path in series:
        clean = deidentify(pydicom.dcmread(path), KEY)
        target = out / path.name
        clean.save_as(target, enforce_file_format=True)
        written.append(target)
    assert_clean(written, secrets)
    # Still a loadable series with the same pixels.
    before, after = read_inputs([series[0].parent]).items[0], read_inputs([out]).items[0]
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(before.images, after.images, strict=True))


def test_uids_are_remapped_consistently_with_the_key(series: list[Path]) -> None:
    original = [pydicom.dcmread(p) for p in series]
    clean = [deidentify(ds, KEY) for ds in original]
    assert len({ds.SeriesInstanceUID for ds in clean}) == 1  # one series stays one series
    assert len({ds.SOPInstanceUID for ds in clean}) == 3
    assert clean[0].SeriesInstanceUID == remap_uid(original[0].SeriesInstanceUID, KEY)
    assert clean[0].SeriesInstanceUID != deidentify(original[0], b"other-key").SeriesInstanceUID
    assert clean[0].file_meta.MediaStorageSOPInstanceUID == clean[0].SOPInstanceUID
    assert clean[0].SOPClassUID == original[0].SOPClassUID  # standard UIDs kept
    assert clean[0].PatientID == pseudonym(PHI["PatientID"], KEY)
    assert clean[0].PatientIdentityRemoved == "YES"
    assert original[0].PatientName == PHI["PatientName"]  # the input is left untouched
    for keyword in ("PatientBirthDate", "AccessionNumber", "InstitutionName", "StudyID", "StationName"):
        assert not clean[0].get(keyword)  # PS3.15: removed (X) or emptied (Z)
    assert clean[0].StudyDate == "" and clean[0].ReferringPhysicianName == ""


def test_previews_and_inspect_json_hold_no_identifiers(series: list[Path], tmp_path: Path) -> None:
    secrets = identifying_values(series)
    pngs = save_preprocessed([read_inputs([series[0].parent]).items[0]], tmp_path / "png")
    assert_clean(pngs, secrets)
    driver = (
        "import argparse, sys\n"
        "from medgem.cli import inspect as command\n"
        "parser = argparse.ArgumentParser(prog='medgem')\n"
        "command.add_parser(parser.add_subparsers())\n"
        "args = parser.parse_args(sys.argv[1:])\n"
        "sys.exit(args.func(args))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", driver, "inspect", str(series[0].parent), "--json",
         "--save-preprocessed", str(tmp_path / "cli")],
        capture_output=True, timeout=120, check=True,
    )
    report = json.loads(result.stdout)
    assert report["modality"] == "CT" and report["study_date_present"] is True
    (tmp_path / "report.json").write_bytes(result.stdout)
    assert_clean([tmp_path / "report.json", *sorted((tmp_path / "cli").iterdir())], secrets)
