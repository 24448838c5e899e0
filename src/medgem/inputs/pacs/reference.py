"""Study references as users and clients write them: a DICOMweb URL or a ``dimse://`` address.

``https://pacs.local/dicom-web/studies/1.2.3`` (optionally ``/series/UID`` and
``/instances/UID`` after it) names a study, series or instance on a DICOMweb server: the part
before ``/studies/`` is the service root QIDO-RS and WADO-RS are asked at.
``dimse://ORTHANC@pacs.local:4242/1.2.3[/SERIES[/INSTANCE]]`` names the same on a classic DIMSE
peer (called AE title ``ORTHANC``); medgem calls it as its own AE title (``MEDGEM`` by default).
It is fetched by C-GET, unless ``?move=PORT`` or ``?move=AE@PORT`` follows: then by C-MOVE to
medgem's own storage SCP on that port, under that AE title (medgem's own by default), which the
PACS must know as a modality at this machine's address.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field, replace
from typing import Literal
from urllib.parse import urlsplit

from medgem.errors import PacsError

#: A DICOM UID: digits and dots, at most 64 characters.
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def uid_hash(uid: str) -> str:
    """What the audit trail keeps of a UID: a SHA-256 prefix, never the UID itself."""
    return hashlib.sha256(uid.encode("ascii", "replace")).hexdigest()[:24]


def _check_uid(value: str, what: str, reference: str) -> str:
    if not _UID.match(value) or len(value) > 64:
        raise PacsError(f"'{value[:70]}' in {reference} is not a DICOM {what} UID",
                        "give the UID as digits and dots (e.g. 1.2.840.113619...)")
    return value


@dataclass(frozen=True)
class StudyReference:
    """Where a study (or one series or instance of it) lives, and how to reach it.

    Attributes:
        protocol: "dicomweb" or "dimse".
        root: the DICOMweb service root (``https://host/dicom-web``), or ``host:port`` for DIMSE.
        study: StudyInstanceUID.
        series: SeriesInstanceUID when the reference names one series (or an instance in it).
        instance: SOPInstanceUID when it names one instance.
        called_ae: the peer's AE title (DIMSE).
        calling_ae: medgem's own AE title (DIMSE).
        token: a bearer token passed to the DICOMweb server (never logged).
        timeout: seconds any one request may take before the PACS counts as down.
        move_port: the port medgem's storage SCP listens on for a C-MOVE (DIMSE); 0 fetches
            by C-GET.
        move_ae: the AE title the PACS knows that SCP by; empty means ``calling_ae``.
    """

    protocol: Literal["dicomweb", "dimse"]
    root: str
    study: str
    series: str | None = None
    instance: str | None = None
    called_ae: str = ""
    calling_ae: str = "MEDGEM"
    token: str | None = field(default=None, repr=False, compare=False)
    timeout: float = 30.0
    move_port: int = 0
    move_ae: str = ""

    @property
    def host(self) -> str:
        return self.root.rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.root.rsplit(":", 1)[1])

    @property
    def move_destination(self) -> str:
        """The AE title a C-MOVE names as destination: medgem's storage SCP as the PACS knows it."""
        return self.move_ae or self.calling_ae

    @property
    def where(self) -> str:
        """The PACS as errors name it (no UIDs, no token)."""
        return self.root if self.protocol == "dicomweb" else f"{self.called_ae}@{self.root}"

    def with_access(self, token: str | None = None, timeout: float | None = None,
                    calling_ae: str | None = None) -> StudyReference:
        """The same reference with a token, timeout or own AE title set (None keeps each)."""
        return replace(self, token=token if token is not None else self.token,
                       timeout=timeout if timeout is not None else self.timeout,
                       calling_ae=calling_ae or self.calling_ae)

    def audit_fields(self) -> dict[str, object]:
        """What an audit event says about the reference: the PACS and hashed UIDs only."""
        return {"protocol": self.protocol, "pacs": self.where, "study": uid_hash(self.study),
                "series": uid_hash(self.series) if self.series else None,
                "instance": uid_hash(self.instance) if self.instance else None}


def parse_study_reference(text: str) -> StudyReference:
    """A ``--study`` value or an ``image_dicom`` URI as a reference.

    Raises:
        PacsError: not a DICOMweb study/series/instance URL or a ``dimse://`` address.
    """
    text = text.strip()
    if text.startswith("dimse://"):
        return _dimse(text)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise PacsError(f"'{text[:80]}' is not a study reference",
                        "give https://HOST/dicom-web/studies/UID[/series/UID[/instances/UID]] or "
                        "dimse://AE@HOST:PORT/StudyUID")
    path = parts.path.rstrip("/")
    if "/studies/" not in path:
        raise PacsError(f"{parts.scheme}://{parts.netloc}{path} names no study (no /studies/UID)",
                        "give the DICOMweb URL of a study, series or instance")
    root, _, rest = path.partition("/studies/")
    pieces = rest.split("/")
    study = _check_uid(pieces[0], "study", text)
    series = instance = None
    extra = pieces[1:]
    if extra[:1] == ["series"] and len(extra) >= 2:
        series = _check_uid(extra[1], "series", text)
        extra = extra[2:]
        if extra[:1] == ["instances"] and len(extra) >= 2:
            instance = _check_uid(extra[1], "instance", text)
            extra = extra[2:]
    if extra:
        raise PacsError(f"{text[:100]} has '/{'/'.join(extra)}' after the UIDs",
                        "end the URL at the study, series or instance UID")
    return StudyReference("dicomweb", f"{parts.scheme}://{parts.netloc}{root}", study, series,
                          instance)


def _dimse(text: str) -> StudyReference:
    match = re.match(r"^dimse://([^@/]{1,16})@([^:/]+):(\d{1,5})/([^?]+)(?:\?(.*))?$", text)
    if not match:
        raise PacsError(f"'{text[:80]}' is not a DIMSE reference",
                        "write dimse://AE_TITLE@HOST:PORT/StudyInstanceUID[/SeriesUID[/SOPInstanceUID]]"
                        "[?move=AE@PORT]")
    ae, host, port, rest, query = match.groups()
    move_ae, move_port = _move(query, text) if query is not None else ("", 0)
    pieces = rest.strip("/").split("/")
    if len(pieces) > 3:
        raise PacsError(f"{text[:100]} has more than study/series/instance after the port",
                        "end it at the study, series or instance UID")
    study = _check_uid(pieces[0], "study", text)
    series = _check_uid(pieces[1], "series", text) if len(pieces) > 1 else None
    instance = _check_uid(pieces[2], "instance", text) if len(pieces) > 2 else None
    return StudyReference("dimse", f"{host}:{int(port)}", study, series, instance, called_ae=ae,
                          move_port=move_port, move_ae=move_ae)


def _move(query: str, text: str) -> tuple[str, int]:
    """``move=PORT`` or ``move=AE@PORT`` (the only parameter a DIMSE reference takes)."""
    match = re.match(r"^move=(?:([^@&=\s\\]{1,16})@)?(\d{1,5})$", query)
    port = int(match.group(2)) if match else 0
    if not match or not 0 < port < 65536:
        raise PacsError(f"'?{query[:40]}' in {text[:80]} is not a C-MOVE destination",
                        "write ?move=PORT or ?move=AE_TITLE@PORT: the port medgem receives on, "
                        "and the AE title the PACS knows it by (default medgem's own)")
    return match.group(1) or "", port


def is_allowed(reference: StudyReference, allowed: list[str] | tuple[str, ...]) -> bool:
    """Whether the operator's allowlist (``serve --allow-pacs``) covers ``reference``: a
    DICOMweb root that equals, or is a path prefix of, an allowed URL; a DIMSE peer whose
    ``dimse://AE@host:port`` is listed, with the same ``?move=`` when the reference has one (a
    C-MOVE opens a listening port here, which only the operator may choose)."""
    entries = [entry.rstrip("/") for entry in allowed]
    if reference.protocol == "dicomweb":
        return any(reference.root == entry or reference.root.startswith(entry + "/")
                   for entry in entries)
    peer = f"dimse://{reference.called_ae}@{reference.root}"
    if reference.move_port:
        spellings = {f"{peer}?move={reference.move_destination}@{reference.move_port}"}
        if not reference.move_ae:
            spellings.add(f"{peer}?move={reference.move_port}")
    else:
        spellings = {peer}
    return any(entry in spellings for entry in entries)
