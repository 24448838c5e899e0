"""Studies from the same real Orthanc over classic DIMSE (pynetdicom C-FIND + C-GET, or C-MOVE to
medgem's own storage SCP): the same pixels and prompt as the local files, and refusals in one
line."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from medgem.errors import PacsError
from medgem.inputs import Inputs, read_inputs
from medgem.inputs.pacs import parse_study_reference
from medgem.request.compose import request_for_inputs
from medgem.request.request import TextPart
from pacs_fixtures import Orthanc, free_port, orthanc_available, start_orthanc


def _texts(inputs: Inputs, question: str) -> list[str]:
    request = request_for_inputs(question, inputs)
    return [p.text for m in request.messages for p in m.parts if isinstance(p, TextPart)]


def test_a_ct_study_over_dimse_matches_the_local_files(orthanc: Orthanc) -> None:
    question = "Is there a pneumothorax on this chest CT?"
    remote = read_inputs([parse_study_reference(orthanc.dimse(orthanc.uids["study"]))], question=question)
    local = read_inputs([orthanc.files["ct"][0].parent])
    assert len(remote.images) == 85
    assert all(np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(remote.images, local.images, strict=True))
    assert _texts(remote, question) == _texts(local, question)
    assert remote.items[0].metadata["sampled_indices"] == local.items[0].metadata["sampled_indices"]
    (study,) = remote.studies
    assert study.reference.protocol == "dimse" and len(study.instances) == 85
    assert study.total_instances == 120 and study.bytes_moved > 0


def test_a_series_and_an_instance_over_dimse(orthanc: Orthanc) -> None:
    uids = orthanc.uids
    mr = read_inputs([parse_study_reference(orthanc.dimse(f"{uids['study']}/{uids['mr_series']}"))])
    assert mr.items[0].modality == "MR" and len(mr.images) == 6
    cr = read_inputs([parse_study_reference(
        orthanc.dimse(f"{uids['cr_study']}/{uids['cr_series']}/{uids['cr_instance']}"))])
    local = read_inputs([orthanc.files["cr"][0]])
    assert np.array_equal(np.asarray(cr.images[0]), np.asarray(local.images[0]))


def test_dimse_refusals_are_one_line(orthanc: Orthanc) -> None:
    with pytest.raises(PacsError, match="is not on"):
        read_inputs([parse_study_reference(orthanc.dimse("1.2.3.4.5"))])
    with pytest.raises(PacsError, match="SR series, not images"):
        read_inputs([parse_study_reference(orthanc.dimse(f"{orthanc.uids['study']}/{orthanc.uids['sr_series']}"))])
    down = parse_study_reference(f"dimse://ORTHANC@127.0.0.1:{free_port()}/1.2.3").with_access(timeout=2)
    with pytest.raises(PacsError, match="could not be reached"):
        read_inputs([down])
    # an AE title Orthanc does not know may not query it
    stranger = parse_study_reference(orthanc.dimse(orthanc.uids["study"])).with_access(calling_ae="STRANGER")
    with pytest.raises(PacsError, match="dropped the C-FIND: it may not let AE title STRANGER query"):
        read_inputs([stranger], question="chest CT")


# --- C-MOVE -------------------------------------------------------------------------------------

def _moved(orthanc: Orthanc, path: str, ae: str = "") -> str:
    return orthanc.dimse(path) + f"?move={ae + '@' if ae else ''}{orthanc.move_port}"


def _port_free(port: int) -> bool:
    """Nothing listens on the port any more: a server could take it at once."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
            probe.listen(1)
        except OSError:
            return False
    return True


