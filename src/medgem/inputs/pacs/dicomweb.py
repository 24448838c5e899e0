"""DICOMweb through ``dicomweb-client``: QIDO-RS to find, WADO-RS to fetch, STOW-RS to store.

Every request carries the bearer token (when given) and a bounded timeout; HTTP failures become
one-line ``PacsError``s (401/403: the token; 404: the UID; connection refused or timed out: the
PACS is down or slow).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from medgem.errors import PacsError, require
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
        session = requests.Session()
        session.hooks["response"].append(self._count)
        headers = {"Authorization": f"Bearer {reference.token}"} if reference.token else None
        self._client = client_module.DICOMwebClient(reference.root, session=session, headers=headers,
                                                    timeout=reference.timeout)
        # No silent retries: its default retries every failure five times with back-off, so a
        # PACS that is down would take minutes to report instead of one timeout.
        self._client.set_http_retry_params(retry=False)

    def _count(self, response: Any, *args: Any, **kwargs: Any) -> None:
        self.bytes_moved += len(response.content)

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

    def store(self, dataset: Any) -> None:
        self._call(lambda: self._client.store_instances([dataset]), "storing the report")

    def close(self) -> None:
        self._client._session.close()

    def _call(self, action: Any, what: str) -> Any:
        import requests

        where = self.reference.where
        try:
            return action()
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            if status in (401, 403):
                raise PacsError(f"{where} refused medgem ({status} {'unauthorized' if status == 401 else 'forbidden'}) while asking for {what}",
                                "pass a valid token with --dicomweb-token (or dicomweb_token in the config file)") from None
            if status == 404:
                raise PacsError(f"{where} does not have {what} asked for (404): the UID is unknown there",
                                "check the study/series/instance UID (medgem inspect --study lists a study's series)") from None
            raise PacsError(f"{where} answered {status} while asking for {what}",
                            "check the PACS, then try again") from None
        except requests.Timeout:
            raise PacsError(f"{where} did not answer within {self.reference.timeout:g} s ({what})",
                            "check that the PACS is up, or raise --pacs-timeout") from None
        except requests.ConnectionError:
            raise PacsError(f"cannot reach {where} (connection failed)",
                            "check the URL and that the PACS is up") from None


def _dataset(item: dict[str, Any]) -> Any:
    from pydicom import Dataset

    return Dataset.from_json(item)
