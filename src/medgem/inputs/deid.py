"""De-identification of DICOM datasets before anything is stored, logged or exported.

Follows the spirit of the DICOM PS3.15 basic profile, kept small and explicit: identifying text
attributes are removed, person names and all dates/times are emptied, patient ID becomes a keyed
pseudonym, private tags go, and instance UIDs are remapped with a keyed hash (HMAC-SHA256) so the
same UID always maps to the same new UID under one key (series stay series) while nobody without
the key can map back. Standard UIDs (SOP classes, transfer syntaxes) are kept. Burned-in text in
the pixels is not touched: check BurnedInAnnotation before sharing images.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
from typing import Any

from medgem.errors import require

#: Attributes removed outright (identifying or free text that may identify).
REMOVED_KEYWORDS: frozenset[str] = frozenset({
    "PatientBirthDate", "PatientBirthTime", "PatientAge", "PatientAddress", "PatientTelephoneNumbers",
    "PatientMotherBirthName", "OtherPatientIDs", "OtherPatientIDsSequence", "OtherPatientNames",
    "PatientBirthName", "MilitaryRank", "BranchOfService", "MedicalRecordLocator", "EthnicGroup",
    "Occupation", "PatientComments", "AdditionalPatientHistory", "PatientInsurancePlanCodeSequence",
    "PatientWeight", "PatientSize", "CountryOfResidence", "RegionOfResidence", "PregnancyStatus",
    "AccessionNumber", "StudyID", "InstitutionName", "InstitutionAddress",
    "InstitutionalDepartmentName", "InstitutionCodeSequence", "StationName", "DeviceSerialNumber",
    "ReferringPhysicianAddress", "ReferringPhysicianTelephoneNumbers", "RequestAttributesSequence",
    "RequestingService", "ImageComments", "StudyComments", "DerivationDescription",
    "AdmissionID", "IssuerOfPatientID", "PerformedProcedureStepID", "ScheduledProcedureStepID",
    "RequestedProcedureID", "FillerOrderNumberImagingServiceRequest",
    "PlacerOrderNumberImagingServiceRequest", "ContentCreatorName", "ProtocolName",
    "PerformedProcedureStepDescription", "ReferencedPatientSequence", "ReferencedStudySequence",
})

#: Value representations emptied wherever they occur (names, dates, times).
EMPTIED_VRS: frozenset[str] = frozenset({"PN", "DA", "DT", "TM"})


def remap_uid(uid: str, key: bytes) -> str:
    """A new UID under the 2.25 root derived from HMAC-SHA256(key, uid): stable and one-way."""
    digest = hmac.new(key, uid.encode("ascii", "replace"), hashlib.sha256).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


def pseudonym(value: str, key: bytes, prefix: str = "ANON") -> str:
    """A short keyed pseudonym (e.g. for PatientID): the same input gives the same output."""
    digest = hmac.new(key, value.encode("utf-8", "replace"), hashlib.sha256).hexdigest()
    return f"{prefix}-{digest[:16]}"


def _is_standard_uid(uid: str) -> bool:
    uid_module: Any = require("pydicom.uid", "imaging", "De-identifying DICOM", "pydicom")
    return bool(uid_module.UID(uid).name != uid)


def _clean(dataset: Any, key: bytes) -> None:
    for element in list(dataset):
        if element.keyword in REMOVED_KEYWORDS:
            del dataset[element.tag]
        elif element.VR == "SQ":
            for item in element.value:
                _clean(item, key)
        elif element.VR in EMPTIED_VRS:
            element.value = ""
        elif element.VR == "UI" and element.value:
            values = element.value if element.VM > 1 else [element.value]
            mapped = [v if _is_standard_uid(str(v)) else remap_uid(str(v), key) for v in values]
            element.value = mapped if element.VM > 1 else mapped[0]


def deidentify(dataset: Any, key: bytes) -> Any:
    """A de-identified copy of a pydicom ``Dataset`` (pixel data kept, the input unchanged):
    names, dates and identifying attributes gone, PatientID pseudonymised, UIDs remapped (file
    meta included), private tags removed, PatientIdentityRemoved = YES.

    ``key`` is the secret for the keyed hashes: keep it to map the same patient/UIDs consistently
    across uploads, rotate it to unlink them.
    """
    if not key:
        raise ValueError("deidentify needs a non-empty key")
    clean = copy.deepcopy(dataset)  # Dataset.copy() shares elements: edits would leak back
    clean.remove_private_tags()
    patient_id = str(clean.get("PatientID", "") or "")
    _clean(clean, key)
    clean.PatientID = pseudonym(patient_id, key) if patient_id else ""
    clean.PatientName = "ANONYMOUS"
    clean.PatientIdentityRemoved = "YES"
    clean.DeidentificationMethod = "medgem: basic profile subset, keyed-hash UIDs, dates removed"
    meta = getattr(clean, "file_meta", None)
    if meta is not None and "SOPInstanceUID" in clean:
        meta.MediaStorageSOPInstanceUID = clean.SOPInstanceUID
    return clean
