"""Classic DIMSE through ``pynetdicom``: C-FIND to find, C-GET to fetch (the peer sends each
instance back on the same association, so medgem needs no listening port), C-STORE to store.

Every association is bounded by the reference's timeout; refusals, aborts and failure statuses
become one-line ``PacsError``s.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

from medgem.errors import PacsError, require
from medgem.inputs.pacs.client import INSTANCE_FIELDS, SERIES_FIELDS
from medgem.inputs.pacs.reference import StudyReference


class DimseClient:
    """``PacsClient`` over DIMSE; ``bytes_moved`` counts the encoded datasets received and sent."""

    def __init__(self, reference: StudyReference) -> None:
        require("pynetdicom", "pacs", "Reading studies over DIMSE (C-FIND, C-GET)")
        self.reference = reference
        self.bytes_moved = 0

    def _ae(self) -> Any:
        from pynetdicom import AE

        ae = AE(ae_title=self.reference.calling_ae)
        timeout = self.reference.timeout
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
        ae.connection_timeout = timeout
        return ae

    def _associate(self, ae: Any, **kwargs: Any) -> Any:
        ref = self.reference
        assoc = ae.associate(ref.host, ref.port, ae_title=ref.called_ae, **kwargs)
        if not assoc.is_established:
            why = "rejected the association" if assoc.is_rejected else "could not be reached"
            raise PacsError(f"{ref.where} {why} (DIMSE)",
                            "check the host, port and AE title, that the PACS is up, and that it "
                            f"knows medgem's AE title {ref.calling_ae}")
        return assoc

    def _find(self, query: Any) -> list[Any]:
        from pynetdicom.sop_class import (  # type: ignore[attr-defined]
            StudyRootQueryRetrieveInformationModelFind as Find,
        )

        ae = self._ae()
        ae.add_requested_context(Find)
        assoc = self._associate(ae)
        found: list[Any] = []
        started = time.monotonic()
        try:
            for status, identifier in assoc.send_c_find(query, Find):
                code = int(getattr(status, "Status", -1)) if status else -1
                if code == -1:
                    raise self._silent(assoc, "C-FIND", started)
                if code in (0xFF00, 0xFF01) and identifier is not None:
                    found.append(identifier)
                elif code != 0x0000:
                    raise PacsError(f"{self.reference.where} failed a C-FIND (status 0x{code:04X})",
                                    "check that medgem's AE title is allowed to query it")
        finally:
            assoc.release()
        return found

    def _silent(self, assoc: Any, what: str, started: float) -> PacsError:
        """A request that got no status: the peer dropped it at once (refusing medgem's AE
        title is the usual reason: Orthanc closes the connection) or went quiet past the
        timeout."""
        ref = self.reference
        if assoc.is_aborted or time.monotonic() - started < 0.9 * ref.timeout:
            return PacsError(f"{ref.where} dropped the {what}: it may not let AE title "
                             f"{ref.calling_ae} {'query' if what == 'C-FIND' else 'retrieve'}",
                             "ask its administrator to add medgem's AE title as a known modality, "
                             "or pass the one it knows with --pacs-aet")
        return PacsError(f"{ref.where} did not answer the {what} within {ref.timeout:g} s",
                         "check that the PACS is up, or raise --pacs-timeout")

    def series(self, study: str) -> list[Any]:
        from pydicom import Dataset

        query = Dataset()
        query.QueryRetrieveLevel = "SERIES"
        query.StudyInstanceUID = study
        for name in SERIES_FIELDS:
            setattr(query, name, None)
        return self._find(query)

    def instances(self, study: str, series: str) -> list[Any]:
        from pydicom import Dataset

        query = Dataset()
        query.QueryRetrieveLevel = "IMAGE"
        query.StudyInstanceUID = study
        query.SeriesInstanceUID = series
        for name in INSTANCE_FIELDS:
            setattr(query, name, None)
        return self._find(query)

    def retrieve(self, study: str, series: str, instances: Sequence[str]) -> Iterator[Any]:
        """One C-GET per instance on one association, each instance kept as it arrives."""
        from pydicom import Dataset
        from pynetdicom import build_role, evt
        from pynetdicom.presentation import StoragePresentationContexts
        from pynetdicom.sop_class import (  # type: ignore[attr-defined]
            StudyRootQueryRetrieveInformationModelGet as Get,
        )

        received: list[Any] = []

        def on_store(event: Any) -> int:
            ds = event.dataset
            ds.file_meta = event.file_meta
            self.bytes_moved += len(event.request.DataSet.getvalue())
            received.append(ds)
            return 0x0000

        ae = self._ae()
        ae.add_requested_context(Get)
        # C-GET needs the storage classes it will receive as SCP-role contexts (127 at most
        # besides Get): the common image classes pynetdicom lists.
        contexts = [c for c in StoragePresentationContexts[:120] if c.abstract_syntax]
        for context in contexts:
            ae.add_requested_context(context.abstract_syntax)
        roles = [build_role(str(context.abstract_syntax), scp_role=True) for context in contexts]
        assoc = self._associate(ae, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, on_store)])
        try:
            for uid in instances:
                query = Dataset()
                query.QueryRetrieveLevel = "IMAGE"
                query.StudyInstanceUID, query.SeriesInstanceUID = study, series
                query.SOPInstanceUID = uid
                code, started = -1, time.monotonic()
                for status, _ in assoc.send_c_get(query, Get):
                    code = int(getattr(status, "Status", -1)) if status else -1
                if code == -1:
                    raise self._silent(assoc, "C-GET", started)
                if code not in (0x0000, 0xB000) or not received:
                    raise PacsError(f"{self.reference.where} failed a C-GET (status 0x{code:04X})",
                                    "check the UIDs and that medgem's AE title may retrieve")
                yield received.pop()
        finally:
            assoc.release()

    def store(self, dataset: Any) -> None:
        from pydicom.filebase import DicomBytesIO
        from pydicom.filewriter import write_dataset

        ae = self._ae()
        ae.add_requested_context(dataset.SOPClassUID)
        assoc = self._associate(ae)
        try:
            status = assoc.send_c_store(dataset)
        finally:
            assoc.release()
        code = int(getattr(status, "Status", -1)) if status else -1
        if code != 0x0000:
            raise PacsError(f"{self.reference.where} did not store the report (C-STORE status "
                            f"{'none' if code == -1 else f'0x{code:04X}'})",
                            "check that the PACS accepts structured reports from medgem")
        buffer = DicomBytesIO()
        buffer.is_little_endian, buffer.is_implicit_VR = True, False
        write_dataset(buffer, dataset)
        self.bytes_moved += len(buffer.getvalue())

    def close(self) -> None:
        return None
