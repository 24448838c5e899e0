"""DICOMweb through ``dicomweb-client``: QIDO-RS to find, WADO-RS to fetch, STOW-RS to store.

Every request carries the bearer token (when given) and a bounded timeout; HTTP failures become
one-line ``PacsError``s (401/403: the token; 404: the UID; connection refused or timed out: the
PACS is down or slow).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Any

from medgem.errors import (
    PacsError,
    PacsRefusedError,
    PacsTimeoutError,
    PacsUnavailableError,
    require,
)
from medgem.inputs.pacs.client import INSTANCE_FIELDS, SERIES_FIELDS
from medgem.inputs.pacs.reference import StudyReference


class DicomwebClient:
    """``PacsClient`` over DICOMweb; ``bytes_moved`` counts every response body."""

    def __init__(self, reference: StudyReference) -> None:
        client_module: Any = require("dicomweb_client", "pacs", "Reading studies over DICOMweb",
                                     "dicomweb-client")
        import requests

        self.reference = reference
        self.bytes_moved = 0
        self._content_type = ""  # the last answer's, for the syntax frames came in
        # Our own session: the client sets the token on it, and browse.py queries through it.
        self._session = session = requests.Session()
        session.hooks["response"].append(self._count)
        headers = {"Authorization": f"Bearer {reference.token}"} if reference.token else None
        self._client = client_module.DICOMwebClient(reference.root, session=session, headers=headers,
                                                    timeout=reference.timeout)
        # No silent retries: its default retries every failure five times with back-off, so a
        # PACS that is down would take minutes to report instead of one timeout.
        self._client.set_http_retry_params(retry=False)

    def _count(self, response: Any, *args: Any, **kwargs: Any) -> None:
        self.bytes_moved += len(response.content)
        self._content_type = response.headers.get("Content-Type", "")

    def series(self, study: str) -> list[Any]:
        found = self._call(lambda: self._client.search_for_series(
            study, fields=SERIES_FIELDS, get_remaining=True), "the study's series")
        return [_dataset(item) for item in found]

    def instances(self, study: str, series: str) -> list[Any]:
        found = self._call(lambda: self._client.search_for_instances(
            study, series, fields=INSTANCE_FIELDS, get_remaining=True), "the series' instances")
        return [_dataset(item) for item in found]

    def retrieve(self, study: str, series: str, instances: Sequence[str]) -> Iterator[Any]:
        for uid in instances:
            yield self._call(lambda uid=uid: self._client.retrieve_instance(study, series, uid),
                             "an instance")

    def series_metadata(self, study: str, series: str) -> list[Any]:
        """Every instance's header (WADO-RS metadata): no pixels, bulk data left empty."""
        found = self._call(lambda: self._client.retrieve_series_metadata(study, series),
                           "the series' metadata")
        return [_dataset(item, headers_only=True) for item in found]

    def frames(self, study: str, series: str, instance: str, numbers: Sequence[int],
               media_type: tuple[str, str]) -> tuple[list[bytes], tuple[str, str]]:
        """Frames of one instance by number (1-based), in one request, asked for as
        ``media_type`` (media type, transfer syntax; ``*`` for as stored).

        Returns:
            (the frames' bytes, the (media type, transfer syntax) the answer names).
        """
        span = f"{numbers[0]}" if len(numbers) == 1 else f"{min(numbers)}-{max(numbers)}"
        found = self._call(lambda: self._client.retrieve_instance_frames(
            study, series, instance, frame_numbers=list(numbers), media_types=(media_type,)),
            f"frames {span} of slide level …{instance[-12:]}")
        return list(found), answered_media(self._content_type, media_type)

    def store(self, dataset: Any) -> None:
        self._call(lambda: self._client.store_instances([dataset]), "storing the report")

    def close(self) -> None:
        self._session.close()

    def _call(self, action: Any, what: str) -> Any:
        """``action()``, its failures sorted once into kinds and raised as :meth:`_failure`
        words them (refused, missing, failed, timeout, unreachable, garbled)."""
        import requests

        try:
            return action()
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            kind = "refused" if status in (401, 403) else "missing" if status == 404 else "failed"
            raise self._failure(kind, what, status) from None
        except requests.Timeout:
            raise self._failure("timeout", what) from None
        except requests.ConnectionError:
            raise self._failure("unreachable", what) from None
        except (requests.RequestException, ValueError):
            # not DICOM JSON (an HTML login page, a proxy's error) or a broken connection
            raise self._failure("garbled", what) from None

    def _failure(self, kind: str, what: str, status: int = 0) -> PacsError:
        """One line for a failed request, as a command line user reads it. The PACS's own fault
        (down, refusing medgem's token, answering garbage) is a gateway error to the server's
        caller (502; 504 when it is silent); an unknown UID is the caller's (400)."""
        where = self.reference.where
        if kind == "refused":
            return PacsRefusedError(f"{where} refused medgem ({status} {'unauthorized' if status == 401 else 'forbidden'}) "
                             f"while asking for {what}",
                             "pass a valid token with --dicomweb-token (or dicomweb_token in the config file)")
        if kind == "missing":
            return PacsError(f"{where} does not have {what} asked for (404): the UID is unknown there",
                             "check the study/series/instance UID (medgem inspect --study lists a study's series)")
        if kind == "timeout":
            return PacsTimeoutError(f"{where} did not answer within {self.reference.timeout:g} s ({what})",
                             "check that the PACS is up, or raise --pacs-timeout")
        if kind == "unreachable":
            return PacsUnavailableError(f"cannot reach {where} (connection failed)", "check the URL and that the PACS is up")
        if kind == "garbled":
            return PacsUnavailableError(f"{where} answered something that is not DICOMweb while asking for {what}",
                             "check that the URL is the PACS's DICOMweb root")
        return PacsUnavailableError(f"{where} answered {status} while asking for {what}", "check the PACS, then try again")


