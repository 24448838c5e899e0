"""Request and response shapes of the PACS browse routes (``/api/pacs/...``).

Searches are POSTs: the PACS's token and the patient's name travel in the body, never in a URL
that proxies and access logs keep. Bodies forbid unknown fields like every medgem body.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from medgem.server.protocol import _Body

_UID = r"^[0-9]+(\.[0-9]+)*$"
_DATE = r"^([0-9]{8}|[0-9]{4}-[0-9]{2}-[0-9]{2})?$"
# No backslash (DICOM's value separator) and no control characters in a matching key.
_KEY = r"^[^\\\x00-\x1f]*$"


class PacsSourceCard(BaseModel):
    """One PACS the operator allowed (``serve --allow-pacs``); ``source`` names it back."""

    source: str
    protocol: Literal["dicomweb", "dimse"]
    where: str


class PacsSources(BaseModel):
    """The PACS the page may browse; empty when the server allows none (the page hides its panel)."""

    sources: list[PacsSourceCard]


class _OnSource(_Body):
    source: str = Field(max_length=2048, description="a `source` of GET /api/pacs/sources")
    access_credential: str | None = Field(default=None, max_length=8192,
                                          description="the PACS's bearer token, when it wants one")


class StudySearch(_OnSource):
    """``POST /api/pacs/studies``: empty fields match everything."""

    patient_name: str = Field(default="", max_length=64, pattern=_KEY,
                              description="matches names starting with it unless it has * or ?")
    patient_id: str = Field(default="", max_length=64, pattern=_KEY)
    accession: str = Field(default="", max_length=16, pattern=_KEY)
    date_from: str = Field(default="", pattern=_DATE, description="YYYYMMDD or YYYY-MM-DD")
    date_to: str = Field(default="", pattern=_DATE)
    modality: str = Field(default="", max_length=16, pattern=r"^[A-Za-z]*$")
    limit: int = Field(default=50, ge=1, le=200)


class StudyCard(BaseModel):
    """One study as the PACS lists it; ``dicom_source`` is its ``image_dicom`` URI."""

    study_uid: str
    patient_name: str
    patient_id: str
    study_date: str
    description: str
    accession: str
    modalities: list[str]
    series_count: int | None
    instance_count: int | None
    dicom_source: str


class StudyList(BaseModel):
    source: str
    studies: list[StudyCard]
    truncated: bool = Field(description="more studies matched than `limit`: narrow the search")


class SeriesSearch(_OnSource):
    """``POST /api/pacs/series``: the series of one study."""

    study_uid: str = Field(max_length=64, pattern=_UID)


class SeriesCard(BaseModel):
    """One series; ``image`` says whether a question can be asked about it."""

    series_uid: str
    number: int | None
    modality: str
    body_part: str
    description: str
    instances: int | None
    image: bool
    dicom_source: str


class SeriesList(BaseModel):
    source: str
    study_uid: str
    series: list[SeriesCard]
