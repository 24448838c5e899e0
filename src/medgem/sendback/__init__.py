"""Results back where clinicians look: an answer about a PACS study stored on that PACS as a
DICOM Comprehensive SR (``sr.py``, highdicom) via STOW-RS or C-STORE (``send.py``), and as a FHIR
DiagnosticReport with status ``preliminary`` (``fhir_report.py``).

Nothing is sent for an answer nobody reviewed unless the operator says so explicitly; every send
is an audit event keyed by UID hashes.
"""

from medgem.sendback.fhir_report import diagnostic_report
from medgem.sendback.send import SendBackRefused, check_send_back, send_report
from medgem.sendback.sr import report_sr

__all__ = ["SendBackRefused", "check_send_back", "diagnostic_report", "report_sr", "send_report"]
