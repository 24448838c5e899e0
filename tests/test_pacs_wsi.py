"""A DICOM whole-slide image on a real PACS (Orthanc + DICOMweb), read tile by tile: the same
patches and prompt as the same files read locally, only the frames under the tissue mask and
the sampled patches fetched, and every bad case one line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
import pydicom
import pytest

import wsi_fixtures
from conftest import run_cli
from medgem.errors import ImageInputError, PacsError
from medgem.inputs import Inputs, read_inputs
from medgem.inputs.options import ImagingOptions
from medgem.inputs.pacs import parse_study_reference, uid_hash
from medgem.request.compose import request_for_inputs
from medgem.request.request import TextPart
from pacs_fixtures import FrontOfOrthanc, Orthanc, SlideOnPacs, load_slide, serving_front

pytest.importorskip("wsidicom")  # the local side of the comparison reads the folder with it


@pytest.fixture(scope="module")
def slide(orthanc: Orthanc, tmp_path_factory: pytest.TempPathFactory) -> SlideOnPacs:
    return load_slide(orthanc, tmp_path_factory.mktemp("pacs-wsi") / "slide")


def _texts(inputs: Inputs, question: str) -> list[str]:
    request = request_for_inputs(question, inputs)
    return [part.text for message in request.messages for part in message.parts
            if isinstance(part, TextPart)]


def _tiles_under(cells: list[tuple[int, int]], cell: int, tile: int = 256) -> int:
    """Hand count of the 256-px tiles of level 0 that the given cells overlap."""
    tiles = set()
    for col, row in cells:
        x0, y0 = col * cell, row * cell
        for ty in range(y0 // tile, -(-(y0 + cell) // tile)):
            for tx in range(x0 // tile, -(-(x0 + cell) // tile)):
                tiles.add((tx, ty))
    return len(tiles)


def test_a_slide_series_gives_the_patches_and_prompt_of_the_same_folder_read_locally(
        orthanc: Orthanc, slide: SlideOnPacs) -> None:
    question = "Describe the tissue on this slide."
    remote = read_inputs([parse_study_reference(slide.url(orthanc))], question=question)
    local = read_inputs([slide.folder])
    assert remote.layout == local.layout == "slide"
    (item,), (here,) = remote.items, local.items
    assert len(item.images) == 4
    for a, b in zip(item.images, here.images, strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))  # lossless tiles: the same pixels
    assert item.overview is not None and here.overview is not None
    assert np.array_equal(np.asarray(item.overview), np.asarray(here.overview))
    assert _texts(remote, question) == _texts(local, question)
    assert item.description == here.description
    for fact in ("vendor", "levels", "mpp", "mask_level", "patch_level", "patch_region_px",
                 "tissue_fraction", "tissue_cells", "patches", "patch_origins"):
        assert item.metadata[fact] == here.metadata[fact], fact
    assert (item.metadata["mask_level"], item.metadata["patch_level"]) == (2, 0)
    # only the tiles under the four tissue cells (level 0) and the one tile of level 2 moved
    (fetched,) = remote.studies
    cells = [(x // 448, y // 448) for x, y in item.metadata["patch_origins"]]  # type: ignore[union-attr]
    assert fetched.frames == _tiles_under(cells, 448) + 1 == 25
    assert fetched.frames_total == 11 * 7 + 3 * 2 + 1
    level0 = slide.levels[0].stat().st_size
    assert fetched.bytes_moved < level0 / 2 and fetched.bytes_moved < slide.whole_bytes / 3
    uids = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in slide.levels]
    assert fetched.instances == (uids[0], uids[2])  # patch level first, then the mask level
    assert fetched.total_instances == 4  # three levels and the label
    assert str(fetched.headers[0].PatientName) == wsi_fixtures.PLANTED_NAME  # in memory, for an SR
    assert "PixelData" not in fetched.headers[0]


def test_cli_ask_and_inspect_record_frames_and_hashes_only(
        orthanc: Orthanc, slide: SlideOnPacs, tiny_vlm_checkpoint: Path, tmp_path: Path) -> None:
    audit = tmp_path / "audit.sqlite"
    result = run_cli("ask", "Describe the tissue.", "--study", slide.url(orthanc), "--model",
                     str(tiny_vlm_checkpoint), "--max-new-tokens", "2", "--json", "--no-server",
                     "--audit-db", str(audit))
    assert result.returncode == 0, result.stderr
    from medgem.audit import open_store

    store = open_store(audit)
    (event,) = store.records(kind="pacs_fetch")
    assert event.body["series"] == uid_hash(slide.series) and event.body["frames"] == 25
    assert event.body["frames_total"] == 84 and len(event.body["instances"]) == 2
    text = json.dumps(event.body)
    assert slide.series not in text and slide.study not in text and wsi_fixtures.PLANTED_NAME not in text
    assert store.count("answer") == 1
    assert wsi_fixtures.PLANTED_NAME not in result.stdout + result.stderr
    listing = run_cli("inspect", "--study", slide.url(orthanc), "--json", timeout=120)
    assert listing.returncode == 0, listing.stderr
    report = json.loads(listing.stdout)
    assert report["kind"] == "slide" and report["metadata"]["patches"] == 4
    assert report["fetched"]["frames"] == 25 and report["fetched"]["frames_of"] == 84
    assert wsi_fixtures.PLANTED_NAME not in listing.stdout + listing.stderr


def test_a_slide_over_dimse_is_refused_in_one_line(orthanc: Orthanc, slide: SlideOnPacs) -> None:
    ref = parse_study_reference(orthanc.dimse(f"{slide.study}/{slide.series}"))
    with pytest.raises(PacsError, match="fetched by frame, which needs DICOMweb") as caught:
        read_inputs([ref])
    assert "\n" not in str(caught.value)


def test_a_level_without_frames_is_refused_in_one_line(orthanc: Orthanc, tmp_path: Path) -> None:
    image = wsi_fixtures.slide_pixels((4, 2), 448, [(1, 0)])
    folder = wsi_fixtures.write_dicom_wsi(tmp_path / "broken", image, mpp=2.0, factors=(1, 4))
    ds = pydicom.dcmread(folder / "level2.dcm")
    del ds.PixelData
    ds.NumberOfFrames = 0
    ds.save_as(folder / "level2.dcm", enforce_file_format=True)
    orthanc.upload(sorted(folder.iterdir()))
    head = pydicom.dcmread(folder / "level1.dcm", stop_before_pixels=True)
    ref = parse_study_reference(f"{orthanc.dicomweb}/studies/{head.StudyInstanceUID}")
    with pytest.raises(ImageInputError, match="declares 0 frames, fewer than the 2 tiles of its 448x224 matrix") as caught:
        read_inputs([ref])
    assert "\n" not in str(caught.value)


class _LosesFrames(FrontOfOrthanc):
    """Forwards every request but answers 404 to frames."""

    frames_asked: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        if "/frames/" in self.path:
            self.frames_asked.append(self.path)
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.forward()


@pytest.fixture(scope="module")
def loses_frames(orthanc: Orthanc) -> Iterator[str]:
    with serving_front(_LosesFrames, orthanc.url) as url:
        yield url


def test_a_frame_the_pacs_does_not_have_is_one_line(slide: SlideOnPacs, loses_frames: str) -> None:
    ref = parse_study_reference(f"{loses_frames}/dicom-web/studies/{slide.study}/series/{slide.series}")
    with pytest.raises(PacsError, match=r"does not have frames 1 of slide level .* \(404\)") as caught:
        read_inputs([ref])
    assert "\n" not in str(caught.value)
    assert len(_LosesFrames.frames_asked) == 1  # the first refusal stops the read


def test_the_byte_limit_stops_a_slide_between_frame_requests(orthanc: Orthanc, slide: SlideOnPacs) -> None:
    ref = parse_study_reference(slide.url(orthanc))
    with pytest.raises(ImageInputError, match=r"more than 400,000 bytes.*--max-archive-mb"):
        read_inputs([ref], ImagingOptions(max_archive_bytes=400_000))


@pytest.mark.parametrize("codec", ["jpeg", "jpeg2000"])
def test_compressed_tiles_are_fetched_as_stored_and_decode_like_the_local_slide(
        orthanc: Orthanc, tmp_path_factory: pytest.TempPathFactory, codec: str) -> None:
    stored = load_slide(orthanc, tmp_path_factory.mktemp(f"pacs-wsi-{codec}") / "slide", codec=codec)
    remote = read_inputs([parse_study_reference(stored.url(orthanc))])
    local = read_inputs([stored.folder])
    (item,), (here,) = remote.items, local.items
    assert item.metadata["patch_origins"] == here.metadata["patch_origins"]
    assert len(item.images) == 4
    for a, b in zip(item.images, here.images, strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    (fetched,) = remote.studies
    assert fetched.frames == 25
    # the compressed bytes themselves crossed, not tiles the server decoded (256 x 256 x 3 each)
    assert fetched.bytes_moved < 25 * 256 * 256 * 3 / 2
