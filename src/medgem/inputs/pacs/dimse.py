"""Classic DIMSE through ``pynetdicom``: C-FIND to find, C-GET or C-MOVE to fetch, C-STORE to
store.

C-GET is the default: the peer sends each instance back on the same association, so medgem needs
no listening port. Many hospital PACS refuse C-GET and only move studies to a destination they
know; a reference with ``?move=AE@PORT`` is fetched by C-MOVE instead, to a storage SCP medgem
runs on that port for the retrieval alone (stopped on every way out). medgem does not fall back
from a refused C-GET to a C-MOVE on its own: a move opens a listening port and needs the PACS
configured for this machine, so the user asks for it; the refusal says how.

Every association is bounded by the reference's timeout; refusals, aborts and failure statuses
become one-line ``PacsError``s.
"""

from __future__ import annotations

import queue
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from medgem.errors import PacsError, PacsTimeoutError, PacsUnavailableError, require
from medgem.inputs.pacs.client import INSTANCE_FIELDS, SERIES_FIELDS
from medgem.inputs.pacs.reference import StudyReference


class DimseClient:
    """``PacsClient`` over DIMSE; ``bytes_moved`` counts the encoded datasets received and sent."""

    def __init__(self, reference: StudyReference) -> None:
        require("pynetdicom", "pacs", "Reading studies over DIMSE (C-FIND, C-GET)")
        self.reference = reference
        self.bytes_moved = 0
        # What a retrieval holds open (its association, the C-MOVE's storage SCP), closed when
        # it ends and again by close(): a caller that stops reading midway leaves nothing open.
        self._held: list[Callable[[], None]] = []

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
            raise PacsUnavailableError(f"{ref.where} {why} (DIMSE)",
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
                code = _code(status)
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
            moves = ("; a PACS that retrieves by C-MOVE only is asked with ?move=AE@PORT"
                     if what == "C-GET" else "")
            return PacsError(f"{ref.where} dropped the {what}: it may not let AE title "
                             f"{ref.calling_ae} {'query' if what == 'C-FIND' else 'retrieve'}",
                             "ask its administrator to add medgem's AE title as a known modality, "
                             f"or pass the one it knows with --pacs-aet{moves}")
        return PacsTimeoutError(f"{ref.where} did not answer the {what} within {ref.timeout:g} s",
                         "check that the PACS is up, or raise --pacs-timeout")

    def series(self, study: str) -> list[Any]:
        return self._find(find_query("SERIES", {"StudyInstanceUID": study,
                                                **dict.fromkeys(SERIES_FIELDS)}))

    def instances(self, study: str, series: str) -> list[Any]:
        return self._find(find_query("IMAGE", {"StudyInstanceUID": study,
                                               "SeriesInstanceUID": series,
                                               **dict.fromkeys(INSTANCE_FIELDS)}))

    def retrieve(self, study: str, series: str, instances: Sequence[str]) -> Iterator[Any]:
        """The instances, in order: by C-GET, or by C-MOVE when the reference asks for it."""
        if self.reference.move_port:
            return self._retrieve_by_move(study, series, instances)
        return self._retrieve_by_get(study, series, instances)

    def _retrieve_by_get(self, study: str, series: str, instances: Sequence[str]) -> Iterator[Any]:
        """One C-GET per instance on one association, each instance kept as it arrives."""
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
        try:
            session = _Session(self, ae, Get, "C-GET", ext_neg=roles,
                               evt_handlers=[(evt.EVT_C_STORE, on_store)])
            for uid in instances:
                received.clear()  # a request sent twice may have left its first copy
                started = time.monotonic()
                code = _code(session.send("send_c_get", _image_query(study, series, uid), Get))
                if code == -1:
                    raise self._silent(session.assoc, "C-GET", started)
                if code not in (0x0000, 0xB000) or not received:
                    raise PacsError(f"{self.reference.where} failed a C-GET (status 0x{code:04X})",
                                    "check the UIDs and that medgem's AE title may retrieve; a PACS "
                                    "that only moves studies is asked with ?move=AE@PORT")
                yield received.pop()
        finally:
            self._close_held()

    def _retrieve_by_move(self, study: str, series: str, instances: Sequence[str]) -> Iterator[Any]:
        """One C-MOVE per instance on one association, each naming medgem's own storage SCP
        (started here, for this retrieval only) as destination; each instance kept as the PACS
        stores it there. Instances that were not asked for (anyone may dial the port while it
        is open) are refused, not kept."""
        from pynetdicom.sop_class import (  # type: ignore[attr-defined]
            StudyRootQueryRetrieveInformationModelMove as Move,
        )

        ref = self.reference
        wanted: set[str] = set()
        arrived: queue.SimpleQueue[Any] = queue.SimpleQueue()

        def on_store(event: Any) -> int:
            ds = event.dataset
            if str(ds.get("SOPInstanceUID", "")) not in wanted:
                return 0xC000  # not what this retrieval asked for: nothing of it is kept
            ds.file_meta = event.file_meta
            self.bytes_moved += len(event.request.DataSet.getvalue())
            arrived.put(ds)
            return 0x0000

        self._start_storage_scp(on_store)
        try:
            ae = self._ae()
            ae.add_requested_context(Move)
            session = _Session(self, ae, Move, "C-MOVE")
            for uid in instances:
                wanted.clear()  # only the instance this C-MOVE names may arrive now
                wanted.add(uid)
                while not arrived.empty():  # a request sent twice may have left its first copy
                    arrived.get_nowait()
                started = time.monotonic()
                last = session.send("send_c_move", _image_query(study, series, uid),
                                    ref.move_destination, Move)
                code = _code(last)
                comment = str(last.get("ErrorComment", "")).strip() if last else ""
                if code == -1:
                    raise self._silent(session.assoc, "C-MOVE", started)
                self._check_moved(code, comment, arrived.empty())
                yield arrived.get_nowait()
        finally:
            self._close_held()

    def _start_storage_scp(self, on_store: Callable[[Any], int]) -> None:
        """medgem's storage SCP for a C-MOVE: on the move port, on the address this machine
        reaches the PACS from, with the reference's timeouts; held until the retrieval ends.

        Raises:
            PacsError: the port cannot be listened on (taken, or not this user's to open).
        """
        from pynetdicom import AE, evt
        from pynetdicom.presentation import StoragePresentationContexts

        ref = self.reference
        scp = AE(ae_title=ref.move_destination)
        scp.acse_timeout = scp.dimse_timeout = scp.network_timeout = ref.timeout
        scp.supported_contexts = StoragePresentationContexts
        address = _local_address(ref.host, ref.port)
        try:
            server = scp.start_server((address, ref.move_port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, on_store)])
        except OSError as exc:
            raise PacsError(f"medgem cannot receive the C-MOVE on {address}:{ref.move_port} "
                            f"({exc.strerror or exc})",
                            "free that port or choose another in ?move=AE@PORT (the one the PACS "
                            "has for medgem's AE title)") from None
        assert server is not None  # block=False returns the running server
        self._held.append(server.shutdown)

    def _check_offered(self, assoc: Any, model: Any, what: str) -> None:
        """The peer accepted the association but may still refuse the retrieve service."""
        if any(cx.abstract_syntax == model for cx in assoc.accepted_contexts):
            return
        ref = self.reference
        hint = ("if it retrieves by C-MOVE only, add ?move=AE@PORT to the reference (the AE "
                "title and port it knows for medgem)" if what == "C-GET" else
                "ask its administrator to let medgem's AE title retrieve, or fetch by C-GET "
                "(drop ?move=)")
        raise PacsError(f"{ref.where} does not offer {what} to AE title {ref.calling_ae}", hint)

    def _check_moved(self, code: int, comment: str, nothing: bool) -> None:
        """A C-MOVE's final status as one line: the destination unknown to the PACS, a
        failure (the PACS's own comment kept where it gives one; Orthanc answers an unknown
        destination with a bare 0xC000), or a success that delivered nothing to medgem's port."""
        ref = self.reference
        to = f"AE title {ref.move_destination} on port {ref.move_port}"
        configure = (f"ask its administrator to add AE title {ref.move_destination} at this "
                     f"machine's address, port {ref.move_port}, as a DICOM modality, or give "
                     "the AE title it knows in ?move=AE@PORT")
        said = f": {comment[:120]}" if comment else ""
        if code == 0xA801:
            raise PacsError(f"{ref.where} does not know the C-MOVE destination "
                            f"{ref.move_destination} (status 0xA801{said})", configure)
        if code not in (0x0000, 0xB000):
            raise PacsError(f"{ref.where} failed the C-MOVE to {to} (status 0x{code:04X}{said})",
                            f"it may not know that destination: {configure}; check the UIDs")
        if nothing:
            raise PacsError(f"{ref.where} answered the C-MOVE (status 0x{code:04X}) but sent "
                            f"nothing to {to}",
                            f"check that it has this machine's address and port {ref.move_port} "
                            f"for AE title {ref.move_destination}")

    def _close_held(self) -> None:
        while self._held:
            self._held.pop()()

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
        code = _code(status)
        if code != 0x0000:
            raise PacsError(f"{self.reference.where} did not store the report (C-STORE status "
                            f"{'none' if code == -1 else f'0x{code:04X}'})",
                            "check that the PACS accepts structured reports from medgem")
        buffer = DicomBytesIO()
        buffer.is_little_endian, buffer.is_implicit_VR = True, False
        write_dataset(buffer, dataset)
        self.bytes_moved += len(buffer.getvalue())

    def close(self) -> None:
        self._close_held()


