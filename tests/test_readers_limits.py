"""Cost bounds decided while reading: hostile zips and folders are refused after reading their
directory or a few headers, with one line naming the limit and how to raise it, and without
the memory that reading them whole would take (measured with tracemalloc, not timed)."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import tracemalloc
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom.uid import generate_uid

from imaging_fixtures import ct_slice, hu_phantom, write_ct_series
from medgem.errors import ImageInputError
from medgem.inputs import ImagingOptions, Upload, deidentify_upload, read_inputs

MIB = 1024 * 1024


def tiny_dicoms_zip(count: int) -> bytes:
    """A zip of ``count`` CT slices of 8x8 pixels, one series (the issue's 1 MB upload)."""
    series, study = generate_uid(), generate_uid()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for index in range(count):
            ds = ct_slice(hu_phantom(8, 8, (0, 40)), instance=index + 1, z=float(index),
                          series_uid=series, study_uid=study)
            member = io.BytesIO()
            ds.save_as(member, enforce_file_format=True)
            zf.writestr(f"IM{index:05d}.dcm", member.getvalue())
    return out.getvalue()


def dicom_bomb(path: Path, pixel_bytes: int = 512 * MIB) -> None:
    """A zip holding one CT file whose pixel data is ``pixel_bytes`` of zeros (16384 x 16384
    at 16 bits for 512 MiB), written in 1 MiB pieces: about half a megabyte on disk."""
    ds = ct_slice(hu_phantom(8, 8), instance=1, z=0.0, series_uid=generate_uid(),
                  study_uid=generate_uid())
    del ds.PixelData
    side = int((pixel_bytes // 2) ** 0.5)
    ds.Rows = ds.Columns = side
    header = io.BytesIO()
    ds.save_as(header, enforce_file_format=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf, \
            zf.open("IM00001.dcm", "w", force_zip64=True) as member:
        member.write(header.getvalue())
        member.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, pixel_bytes))
        zeros = bytes(MIB)
        for _ in range(pixel_bytes // MIB):
            member.write(zeros)


def peak_bytes(work: Callable[[], Any]) -> tuple[BaseException | None, int]:
    """Run ``work``; return what it raised and the peak Python memory it allocated."""
    tracemalloc.start()
    try:
        work()
    except BaseException as exc:  # the refusal is the point
        return exc, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return None, 0


@pytest.fixture(scope="module")
def many_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("many") / "upload.zip"
    path.write_bytes(tiny_dicoms_zip(1999))
    return path


@pytest.fixture(scope="module")
def bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bomb") / "bomb.zip"
    dicom_bomb(path)
    return path


def test_1999_tiny_dicoms_are_refused_by_the_file_limit(many_tiny: Path) -> None:
    error, peak = peak_bytes(lambda: read_inputs([many_tiny]).items[0])
    assert isinstance(error, ImageInputError), error
    assert "upload.zip holds 1999 files, over the limit of 1000" in str(error)
    assert "--slice-limit" in str(error) and "MEDGEM_SLICE_LIMIT" in str(error)
    assert peak < 50 * MIB, f"{peak / MIB:.0f} MiB to refuse a 1,999-member zip"


def test_the_upload_path_refuses_them_too(many_tiny: Path) -> None:
    data = many_tiny.read_bytes()
    error, peak = peak_bytes(lambda: read_inputs([Upload(data, "application/zip", "upload.zip")]))
    assert isinstance(error, ImageInputError) and "over the limit of 1000" in str(error)
    assert peak < 50 * MIB


def test_a_small_zip_expanding_to_512_mib_is_refused_before_inflating(bomb: Path) -> None:
    assert bomb.stat().st_size < 2 * MIB
    error, peak = peak_bytes(lambda: read_inputs([bomb]).items[0])
    assert isinstance(error, ImageInputError), error
    assert "possible zip bomb" in str(error) and "--max-archive-mb" in str(error)
    assert peak < 50 * MIB, f"{peak / MIB:.0f} MiB to refuse a zip bomb"


def test_storing_the_bomb_does_not_inflate_it(bomb: Path) -> None:
    data = bomb.read_bytes()
    result: list[tuple[bytes | None, str]] = []
    error, peak = peak_bytes(lambda: result.append(deidentify_upload(data, "application/zip", b"k")))
    assert error is None and result == [(None, "application/zip")]  # not kept
    assert peak < 50 * MIB, f"{peak / MIB:.0f} MiB to decide not to store a zip bomb"


def test_a_raised_byte_limit_still_refuses_by_pixels_before_decoding(bomb: Path) -> None:
    options = ImagingOptions(max_archive_bytes=600 * MIB)
    error, peak = peak_bytes(lambda: read_inputs([bomb], options).items[0])
    assert isinstance(error, ImageInputError) and "possible decompression bomb" in str(error)
    assert peak < 50 * MIB  # only the header was inflated


def test_pixels_are_counted_as_headers_are_read(tmp_path: Path) -> None:
    write_ct_series(tmp_path / "ct", np.stack([hu_phantom(32, 32)] * 20))
    with pytest.raises(ImageInputError, match=r"declares more than 10,000 pixels .*--max-total-pixels"):
        read_inputs([tmp_path / "ct"], ImagingOptions(max_total_pixels=10_000))


def test_cancel_stops_reading_between_members(tmp_path: Path) -> None:
    from medgem.errors import InputCancelled

    archive = tmp_path / "study.zip"
    archive.write_bytes(tiny_dicoms_zip(30))
    asked: list[int] = []

    def cancelled() -> bool:
        asked.append(1)
        return len(asked) > 5

    with pytest.raises(InputCancelled):
        read_inputs([archive], ImagingOptions(cancelled=cancelled))
    assert len(asked) == 6  # it stopped at the first "yes", not after reading all 30


def test_folder_of_text_files_says_what_it_holds(tmp_path: Path) -> None:
    notes = tmp_path / "notes"
    notes.mkdir()
    for name in ("a.txt", "b.txt", "c.json"):
        (notes / name).write_text("{}")
    with pytest.raises(ImageInputError, match=r"folder notes holds no images \(3 files: \.txt ×2, \.json ×1"):
        read_inputs([notes])


def test_the_file_count_counts_every_file(tmp_path: Path) -> None:
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "a.txt").write_text("x")
    (mixed / "b.txt").write_text("x")
    (mixed / "scan.bin").write_bytes(b"hello" * 100)
    with pytest.raises(ImageInputError, match=r"holds no images \(3 files: \.txt ×2, \.bin ×1; none is DICOM\)"):
        read_inputs([mixed])


def run_cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "medgem", *argv], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


def test_cli_names_the_flag_and_the_flag_raises_the_limit(tmp_path: Path) -> None:
    write_ct_series(tmp_path / "ct", np.stack([hu_phantom()] * 6))
    refused = run_cli("inspect", str(tmp_path / "ct"), env={"MEDGEM_SLICE_LIMIT": "5"})
    assert refused.returncode == 1
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medgem: error: folder ct holds 6 files")
    assert "--slice-limit" in lines[0]
    raised = run_cli("inspect", str(tmp_path / "ct"), "--slice-limit", "6",
                     env={"MEDGEM_SLICE_LIMIT": "5"})
    assert raised.returncode == 0, raised.stderr


def test_the_openai_path_passes_the_cancel_hook_to_the_readers() -> None:
    """What the server hands in when a client leaves: reading a chat message's zip stops at the
    first check that says so, through request_from_openai (the server's door)."""
    import base64

    from medgem.errors import InputCancelled
    from medgem.request.openai_messages import request_from_openai

    url = "data:application/zip;base64," + base64.b64encode(tiny_dicoms_zip(30)).decode()
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                             {"type": "text", "text": "Describe."}]}]
    asked: list[int] = []

    def cancelled() -> bool:
        asked.append(1)
        return len(asked) > 3

    with pytest.raises(InputCancelled):
        request_from_openai(messages, imaging=ImagingOptions(cancelled=cancelled))
    assert len(asked) == 4


def test_ask_and_describe_take_the_limit_flags_too(tmp_path: Path, tiny_vlm_checkpoint: Path) -> None:
    """The limits are not inspect's alone: ask and describe refuse by them and the flag raises them."""
    write_ct_series(tmp_path / "ct", np.stack([hu_phantom()] * 6))
    for command in (["ask", "What is shown?"], ["describe"]):
        target = ["--image", str(tmp_path / "ct")] if command[0] == "ask" else [str(tmp_path / "ct")]
        refused = run_cli(*command, *target, "--model", str(tiny_vlm_checkpoint), "--no-server",
                          "--slice-limit", "5", "--max-new-tokens", "2")
        assert refused.returncode == 1, refused.stdout
        assert "holds 6 files" in refused.stderr and "--slice-limit" in refused.stderr
    raised = run_cli("ask", "What is shown?", "--image", str(tmp_path / "ct"), "--model",
                     str(tiny_vlm_checkpoint), "--no-server", "--slice-limit", "6", "--max-new-tokens", "2")
    assert raised.returncode == 0, raised.stderr