def test_move_references_parse_and_only_an_allowed_move_is_allowed() -> None:
    from medgem.inputs.pacs import is_allowed

    ref = parse_study_reference("dimse://PACS@pacs.local:104/1.2.3?move=MEDGEM_SCP@11112")
    assert (ref.move_ae, ref.move_port, ref.move_destination, ref.study) == ("MEDGEM_SCP", 11112, "MEDGEM_SCP", "1.2.3")
    own = parse_study_reference("dimse://PACS@pacs.local:104/1.2.3/4.5?move=11112")
    assert own.series == "4.5" and own.move_destination == "MEDGEM"
    assert own.with_access(calling_ae="WARD7").move_destination == "WARD7"  # --pacs-aet's title
    assert parse_study_reference("dimse://PACS@pacs.local:104/1.2.3").move_port == 0  # C-GET
    for bad in ("?move=0", "?move=70000", "?move=", "?port=11112", "?move=A@B"):
        with pytest.raises(PacsError, match="is not a C-MOVE destination"):
            parse_study_reference(f"dimse://PACS@pacs.local:104/1.2.3{bad}")
    # A move opens a port on the server: the operator's entry must name it.
    assert not is_allowed(own, ["dimse://PACS@pacs.local:104"])
    assert is_allowed(own, ["dimse://PACS@pacs.local:104?move=11112"])
    assert is_allowed(own, ["dimse://PACS@pacs.local:104?move=MEDGEM@11112"])
    assert not is_allowed(own, ["dimse://PACS@pacs.local:104?move=MEDGEM@11113"])
    assert not is_allowed(parse_study_reference("dimse://PACS@pacs.local:104/1.2.3"),
                          ["dimse://PACS@pacs.local:104?move=11112"])


def test_a_study_by_c_move_has_the_c_get_pixels_and_the_port_is_released(orthanc: Orthanc) -> None:
    question = "Is there a pneumothorax on this chest CT?"
    study = orthanc.uids["study"]
    moved = read_inputs([parse_study_reference(_moved(orthanc, study))], question=question)
    got = read_inputs([parse_study_reference(orthanc.dimse(study))], question=question)
    assert len(moved.images) == 85
    assert all(np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(moved.images, got.images, strict=True))
    assert _texts(moved, question) == _texts(got, question)
    (fetched,) = moved.studies
    assert fetched.reference.move_port == orthanc.move_port and len(fetched.instances) == 85
    assert fetched.bytes_moved > 85 * 16 * 16 * 2  # the datasets as received, pixels and all
    assert _port_free(orthanc.move_port)
    cr = read_inputs([parse_study_reference(_moved(
        orthanc, f"{orthanc.uids['cr_study']}/{orthanc.uids['cr_series']}/{orthanc.uids['cr_instance']}"))])
    local = read_inputs([orthanc.files["cr"][0]])
    assert np.array_equal(np.asarray(cr.images[0]), np.asarray(local.images[0]))
    assert _port_free(orthanc.move_port)


def test_a_c_move_stopped_midway_by_the_byte_limit_releases_the_port(orthanc: Orthanc) -> None:
    from medgem.errors import ImageInputError
    from medgem.inputs.options import ImagingOptions

    ref = parse_study_reference(_moved(orthanc, f"{orthanc.uids['study']}/{orthanc.uids['ct_series']}"))
    with pytest.raises(ImageInputError, match="more than 20,000 bytes"):
        read_inputs([ref], ImagingOptions(max_archive_bytes=20_000))
    assert _port_free(orthanc.move_port)


def test_a_move_to_an_ae_orthanc_does_not_know_is_one_line(orthanc: Orthanc) -> None:
    stranger = _moved(orthanc, orthanc.uids["study"], ae="STRANGER")
    failed = rf"failed the C-MOVE to AE title STRANGER on port {orthanc.move_port} \(status 0xC000\)"
    with pytest.raises(PacsError, match=failed) as refused:
        read_inputs([parse_study_reference(stranger)], question="chest CT")
    assert "as a DICOM modality" in str(refused.value.hint)
    assert _port_free(orthanc.move_port)
    result = run_cli("inspect", "--study", stranger, "--series", orthanc.uids["ct_series"])
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("medgem: error: ") and re.search(failed, line)
    assert _port_free(orthanc.move_port)


def test_a_taken_move_port_is_one_line(orthanc: Orthanc) -> None:
    with socket.socket() as holder:  # reuse: the last move's connections may be in TIME_WAIT
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", orthanc.move_port))
        holder.listen(1)
        with pytest.raises(PacsError, match=re.escape(f"cannot receive the C-MOVE on 127.0.0.1:{orthanc.move_port}")):
            read_inputs([parse_study_reference(_moved(orthanc, orthanc.uids["study"]))],
                        question="chest CT")