class _Session:
    """The one association a retrieval sends its requests on, opened again when the PACS has
    closed it: a PACS closes an association left idle past its own timeout (Orthanc's
    DicomScpTimeout), and a caller may take that long between instances."""

    def __init__(self, client: DimseClient, ae: Any, model: Any, what: str, **kwargs: Any) -> None:
        self.client, self.ae, self.model, self.what, self.kwargs = client, ae, model, what, kwargs
        self.assoc: Any = None
        client._held.append(self.release)  # whichever association is current when it ends
        self._open()

    def _open(self) -> None:
        self.assoc = self.client._associate(self.ae, **self.kwargs)
        self.client._check_offered(self.assoc, self.model, self.what)

    def release(self) -> None:
        if self.assoc is not None:
            self.assoc.release()

    def send(self, method: str, *args: Any) -> Any:
        """The last status the association's ``method`` (``send_c_get``, ``send_c_move``) gets
        for ``args``; None where the PACS went silent. A request on an association the PACS
        has closed since the last one, found before it goes out or by its lost answer, is
        sent once more on a fresh association (a silent fresh one is the PACS's refusal)."""
        fresh = not self.assoc.is_established
        if fresh:
            self._open()
        last = self._last_status(method, args)
        if last is None and not fresh and not self.assoc.is_established:
            self._open()
            last = self._last_status(method, args)
        return last

    def _last_status(self, method: str, args: tuple[Any, ...]) -> Any:
        last = None
        try:
            for status, _ in getattr(self.assoc, method)(*args):
                last = status or None  # an empty dataset: the association went away
        except RuntimeError:  # closed between the check and the request: pynetdicom refuses
            return None
        return last


def _code(status: Any) -> int:
    """A DIMSE status's code; -1 for none (an empty dataset: the association went away)."""
    return int(getattr(status, "Status", -1)) if status else -1


def find_query(level: str, values: Mapping[str, Any]) -> Any:
    """A study-root identifier at ``level`` ("STUDY", "SERIES", "IMAGE") with each named
    attribute set to its value (None: a return key the answer fills in)."""
    from pydicom import Dataset

    query = Dataset()
    query.QueryRetrieveLevel = level
    for name, value in values.items():
        setattr(query, name, value)
    return query


def _image_query(study: str, series: str, instance: str) -> Any:
    """The identifier of one instance for a C-GET or C-MOVE (study root, IMAGE level)."""
    return find_query("IMAGE", {"StudyInstanceUID": study, "SeriesInstanceUID": series,
                                "SOPInstanceUID": instance})


def _local_address(host: str, port: int) -> str:
    """This machine's address on the route to the PACS: where it will connect for a C-MOVE
    (nothing is sent; a datagram socket's connect only picks the route). All addresses when the
    route cannot be told."""
    try:
        family, kind, proto, _, where = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.connect(where)
            return str(probe.getsockname()[0])
    except OSError:
        return ""
