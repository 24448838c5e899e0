"""Browsing an allowed PACS before asking: its studies (QIDO-RS / C-FIND at study level) and a
study's series (``fetch.list_series``), headers only, nothing of a pixel.

The web page lists what a PACS browser lists (patient name and ID, study date), so a clinician
can pick the study to ask about; what is picked travels on as an ``image_dicom`` URI
(:meth:`PacsSource.uri`), which the chat route fetches, de-identifies and reads as before.

Browsing makes medgem a gateway between the page and the PACS, so its failures are the PACS's,
not the caller's: :class:`~medgem.errors.PacsUnavailableError` (502), ``PacsRefusedError`` (the
PACS's 401/403, a 502 too) and ``PacsTimeoutError`` (504). The browse clients below are the
protocol clients with that mapping and one more question (``studies``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from medgem.errors import PacsError, PacsRefusedError, PacsTimeoutError, PacsUnavailableError
from medgem.inputs.dicom import header_int, header_text, header_values
from medgem.inputs.pacs.client import PacsClient
from medgem.inputs.pacs.dicomweb import DicomwebClient
from medgem.inputs.pacs.dimse import DimseClient, find_query
from medgem.inputs.pacs.fetch import NOT_IMAGE_SERIES, RemoteSeries, list_series
from medgem.inputs.pacs.reference import StudyReference, parse_study_reference, uid_hash

#: Study-level attributes asked for when searching: what a PACS browser's study list shows.
STUDY_FIELDS = ("StudyInstanceUID", "PatientName", "PatientID", "StudyDate", "StudyDescription",
                "AccessionNumber", "ModalitiesInStudy", "NumberOfStudyRelatedSeries",
                "NumberOfStudyRelatedInstances")
#: The most studies one search returns (a browser pages; a wide search says it was cut).
MAX_STUDIES = 200
_T = TypeVar("_T")


@dataclass(frozen=True)
class PacsSource:
    """One entry of the operator's allowlist, as the browser reaches it.

    Attributes:
        entry: the entry as listed to the page and named back by it (no credential: the
            allowlist holds none; the page sends the PACS's token with each search).
        protocol: "dicomweb" or "dimse".
        root: the DICOMweb service root, or ``host:port`` for DIMSE.
        called_ae: the DIMSE peer's AE title ("" for DICOMweb).
    """

    entry: str
    protocol: str
    root: str
    called_ae: str = ""

    @property
    def where(self) -> str:
        """The PACS as errors and audit events name it."""
        return self.root if self.protocol == "dicomweb" else f"{self.called_ae}@{self.root}"

    def uri(self, study: str, series: str | None = None) -> str:
        """The ``image_dicom`` URI of a study (or one series of it) on this PACS."""
        if self.protocol == "dimse":
            return f"dimse://{self.called_ae}@{self.root}/{study}" + (f"/{series}" if series else "")
        return f"{self.root}/studies/{study}" + (f"/series/{series}" if series else "")

    def reference(self, study: str, *, token: str | None, timeout: float) -> StudyReference:
        """The study as a reference carrying the caller's token and the browse timeout.

        Raises:
            PacsError: ``study`` is not a DICOM UID.
        """
        return parse_study_reference(self.uri(study)).with_access(token or None, timeout)

    def audit_fields(self) -> dict[str, object]:
        return {"protocol": self.protocol, "pacs": self.where}


def pacs_sources(allowed: Sequence[str]) -> list[PacsSource]:
    """The allowlist's entries that can be browsed: DICOMweb service roots and DIMSE peers (an
    entry naming one study is allowed for fetching but is no root to search)."""
    sources = []
    for raw in allowed:
        entry = raw.strip().rstrip("/")
        probe = f"{entry}/1" if entry.startswith("dimse://") else f"{entry}/studies/1"
        try:
            parsed = parse_study_reference(probe)
        except PacsError:
            continue
        sources.append(PacsSource(entry, parsed.protocol, parsed.root, parsed.called_ae))
    return sources


@dataclass(frozen=True)
class StudyQuery:
    """What a study search matches on; empty fields match everything.

    Attributes:
        patient_name: DICOM person-name matching; without a ``*`` or ``?`` it matches names
            that start with it (``doe`` finds ``DOE^JANE``).
        patient_id: the patient ID, exactly (or with wildcards).
        accession: the accession number.
        date_from: first study date, ``YYYYMMDD`` (or ``YYYY-MM-DD``).
        date_to: last study date.
        modality: a modality in the study (``CT``).
        limit: the most studies returned.
    """

    patient_name: str = ""
    patient_id: str = ""
    accession: str = ""
    date_from: str = ""
    date_to: str = ""
    modality: str = ""
    limit: int = 50

    def filters(self) -> dict[str, str]:
        """The matching keys as QIDO-RS query parameters and C-FIND identifier values."""
        found: dict[str, str] = {}
        name = self.patient_name.strip()
        if name:
            found["PatientName"] = name if re.search(r"[*?]", name) else name + "*"
        for key, value in (("PatientID", self.patient_id), ("AccessionNumber", self.accession)):
            if value.strip():
                found[key] = value.strip()
        start, end = _date(self.date_from), _date(self.date_to)
        if start or end:
            found["StudyDate"] = start if start == end else f"{start}-{end}"
        if self.modality.strip():
            found["ModalitiesInStudy"] = self.modality.strip().upper()
        return found

    def audit_fields(self) -> dict[str, object]:
        """Which keys were matched on, never their values (a name typed is a patient's name)."""
        return {"searched": sorted(self.filters()), "limit": self.limit}


def _date(text: str) -> str:
    return text.strip().replace("-", "")


@dataclass(frozen=True)
class RemoteStudy:
    """One study as a PACS lists it (identifying: for the page's list, never for the audit)."""

    uid: str
    patient_name: str
    patient_id: str
    date: str
    description: str
    accession: str
    modalities: tuple[str, ...]
    series: int | None
    instances: int | None


@dataclass(frozen=True)
class StudyListing:
    """A search's studies (newest first), whether ``limit`` cut it, and the bytes it moved."""

    studies: tuple[RemoteStudy, ...]
    truncated: bool
    bytes_moved: int

    def audit_fields(self) -> dict[str, object]:
        return {"studies": [uid_hash(s.uid) for s in self.studies], "matches": len(self.studies),
                "truncated": self.truncated, "bytes": self.bytes_moved}


@dataclass(frozen=True)
class SeriesListing:
    """A study's series and the bytes listing them moved."""

    study: str
    series: tuple[RemoteSeries, ...]
    bytes_moved: int

    def audit_fields(self) -> dict[str, object]:
        return {"study": uid_hash(self.study), "series": [uid_hash(s.uid) for s in self.series],
                "matches": len(self.series), "bytes": self.bytes_moved}


def is_image_series(series: RemoteSeries) -> bool:
    """Whether a question can be asked about the series (``fetch`` refuses the others)."""
    return series.modality not in NOT_IMAGE_SERIES


class BrowseClient(PacsClient, Protocol):
    """What browsing asks of a PACS: a protocol client's questions plus ``studies``."""

    def studies(self, filters: Mapping[str, str], limit: int) -> list[Any]:
        """The matching studies as pydicom Datasets of ``STUDY_FIELDS`` (at most ``limit``)."""
        ...


def search_studies(source: PacsSource, query: StudyQuery, *, token: str | None,
                   timeout: float) -> StudyListing:
    """The studies on ``source`` matching ``query``, newest first.

    Raises:
        PacsUnavailableError: the PACS is down or answered an error (502).
        PacsRefusedError: it refused the credentials (502).
        PacsTimeoutError: it did not answer within ``timeout`` (504).
    """
    # The clients are made from a reference; a search names no study, so any UID stands in.
    limit = max(1, min(query.limit, MAX_STUDIES))
    with closing(open_browser(source.reference("1", token=token, timeout=timeout))) as client:
        found = client.studies(query.filters(), limit + 1)  # one more says "there are more"
    studies = sorted((_study(ds) for ds in found), key=lambda s: (s.date, s.uid), reverse=True)
    return StudyListing(tuple(studies[:limit]), len(studies) > limit, client.bytes_moved)


def browse_series(source: PacsSource, study: str, *, token: str | None,
                  timeout: float) -> SeriesListing:
    """The series of one study on ``source`` (``fetch.list_series`` through a browse client).

    Raises:
        PacsError: ``study`` is not a UID, or the PACS does not know it (400).
        PacsUnavailableError: as :func:`search_studies`.
    """
    reference = source.reference(study, token=token, timeout=timeout)
    with closing(open_browser(reference)) as client:
        series = list_series(reference, client)
    return SeriesListing(study, tuple(series), client.bytes_moved)


def open_browser(reference: StudyReference) -> BrowseClient:
    """The browse client for the reference's protocol, not yet connected.

    Raises:
        MissingDependencyError: the ``pacs`` extra is not installed.
    """
    return DimseBrowser(reference) if reference.protocol == "dimse" else DicomwebBrowser(reference)


class DicomwebBrowser(DicomwebClient):
    """The DICOMweb client with QIDO-RS at study level, its failures as a gateway's."""

    def studies(self, filters: Mapping[str, str], limit: int) -> list[Any]:
        """QIDO-RS ``/studies`` with the wildcards left as they are: ``dicomweb-client``
        percent-encodes ``*`` (``%2A``), which Orthanc then matches as a literal star, so the
        query goes through the session the client was given (its token, its byte count)."""
        from urllib.parse import urlencode

        from pydicom import Dataset

        params = [*filters.items(), *(("includefield", name) for name in STUDY_FIELDS),
                  ("limit", str(limit))]
        url = f"{self.reference.root}/studies?{urlencode(params, safe='*?')}"

        def get() -> list[Any]:
            response = self._session.get(url, headers={"Accept": "application/dicom+json"},
                                          timeout=self.reference.timeout)
            response.raise_for_status()
            try:
                return [Dataset.from_json(item) for item in (response.json() if response.content else [])]
            except (TypeError, KeyError, AttributeError) as exc:  # JSON, but not DICOM JSON
                raise ValueError("not a DICOM JSON listing") from exc

        return self._call(get, "the studies")

    def _failure(self, kind: str, what: str, status: int = 0) -> PacsError:
        """The same failures as the page's gateway errors: the PACS's fault is a 502 (its
        401/403 too, so the page does not take it for a bad medgem key), its silence a 504."""
        where = self.reference.where
        if kind == "refused":
            return PacsRefusedError(f"{where} refused medgem ({status}) while listing {what}",
                                    "enter the PACS token in the PACS panel (access_credential)")
        if kind == "missing":
            return PacsError(f"{where} has no {what} asked for (404)",
                             "check that the allowlisted URL is the DICOMweb root and the UID exists")
        if kind == "timeout":
            return PacsTimeoutError(f"{where} did not answer within {self.reference.timeout:g} s "
                                    f"while listing {what}", "check that the PACS is up, then try again")
        if kind == "unreachable":
            return PacsUnavailableError(f"cannot reach {where} (connection failed)",
                                        "check that the PACS is up and its URL is right")
        if kind == "garbled":
            return PacsUnavailableError(f"{where} answered something that is not a DICOMweb listing "
                                        f"while listing {what}",
                                        "check that the allowlisted URL is the PACS's DICOMweb root")
        return PacsUnavailableError(f"{where} answered {status} while listing {what}",
                                    "check the PACS, then try again")


class DimseBrowser(DimseClient):
    """The DIMSE client with C-FIND at study level; every failure of the peer is a 502 (a
    silent peer reads the same as one that refused medgem's AE title, so no 504 here)."""

    def studies(self, filters: Mapping[str, str], limit: int) -> list[Any]:
        query = find_query("STUDY", {name: filters.get(name) for name in STUDY_FIELDS})
        return self._find(query)[:limit]

    def _find(self, query: Any) -> list[Any]:
        try:
            return super()._find(query)
        except PacsUnavailableError:
            raise
        except PacsError as exc:
            raise PacsUnavailableError(exc.message, exc.hint) from None


def _study(ds: Any) -> RemoteStudy:
    return RemoteStudy(
        header_text(ds, "StudyInstanceUID"), person_name(ds.get("PatientName")),
        header_text(ds, "PatientID"), header_text(ds, "StudyDate"),
        header_text(ds, "StudyDescription"), header_text(ds, "AccessionNumber"),
        tuple(header_values(ds, "ModalitiesInStudy")), header_int(ds, "NumberOfStudyRelatedSeries"),
        header_int(ds, "NumberOfStudyRelatedInstances"))


def person_name(value: Any) -> str:
    """A DICOM person name as people read it: ``DOE^JANE^Q`` -> ``DOE, JANE Q``."""
    if value in (None, ""):
        return ""
    family, _, rest = str(value).partition("^")
    given = " ".join(part for part in rest.split("^")[:2] if part)
    return f"{family}, {given}" if given else family
