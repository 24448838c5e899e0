"""The PACS client for a reference's protocol (the concrete clients import the Protocol and
field lists of ``client.py``; this module is the one that knows them both)."""

from __future__ import annotations

from medgem.inputs.pacs.client import PacsClient
from medgem.inputs.pacs.reference import StudyReference


def open_client(reference: StudyReference) -> PacsClient:
    """The client for the reference's protocol, not yet connected (DIMSE associates on use).

    Raises:
        MissingDependencyError: the ``pacs`` extra is not installed.
    """
    if reference.protocol == "dimse":
        from medgem.inputs.pacs.dimse import DimseClient

        return DimseClient(reference)
    from medgem.inputs.pacs.dicomweb import DicomwebClient

    return DicomwebClient(reference)