#: The syntax a frame answer is in when its Content-Type names only the media type.
_DEFAULT_SYNTAX = {"application/octet-stream": "1.2.840.10008.1.2.1", "image/jpeg": "1.2.840.10008.1.2.4.50",
                   "image/jp2": "1.2.840.10008.1.2.4.90", "image/jls": "1.2.840.10008.1.2.4.80"}


def answered_media(content_type: str, asked: tuple[str, str]) -> tuple[str, str]:
    """(media type, transfer syntax) of a multipart frame answer, read from its Content-Type
    (``multipart/related; type="image/jpeg"; transfer-syntax=1.2...``, or, as Orthanc writes
    it, both inside the quoted type); what was asked for where it names neither."""
    kind = re.search(r'type="?([a-z]+/[a-z0-9.+-]+)', content_type, re.IGNORECASE)
    syntax = re.search(r"transfer-syntax=\"?([0-9.]+)", content_type, re.IGNORECASE)
    media = kind.group(1).lower() if kind else asked[0]
    if syntax:
        return media, syntax.group(1)
    return media, asked[1] if asked[1] != "*" else _DEFAULT_SYNTAX.get(media, asked[1])


def _dataset(item: dict[str, Any], headers_only: bool = False) -> Any:
    """A DICOM JSON object as a Dataset; with ``headers_only`` its bulk data (pixel data, ICC
    profiles) stays empty instead of being fetched from the URIs the metadata names, and the
    File Meta transfer syntax, when the server lists it, is kept where pydicom reads it."""
    from pydicom import Dataset
    from pydicom.dataset import FileMetaDataset

    if not headers_only:
        return Dataset.from_json(item)
    meta = {tag: value for tag, value in item.items() if tag.startswith("0002")}
    body = {tag: value for tag, value in item.items() if not tag.startswith("0002")}
    ds = Dataset.from_json(body, bulk_data_uri_handler=lambda tag, vr, uri: b"")
    ds.file_meta = FileMetaDataset(Dataset.from_json(meta)) if meta else FileMetaDataset()
    return ds
