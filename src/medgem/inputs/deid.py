"""De-identification of DICOM datasets before anything is stored, logged or exported, by the
DICOM PS3.15 Basic Application Level Confidentiality Profile (Annex E).

Every attribute the profile names (``deid_profile.PROFILE``, free-text descriptions and
comments included) gets the profile's action, or the action of the profile options asked for;
private tags go; UIDs are remapped with a keyed hash (HMAC-SHA256) so the same UID always maps
to the same new UID under one key (series stay series) while nobody without the key can map
back; standard UIDs (SOP classes, transfer syntaxes) are kept. Beyond the profile, attributes
it does not name are still cleaned by kind: person names emptied, dates and times emptied,
free text (LT, ST, UT) emptied, unknown instance UIDs remapped.

The choices the profile leaves open: "X/Z", "X/D", "X/Z/D" remove; "Z/D" empties (PatientID
becomes a keyed pseudonym, PatientName "ANONYMOUS"); "X/Z/U*" and "U" remap; "D" on a sequence
keeps it and cleans its items by the same table; "C" on text keeps it after removing every
identifying value found in the dataset (names, IDs, dates) and long digit runs; "C" on a date
shifts it back by a keyed number of days per patient.

Burned-in text in the pixels is not touched: an image declaring Burned In Annotation = YES is
refused unless the caller allows it.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import hmac
import re
from collections.abc import Iterable
from typing import Any

from medgem.errors import ImageInputError, require
from medgem.inputs.deid_profile import PROFILE, PROFILE_OPTIONS
from medgem.inputs.dicom import burned_in

#: Value representations emptied wherever the profile does not name the attribute.
EMPTIED_VRS: frozenset[str] = frozenset({"PN", "DA", "DT", "TM", "LT", "ST", "UT"})
#: A dummy value per VR for the profile's "D" action.
DUMMIES: dict[str, Any] = {
    "PN": "ANONYMOUS", "LO": "ANONYMOUS", "SH": "ANONYMOUS", "LT": "", "ST": "", "UT": "",
    "CS": "ANONYMOUS", "AE": "ANONYMOUS", "UC": "ANONYMOUS", "UR": "", "DA": "19000101",
    "DT": "19000101000000", "TM": "000000", "IS": "0", "DS": "0", "AS": "000Y",
}
#: Options under which a "C" on a date means "shift it".
_DATE_VRS = frozenset({"DA", "DT"})
_LONG_DIGITS = re.compile(r"\d{5,}")
#: Profile attributes whose values identify (IDs, numbers, addresses, names of places).
_IDENTIFIER_ENDINGS = ("ID", "IDs", "Number", "Address", "Name", "Names", "Locator")


class BurnedInAnnotationError(ImageInputError):
    """The image declares text burned into its pixels and the policy refuses it."""


def remap_uid(uid: str, key: bytes) -> str:
    """A new UID under the 2.25 root derived from HMAC-SHA256(key, uid): stable and one-way."""
    digest = hmac.new(key, uid.encode("ascii", "replace"), hashlib.sha256).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


def pseudonym(value: str, key: bytes, prefix: str = "ANON") -> str:
    """A short keyed pseudonym (e.g. for PatientID): the same input gives the same output."""
    digest = hmac.new(key, value.encode("utf-8", "replace"), hashlib.sha256).hexdigest()
    return f"{prefix}-{digest[:16]}"


def check_options(options: Iterable[str]) -> frozenset[str]:
    """The profile options asked for, checked against ``PROFILE_OPTIONS``.

    Raises:
        ValueError: an option the profile does not define (or medgem does not offer).
    """
    chosen = frozenset(options)
    unknown = sorted(chosen - PROFILE_OPTIONS.keys())
    if unknown:
        raise ValueError(f"unknown de-identification option(s) {', '.join(unknown)}; "
                         f"choose from {', '.join(PROFILE_OPTIONS)}")
    return chosen


def _is_standard_uid(uid: str) -> bool:
    uid_module: Any = require("pydicom.uid", "imaging", "De-identifying DICOM", "pydicom")
    return bool(uid_module.UID(uid).name != uid)


class _Cleaner:
    """One dataset's de-identification: the key, the options and the identifying values found
    in it (for cleaning free text)."""

    def __init__(self, dataset: Any, key: bytes, options: frozenset[str]) -> None:
        self.key = key
        self.options = options
        self.identifiers = sorted(_identifying_values(dataset), key=len, reverse=True)
        patient = str(dataset.get("PatientID", "") or "")
        digest = hmac.new(key, f"date-shift:{patient}".encode(), hashlib.sha256).digest()
        self.shift_days = 1 + int.from_bytes(digest[:4], "big") % 3650

    def action(self, keyword: str) -> str | None:
        """The action for an attribute the profile names (None: it names it not)."""
        entry = PROFILE.get(keyword)
        if entry is None:
            return None
        basic, by_option = entry
        chosen = [by_option[o] for o in self.options if o in by_option]
        if "K" in chosen:
            return "K"
        if "C" in chosen:
            return "C"
        return basic

    def clean(self, dataset: Any) -> None:
        for element in list(dataset):
            if element.tag.is_private or 0x5000 <= element.tag.group <= 0x50FF:  # curve data: X
                del dataset[element.tag]
                continue
            action = self.action(element.keyword)
            if action is None:
                self.by_kind(element)
            else:
                self.apply(dataset, element, action)

    def apply(self, dataset: Any, element: Any, action: str) -> None:
        if element.VR == "SQ" and action in ("K", "U", "X/Z/U*", "D"):
            # kept (with UIDs remapped inside, for "X/Z/U*"): its items get the same table
            for item in element.value:
                self.clean(item)
            return
        if action == "K":
            return
        if action in ("U", "X/Z/U*"):
            self.remap(element, force=action == "U" and "retain_uids" not in self.options)
        elif action.startswith("X"):
            del dataset[element.tag]
        elif action in ("Z", "Z/D"):
            element.value = [] if element.VR == "SQ" else ""
        elif action == "D":
            if element.VR == "UI":
                self.remap(element, force=True)
            else:
                element.value = DUMMIES.get(element.VR, "" if isinstance(element.value, str) else None)
        elif action == "C":
            self.clean_value(element)

    def by_kind(self, element: Any) -> None:
        """Attributes the profile does not name: clean by what they are."""
        if element.VR == "SQ":
            for item in element.value:
                self.clean(item)
        elif element.VR in ("DA", "DT", "TM") and (
                "retain_full_dates" in self.options or "retain_modified_dates" in self.options):
            if "retain_full_dates" not in self.options:
                self.clean_value(element)
        elif element.VR in EMPTIED_VRS:
            element.value = ""
        elif element.VR == "UI":
            self.remap(element, force=False)

    def remap(self, element: Any, *, force: bool) -> None:
        if not element.value or "retain_uids" in self.options:
            return
        values = element.value if element.VM > 1 else [element.value]
        mapped = [remap_uid(str(v), self.key) if force or not _is_standard_uid(str(v)) else v
                  for v in values]
        element.value = mapped if element.VM > 1 else mapped[0]

    def clean_value(self, element: Any) -> None:
        """The profile's "C": shift dates, recurse into sequences, scrub text."""
        if element.VR == "SQ":
            for item in element.value:
                self.clean(item)
        elif element.VR in _DATE_VRS:
            element.value = self.shift(str(element.value or ""))
        elif element.VR == "TM":
            return
        elif isinstance(element.value, str):
            element.value = self.scrub(element.value)
        elif element.VR not in ("US", "SS", "UL", "SL", "FL", "FD", "IS", "DS"):
            element.value = DUMMIES.get(element.VR, "")

    def shift(self, value: str) -> str:
        if len(value) < 8 or not value[:8].isdigit():
            return ""
        try:
            day = datetime.date(int(value[:4]), int(value[4:6]), int(value[6:8]))
        except ValueError:
            return ""
        shifted = day - datetime.timedelta(days=self.shift_days)
        return shifted.strftime("%Y%m%d") + value[8:]

    def scrub(self, text: str) -> str:
        for value in self.identifiers:
            text = re.sub(re.escape(value), "***", text, flags=re.IGNORECASE)
        return _LONG_DIGITS.sub("***", text)


