"""A real PACS for the tests: Debian's Orthanc with its DICOMweb plugin, started on 127.0.0.1
on free ports with a temporary configuration and storage, loaded with real DICOM files.

``orthanc`` (session scope) holds one study with a CT series (120 slices), an MR series and an
SR series; a CR chest film (pydicom-data's RG1_UNCR) in a second study; and a study with only a
structured report (not an image). medgem's own AE title is a known modality, so DIMSE C-FIND,
C-GET and C-STORE from it are allowed, and a C-MOVE to it goes to 127.0.0.1 on ``move_port``.
``orthanc_locked`` is a second Orthanc that wants HTTP credentials (every unauthenticated
request: 401).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from pydicom.uid import generate_uid

from imaging_fixtures import PHI, mr_slice, write_ct_series

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
AET = "ORTHANC"
MEDGEM_AET = "MEDGEM"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Orthanc:
    """A running Orthanc and what it was loaded with."""

    http_port: int
    dicom_port: int
    folder: Path
    process: subprocess.Popen[bytes]
    files: dict[str, list[Path]] = field(default_factory=dict)
    uids: dict[str, str] = field(default_factory=dict)
    move_port: int = 0  # where Orthanc sends a C-MOVE to medgem's AE title

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def dimse(self, path: str) -> str:
        return f"dimse://{AET}@127.0.0.1:{self.dicom_port}/{path}"

    def upload(self, paths: list[Path], auth: tuple[str, str] | None = None) -> None:
        for path in paths:
            answer = requests.post(f"{self.url}/instances", data=path.read_bytes(), timeout=30,
                                   auth=auth)
            answer.raise_for_status()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start_orthanc(folder: Path, *, users: dict[str, str] | None = None,
                  allow_get: bool = True, scp_timeout: int = 30) -> Orthanc:
    """Start Orthanc on free loopback ports with its storage in ``folder``; returns when its
    REST API answers. ``allow_get=False`` refuses medgem's C-GET (a PACS that only moves);
    ``scp_timeout`` is how many idle seconds it lets an association sit before closing it.

    Raises:
        RuntimeError: Orthanc did not come up within 30 s (its log is in the message).
    """
    folder.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port, move_port = free_port(), free_port(), free_port()
    config = {
        "Name": "medgem-tests", "StorageDirectory": str(folder / "db"),
        "IndexDirectory": str(folder / "db"), "HttpPort": http_port, "DicomPort": dicom_port,
        "DicomAet": AET, "HttpBindAddress": "127.0.0.1", "RemoteAccessAllowed": False,
        "AuthenticationEnabled": bool(users), "RegisteredUsers": users or {},
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        # medgem's AE title as a known modality: allowed to C-FIND, C-GET and C-STORE (the
        # C-GET answers on the same association); a C-MOVE to it dials move_port.
        "DicomModalities": {"medgem": {"AET": MEDGEM_AET, "Host": "127.0.0.1", "Port": move_port,
                                       "AllowGet": allow_get}},
        "DicomCheckCalledAet": False, "StableAge": 1, "HttpTimeout": 30,
        "DicomScpTimeout": scp_timeout,
    }
    (folder / "orthanc.json").write_text(json.dumps(config))
    log = (folder / "orthanc.log").open("wb")
    process = subprocess.Popen([ORTHANC, str(folder / "orthanc.json")], stdout=log,
                               stderr=subprocess.STDOUT, cwd=folder)
    server = Orthanc(http_port, dicom_port, folder, process, move_port=move_port)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            requests.get(f"{server.url}/system", timeout=1)
            return server
        except requests.ConnectionError:
            time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"Orthanc did not start: {(folder / 'orthanc.log').read_text()[-2000:]}")


def ct_volume(slices: int, rows: int = 16, cols: int = 16) -> np.ndarray:
    """An (S, H, W) HU volume whose every slice differs (so order and sampling show)."""
    grid = np.arange(rows * cols, dtype=np.int64).reshape(rows, cols) % 200
    return np.stack([grid - 1000 + 13 * s for s in range(slices)])


def write_mr_series(folder: Path, count: int, study_uid: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid()
    paths = []
    for n in range(count):
        values = (np.arange(16 * 16).reshape(16, 16) * (n + 1)) % 4000
        ds = mr_slice(values, instance=n + 1, series_uid=series_uid, study_uid=study_uid)
        ds.BodyPartExamined = "HEAD"
        path = folder / f"MR{n:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_sr(path: Path, study_uid: str, study: dict[str, str] | None = None) -> Path:
    """A tiny Basic Text SR: a DICOM object that is not an image; ``study`` holds the study
    attributes its images carry (a PACS may answer a study search from any one instance)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import BasicTextSRStorage, ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = BasicTextSRStorage
    ds.SOPClassUID = BasicTextSRStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, generate_uid()
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "SR", 9, 1
    ds.PatientName, ds.PatientID = "Doe^Jane^Quincy", "MRN-99887766"
    ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
    for name, value in (study or {}).items():
        setattr(ds, name, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def load_studies(server: Orthanc, folder: Path) -> None:
    """The tests' studies, written as DICOM files under ``folder`` and stored in Orthanc."""
    from pydicom.data import get_testdata_file

    study = generate_uid()
    ct = write_ct_series(folder / "ct", ct_volume(120), study_uid=study)
    for path in ct:  # a body part, so the question can choose the series
        import pydicom

        ds = pydicom.dcmread(path)
        ds.BodyPartExamined = "CHEST"
        ds.save_as(path, enforce_file_format=True)
    mr = write_mr_series(folder / "mr", 6, study)
    sr = [write_sr(folder / "sr.dcm", study, {name: PHI[name] for name in (
        "StudyDate", "StudyTime", "AccessionNumber", "StudyID", "ReferringPhysicianName")})]
    cr_path = folder / "cr" / "RG1_UNCR.dcm"
    cr_path.parent.mkdir()
    shutil.copy(get_testdata_file("RG1_UNCR.dcm", download=False), cr_path)
    lone_sr = [write_sr(folder / "lone_sr.dcm", generate_uid())]
    server.upload([*ct, *mr, *sr, cr_path, *lone_sr])
    import pydicom

    def uid(path: Path, name: str) -> str:
        return str(pydicom.dcmread(path, stop_before_pixels=True).get(name))

    server.files.update(ct=ct, mr=mr, cr=[cr_path], sr=sr, lone_sr=lone_sr)
    server.uids.update(study=study, ct_series=uid(ct[0], "SeriesInstanceUID"),
                       mr_series=uid(mr[0], "SeriesInstanceUID"),
                       sr_series=uid(sr[0], "SeriesInstanceUID"),
                       cr_study=uid(cr_path, "StudyInstanceUID"),
                       cr_series=uid(cr_path, "SeriesInstanceUID"),
                       cr_instance=uid(cr_path, "SOPInstanceUID"),
                       lone_sr_study=uid(lone_sr[0], "StudyInstanceUID"))


def orthanc_available() -> bool:
    return Path(ORTHANC).exists() and DICOMWEB_PLUGIN.exists()


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    """One Orthanc for the session, loaded with the tests' studies."""
    if not orthanc_available():
        pytest.fail("Orthanc is not installed: run scripts/install.sh (apt-get install orthanc orthanc-dicomweb)")
    root = tmp_path_factory.mktemp("orthanc")
    server = start_orthanc(root / "server")
    try:
        load_studies(server, root / "files")
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def orthanc_locked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    """An Orthanc that wants credentials: medgem's requests without them get 401."""
    if not orthanc_available():
        pytest.fail("Orthanc is not installed: run scripts/install.sh")
    server = start_orthanc(tmp_path_factory.mktemp("orthanc-locked"), users={"clinic": "s3cret"})
    try:
        yield server
    finally:
        server.stop()


@dataclass
class SlideOnPacs:
    """A DICOM whole-slide image stored in Orthanc: its local folder (the same files) and UIDs."""

    folder: Path
    study: str
    series: str
    levels: list[Path]  # the VOLUME instances, level 0 first
    whole_bytes: int  # the series' files, every level and the label

    def url(self, server: Orthanc) -> str:
        return f"{server.dicomweb}/studies/{self.study}/series/{self.series}"


def load_slide(server: Orthanc, folder: Path, *, cells: tuple[int, int] = (6, 4), cell: int = 448,
               tissue: tuple[tuple[int, int], ...] = ((1, 0), (4, 1), (2, 3), (5, 3)),
               mpp: float = 2.0, factors: tuple[int, ...] = (1, 4, 16), codec: str = "none") -> SlideOnPacs:
    """Write a TILED_FULL DICOM WSI (``wsi_fixtures.write_dicom_wsi``: one uncompressed
    instance per level, or ``codec`` "jpeg" / "jpeg2000"; 256-px tiles; plus a label naming
    the patient) and store it in Orthanc.

    The defaults: 2688x1792 px at 2 um/px, levels 1, 4 and 16 times smaller, stained tissue in
    four of the 24 cells of 448 px (the 896-px patch at 10x), so a reader that fetches only the
    tiles under the tissue moves a small share of level 0.
    """
    import pydicom

    import wsi_fixtures

    image = wsi_fixtures.slide_pixels(cells, cell, tissue)
    wsi_fixtures.write_dicom_wsi(folder, image, mpp=mpp, factors=factors, codec=codec)
    files = sorted(folder.iterdir())
    server.upload(files)
    levels = sorted((p for p in files if p.name.startswith("level")), key=lambda p: int(p.stem[5:]))
    head = pydicom.dcmread(levels[0], stop_before_pixels=True)
    return SlideOnPacs(folder, str(head.StudyInstanceUID), str(head.SeriesInstanceUID), levels,
                       sum(p.stat().st_size for p in files))


class FrontOfOrthanc(BaseHTTPRequestHandler):
    """A loopback front for an Orthanc that tests subclass to misbehave (slow, locked, losing
    frames, a login page): ``forward`` passes one GET on to ``upstream`` and relays its answer."""

    upstream = ""

    def forward(self, path: str | None = None) -> None:
        answer = requests.get(self.upstream + (self.path if path is None else path), timeout=30,
                              headers={"Accept": self.headers.get("Accept", "*/*")})
        self.send_response(answer.status_code)
        if "Content-Type" in answer.headers:
            self.send_header("Content-Type", answer.headers["Content-Type"])
        self.send_header("Content-Length", str(len(answer.content)))
        self.end_headers()
        self.wfile.write(answer.content)

    def log_message(self, *args: object) -> None:
        return None


@contextmanager
def serving_front(handler: type[FrontOfOrthanc], upstream: str) -> Iterator[str]:
    """``handler`` on a free loopback port in front of ``upstream``: its URL while in use."""
    handler.upstream = upstream
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def stored_reports(pacs: Orthanc, study: str) -> list[Any]:
    """Every SR medgem stored in the study, read back from Orthanc over WADO-RS."""
    from dicomweb_client.api import DICOMwebClient

    client = DICOMwebClient(pacs.dicomweb)
    found = []
    for series in client.search_for_series(study, search_filters={"Modality": "SR"}):
        series_uid = series["0020000E"]["Value"][0]
        for instance in client.search_for_instances(study, series_uid):
            found.append(client.retrieve_instance(study, series_uid, instance["00080018"]["Value"][0]))
    return [ds for ds in found if ds.get("Manufacturer") == "medgem"]
