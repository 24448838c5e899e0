"""What medgem asks of a PACS, whichever protocol reaches it: find a study's series and a
series' instances (headers only), retrieve chosen instances, store one object back.

``medgem.inputs.pacs.connect.open_client(reference)`` gives the DICOMweb client
(``dicomweb-client``: QIDO-RS, WADO-RS, STOW-RS) or the DIMSE one (``pynetdicom``: C-FIND,
C-GET, C-STORE) behind this one Protocol.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol

#: Series-level attributes asked for when listing a study.
SERIES_FIELDS = ("SeriesInstanceUID", "Modality", "BodyPartExamined", "SeriesNumber",
                 "SeriesDescription", "NumberOfSeriesRelatedInstances")
#: Instance-level attributes: enough to sort, sample and size-check slices before any pixel moves.
INSTANCE_FIELDS = ("SOPInstanceUID", "SOPClassUID", "InstanceNumber", "Rows", "Columns",
                   "NumberOfFrames", "ImagePositionPatient", "ImageOrientationPatient")


class PacsClient(Protocol):
    """One connection's worth of PACS operations. ``bytes_moved`` counts the response (and
    request) bodies that crossed the wire, for the audit event and the benchmark."""

    bytes_moved: int

    def series(self, study: str) -> list[Any]:
        """The study's series as pydicom Datasets of ``SERIES_FIELDS`` ([] when unknown)."""
        ...

    def instances(self, study: str, series: str) -> list[Any]:
        """The series' instances as pydicom Datasets of ``INSTANCE_FIELDS``."""
        ...

    def retrieve(self, study: str, series: str, instances: Sequence[str]) -> Iterator[Any]:
        """The named instances, whole (pixels included), in the order given."""
        ...

    def store(self, dataset: Any) -> None:
        """Store one object (a DICOM SR) on the PACS."""
        ...

    def close(self) -> None: ...