def _identifying_values(dataset: Any) -> set[str]:
    """Names (and their parts), IDs and dates found anywhere in the dataset: what a cleaned
    free-text value must not contain."""
    found: set[str] = set()
    for element in dataset.iterall():
        if element.VR == "SQ" or not element.value:
            continue
        values = element.value if element.VM > 1 else [element.value]
        identifying = element.VR in ("PN", "DA") or (
            element.keyword in PROFILE and element.VR in ("LO", "SH", "LT", "ST")
            and element.keyword.endswith(_IDENTIFIER_ENDINGS))
        if not identifying:
            continue
        for value in values:
            text = str(value)
            parts = re.split(r"[\^=\s,]+", text) if element.VR == "PN" else [text]
            if element.VR == "DA" and len(text) == 8:
                parts.append(f"{text[:4]}-{text[4:6]}-{text[6:]}")
            found.update(p for p in parts if len(p) >= 3)
    return found


def deidentify(dataset: Any, key: bytes, options: Iterable[str] = (), *,
               allow_burned_in: bool = False) -> Any:
    """A de-identified copy of a pydicom ``Dataset`` (pixel data kept, the input unchanged),
    by the Basic Application Level Confidentiality Profile with the given options.

    Args:
        dataset: the dataset to clean.
        key: the secret for the keyed hashes: keep it to map the same patient/UIDs consistently
            across uploads, rotate it to unlink them.
        options: profile options (``PROFILE_OPTIONS``), e.g. ("retain_modified_dates",
            "clean_descriptors").
        allow_burned_in: accept images declaring Burned In Annotation = YES (the text in the
            pixels stays); refused by default.

    Raises:
        ValueError: an empty key or an unknown option.
        BurnedInAnnotationError: burned-in annotation and ``allow_burned_in`` is False.
    """
    if not key:
        raise ValueError("deidentify needs a non-empty key")
    chosen = check_options(options)
    if burned_in(dataset) and not allow_burned_in:
        raise BurnedInAnnotationError(
            "the image declares Burned In Annotation = YES: text in its pixels cannot be removed",
            "mask the text first, or allow burned-in annotation explicitly")
    cleaner = _Cleaner(dataset, key, chosen)
    clean = copy.deepcopy(dataset)  # Dataset.copy() shares elements: edits would leak back
    clean.remove_private_tags()
    patient_id = str(clean.get("PatientID", "") or "")
    cleaner.clean(clean)
    clean.PatientID = pseudonym(patient_id, key) if patient_id else ""
    clean.PatientName = "ANONYMOUS"
    clean.PatientIdentityRemoved = "YES"
    _record_method(clean, chosen)
    meta = getattr(clean, "file_meta", None)
    if meta is not None and "SOPInstanceUID" in clean:
        meta.MediaStorageSOPInstanceUID = clean.SOPInstanceUID
    return clean


def _record_method(clean: Any, options: frozenset[str]) -> None:
    """What was done, as PS3.15 asks: the method text and code sequence, and whether dates
    were kept, shifted or removed."""
    from pydicom.dataset import Dataset

    codes = ["113100", *sorted(PROFILE_OPTIONS[o] for o in options)]
    clean.DeidentificationMethod = "medgem: DICOM PS3.15 basic profile" + (
        f" with {', '.join(sorted(options))}" if options else "")
    items = []
    for code in codes:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator = code, "DCM"
        items.append(item)
    clean.DeidentificationMethodCodeSequence = items
    clean.LongitudinalTemporalInformationModified = (
        "UNMODIFIED" if "retain_full_dates" in options else
        "MODIFIED" if "retain_modified_dates" in options else "REMOVED")