def test_cli_ask_by_study_over_c_move(orthanc: Orthanc, tiny_vlm_checkpoint: Path, tmp_path: Path) -> None:
    """As a user runs it: the same images as C-GET reach the model, one fetch on the record."""
    from PIL import Image

    common = ("--model", str(tiny_vlm_checkpoint), "--max-new-tokens", "1", "--no-server",
              "--audit-db", str(tmp_path / "audit.sqlite"))
    question = "Any acute findings on this chest CT?"
    for how, ref in (("move", _moved(orthanc, orthanc.uids["study"])),
                     ("get", orthanc.dimse(orthanc.uids["study"]))):
        result = run_cli("ask", question, "--study", ref, "--save-preprocessed",
                         str(tmp_path / how), *common)
        assert result.returncode == 0, result.stderr
    moved, got = sorted((tmp_path / "move").glob("*.png")), sorted((tmp_path / "get").glob("*.png"))
    assert len(moved) == 85 and [p.name for p in moved] == [p.name for p in got]
    assert all(np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
               for a, b in zip(moved, got, strict=True))
    assert _port_free(orthanc.move_port)

    from medgem.audit import open_store

    store = open_store(tmp_path / "audit.sqlite")
    try:
        fetches = list(store.records(kind="pacs_fetch"))
    finally:
        store.close()
    assert len(fetches) == 2 and all(len(f.body["instances"]) == 85 for f in fetches)


@pytest.fixture(scope="module")
def orthanc_moves_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    """An Orthanc that refuses medgem's C-GET and moves studies to it, as many hospital PACS
    do, holding the CR film."""
    from pydicom.data import get_testdata_file

    if not orthanc_available():
        pytest.fail("Orthanc is not installed: run scripts/install.sh")
    server = start_orthanc(tmp_path_factory.mktemp("orthanc-moves"), allow_get=False)
    try:
        server.upload([Path(get_testdata_file("RG1_UNCR.dcm", download=False))])
        yield server
    finally:
        server.stop()


def test_a_pacs_that_refuses_c_get_says_to_move_and_moves(orthanc_moves_only: Orthanc,
                                                           orthanc: Orthanc) -> None:
    study = orthanc.uids["cr_study"]  # the same film, stored in both
    with pytest.raises(PacsError, match="dropped the C-GET") as refused:
        read_inputs([parse_study_reference(orthanc_moves_only.dimse(study))])
    assert "?move=AE@PORT" in str(refused.value)
    moved = read_inputs([parse_study_reference(_moved(orthanc_moves_only, study))])
    local = read_inputs([orthanc.files["cr"][0]])
    assert np.array_equal(np.asarray(moved.images[0]), np.asarray(local.images[0]))
    assert _port_free(orthanc_moves_only.move_port)


def test_a_reader_slower_than_the_pacs_idle_timeout_still_gets_every_instance(
        orthanc: Orthanc, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A PACS closes an association that sits idle past its own timeout (Orthanc: 1 s here).
    A caller that takes longer than that between two instances gets the rest all the same,
    by C-GET and by C-MOVE, each on a fresh association, with the move port released after."""
    import time

    import pydicom

    from medgem.inputs.pacs import dimse
    from medgem.inputs.pacs.dimse import DimseClient

    opened: list[str] = []  # each association opened (the real one: this only counts them)
    real_open = dimse._Session._open

    def counted(session: dimse._Session) -> None:
        opened.append(session.what)
        real_open(session)

    monkeypatch.setattr(dimse._Session, "_open", counted)

    server = start_orthanc(tmp_path / "impatient", scp_timeout=1)
    try:
        server.upload(orthanc.files["mr"][:3])
        first = pydicom.dcmread(orthanc.files["mr"][0], stop_before_pixels=True)
        uids = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
                for p in orthanc.files["mr"][:3]]
        study, series = str(first.StudyInstanceUID), str(first.SeriesInstanceUID)
        for ref in (server.dimse(study), _moved(server, study)):
            client = DimseClient(parse_study_reference(ref).with_access(timeout=10))
            got = []
            for ds in client.retrieve(study, series, uids):
                got.append(str(ds.SOPInstanceUID))
                if len(got) < len(uids):  # the PACS gives up on the idle association meanwhile
                    time.sleep(2.5)
            assert got == uids, ref
        # one association per instance: the first, then one after each idle timeout
        assert opened == ["C-GET"] * len(uids) + ["C-MOVE"] * len(uids)
        assert _port_free(server.move_port)
    finally:
        server.stop()
