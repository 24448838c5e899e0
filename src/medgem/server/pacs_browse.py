"""The page's PACS browser: the allowed sources, a study search on one, a study's series.

Only a PACS of the operator's allowlist (``serve --allow-pacs``) is ever asked: any other
``source`` is a 403 before anything leaves the server. Every question sent to a PACS is an
audit event (``pacs_query``: who, which PACS, the keys matched on and the UIDs listed, as
hashes), whether it was answered or failed; the names and IDs the page shows never enter it.
The routes (in :mod:`routes`) run these functions in a thread: they block on the PACS, each
request bounded by ``ServerConfig.pacs_browse_timeout_s``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from medgem.audit import AuditStore
from medgem.errors import PacsForbiddenError, error_body
from medgem.inputs.pacs.browse import (
    PacsSource,
    SeriesListing,
    StudyListing,
    StudyQuery,
    browse_series,
    is_image_series,
    pacs_sources,
    search_studies,
)
from medgem.server import pacs_protocol as pp
from medgem.server.server_config import ServerConfig

_T = TypeVar("_T", StudyListing, SeriesListing)


def list_sources(config: ServerConfig) -> pp.PacsSources:
    """The PACS the page may browse (none without ``--allow-pacs``)."""
    return pp.PacsSources(sources=[
        pp.PacsSourceCard(source=s.entry, protocol="dimse" if s.protocol == "dimse" else "dicomweb",
                          where=s.where)
        for s in pacs_sources(config.allowed_pacs)])


def allowed_source(config: ServerConfig, name: str) -> PacsSource:
    """The allowlisted source the page named.

    Raises:
        PacsForbiddenError: ``name`` is not one of :func:`list_sources`' (403, nothing asked).
    """
    wanted = name.strip().rstrip("/")
    for source in pacs_sources(config.allowed_pacs):
        if source.entry == wanted:
            return source
    if not config.allowed_pacs:
        raise PacsForbiddenError("this server browses no PACS",
                                 "the operator must allow one (medgem serve --allow-pacs URL)")
    raise PacsForbiddenError(f"{wanted[:100]} is not a PACS this server may browse",
                             "choose one of GET /api/pacs/sources, or ask the operator to allow it "
                             "(medgem serve --allow-pacs URL)")


def find_studies(config: ServerConfig, store: AuditStore, user: str,
                 body: pp.StudySearch) -> pp.StudyList:
    """Search one allowed PACS's studies, the query audited.

    Raises:
        PacsForbiddenError: the source is not allowed (403).
        PacsUnavailableError: the PACS is down, refused medgem or was slow (502/504).
    """
    source = allowed_source(config, body.source)
    query = StudyQuery(body.patient_name, body.patient_id, body.accession, body.date_from,
                       body.date_to, body.modality, body.limit)
    listing = _audited(store, {"user": user, "endpoint": "/api/pacs/studies", "level": "study",
                               **source.audit_fields(), **query.audit_fields()},
                       lambda: search_studies(source, query, token=body.access_credential,
                                              timeout=config.pacs_browse_timeout_s))
    return pp.StudyList(source=source.entry, truncated=listing.truncated, studies=[
        pp.StudyCard(study_uid=s.uid, patient_name=s.patient_name, patient_id=s.patient_id,
                     study_date=_iso_date(s.date), description=s.description, accession=s.accession,
                     modalities=list(s.modalities), series_count=s.series, instance_count=s.instances,
                     dicom_source=source.uri(s.uid))
        for s in listing.studies])


def find_series(config: ServerConfig, store: AuditStore, user: str,
                body: pp.SeriesSearch) -> pp.SeriesList:
    """List one study's series on an allowed PACS, the query audited.

    Raises:
        PacsForbiddenError: the source is not allowed (403).
        PacsError: the PACS does not know the study (400).
        PacsUnavailableError: as :func:`find_studies`.
    """
    source = allowed_source(config, body.source)
    listing = _audited(store, {"user": user, "endpoint": "/api/pacs/series", "level": "series",
                               **source.audit_fields()},
                       lambda: browse_series(source, body.study_uid, token=body.access_credential,
                                             timeout=config.pacs_browse_timeout_s))
    return pp.SeriesList(source=source.entry, study_uid=body.study_uid, series=[
        pp.SeriesCard(series_uid=s.uid, number=s.number, modality=s.modality, body_part=s.body_part,
                      description=s.description, instances=s.instances, image=is_image_series(s),
                      dicom_source=source.uri(body.study_uid, s.uid))
        for s in listing.series])


def _audited(store: AuditStore, event: dict[str, Any], ask: Callable[[], _T]) -> _T:
    """Ask the PACS, then append the ``pacs_query`` event: the listing's hashed UIDs, or the
    failure's status and code (its message may quote a UID, so it stays out)."""
    try:
        listing = ask()
    except Exception as exc:
        status, body = error_body(exc)
        store.append("pacs_query", event | {"status": status, "error": body["error"]["code"]})
        raise
    store.append("pacs_query", event | {"status": 200, **listing.audit_fields()})
    return listing


def _iso_date(date: str) -> str:
    """``20230314`` as ``2023-03-14``; anything else as it came."""
    return f"{date[:4]}-{date[4:6]}-{date[6:8]}" if len(date) == 8 and date.isdigit() else date
