"""Studies from a PACS: DICOMweb (QIDO-RS/WADO-RS/STOW-RS) and DIMSE (C-FIND/C-GET/C-STORE).

``reference.py`` parses ``--study`` values and ``image_dicom`` URIs (and the server's
allowlist check); ``client.py`` is the one Protocol both protocols implement (``dicomweb.py``,
``dimse.py``; its ``open_client`` picks one); ``fetch.py`` lists, chooses, samples before
fetching, de-identifies and hands the files to the existing readers.
``medgem.inputs.read_inputs`` is the door that calls it.
"""

from medgem.inputs.pacs.fetch import FetchedStudy, RemoteSeries, list_series, read_study
from medgem.inputs.pacs.reference import StudyReference, is_allowed, parse_study_reference, uid_hash

__all__ = ["FetchedStudy", "RemoteSeries", "StudyReference", "is_allowed", "list_series",
           "parse_study_reference", "read_study", "uid_hash"]
