"""Cost bounds decided while an input is read, not after: bytes inflated from a zip, pixels
declared by the headers read so far, and the caller's cancel hook, checked at each step.

A ``ReadBudget`` lives for one input. Readers call it as they go (each member, each header),
so a hostile upload is refused after reading a few headers, never after decoding everything.
"""

from __future__ import annotations

import io
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import IO, Any

from medgem.errors import ImageInputError
from medgem.inputs.dicom import frame_count
from medgem.inputs.options import ImagingOptions, raise_hint


def describe_files(names: list[str]) -> str:
    """"3 files: .txt ×2, .json ×1": how many files and of which kinds (most common first)."""
    kinds = Counter((PurePosixPath(n).suffix.lower() or PurePosixPath(n).name) for n in names)
    parts = ", ".join(f"{kind} ×{count}" for kind, count in
                      sorted(kinds.items(), key=lambda item: (-item[1], item[0])))
    noun = "file" if len(names) == 1 else "files"
    return f"{len(names)} {noun}: {parts}" if names else "0 files"


@dataclass
class ReadBudget:
    """What one input has cost so far, against the limits in ``options``.

    Attributes:
        options: the limits and the cancel hook.
        where: the input's display name (file or folder name, never a path).
        pixels: rows x columns x frames summed over the headers accepted so far.
        inflated: bytes inflated from an archive so far (counted, not declared).
    """

    options: ImagingOptions
    where: str
    pixels: int = 0
    inflated: int = 0

    def files(self, count: int) -> None:
        """Refuse a folder or zip holding more files than ``slice_limit`` (before reading any).

        Raises:
            ImageInputError: too many files.
        """
        self.options.check_cancelled()
        if count > self.options.slice_limit:
            raise ImageInputError(
                f"{self.where} holds {count} files, over the limit of {self.options.slice_limit}",
                f"pass one series only, or {raise_hint('slice_limit')}",
            )

    def declared_bytes(self, total: int) -> None:
        """Refuse an archive whose members declare more bytes than ``max_archive_bytes``.

        Raises:
            ImageInputError: a likely zip bomb.
        """
        if total > self.options.max_archive_bytes:
            raise ImageInputError(
                f"{self.where} expands to {total:,} bytes, over the limit of "
                f"{self.options.max_archive_bytes:,} (possible zip bomb)",
                f"unpack it and pass the folder, or {raise_hint('max_archive_bytes')}",
            )

    def add_bytes(self, count: int) -> None:
        """Count bytes really inflated (member headers can lie about their sizes).

        Raises:
            ImageInputError: the archive inflated past ``max_archive_bytes``.
        """
        self.inflated += count
        if self.inflated > self.options.max_archive_bytes:
            raise ImageInputError(
                f"{self.where} inflated past {self.options.max_archive_bytes:,} bytes while "
                f"being read (possible zip bomb)",
                f"unpack it and pass the folder, or {raise_hint('max_archive_bytes')}",
            )

    def add_header(self, ds: Any, name: str) -> None:
        """Count an accepted header's declared pixels (rows x columns x frames).

        Raises:
            ImageInputError: the input declares more pixels than ``max_total_pixels``.
        """
        self.options.check_cancelled()
        self.pixels += int(ds.get("Rows") or 0) * int(ds.get("Columns") or 0) * frame_count(ds)
        if self.pixels > self.options.max_total_pixels:
            raise ImageInputError(
                f"{self.where} declares more than {self.options.max_total_pixels:,} pixels "
                f"(rows x columns x frames) by {name}",
                f"pass fewer files, or {raise_hint('max_total_pixels')}",
            )


def picture_size(data: bytes, name: str) -> tuple[int, int] | None:
    """A picture's declared (width, height), read from its header without decoding a pixel;
    None for bytes Pillow does not recognise (DICOM, zip, PDF: their readers check their own
    headers).

    Raises:
        ImageInputError: the header declares a size Pillow itself refuses to open (a bomb).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:  # lazy: reads the header only
                width, height = image.size
                return int(width), int(height)
    except Image.DecompressionBombError as exc:
        raise ImageInputError(f"{name} is too large to open safely ({exc})",
                              f"send a smaller image, or {raise_hint('max_pixels')}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return None


def check_declared_pictures(pictures: Sequence[tuple[str, bytes]], options: ImagingOptions) -> None:
    """Refuse pictures whose headers declare too many pixels, one by one (``max_pixels``) and
    together (``max_total_pixels``), before any of them is decoded. Slides and documents are
    left to their own readers (a slide's first level is meant to be huge).

    Args:
        pictures: (display name, bytes) per picture, in the order sent.

    Raises:
        ImageInputError: a picture, or all of them together, over the limit.
    """
    from medgem.inputs.slide_detect import is_slide_or_document_upload

    total = 0
    for name, data in pictures:
        options.check_cancelled()
        if is_slide_or_document_upload(data):
            continue
        size = picture_size(data, name)
        if size is None:
            continue
        width, height = size
        if width * height > options.max_pixels:
            raise ImageInputError(
                f"{name} declares {width}x{height} pixels, over the limit of {options.max_pixels:,} "
                f"(possible decompression bomb)", f"send a smaller image, or {raise_hint('max_pixels')}")
        total += width * height
        if total > options.max_total_pixels:
            raise ImageInputError(
                f"the images declare more than {options.max_total_pixels:,} pixels together (by {name})",
                f"send fewer or smaller images, or {raise_hint('max_total_pixels')}")


class CountingReader:
    """A read-only binary stream over another (a zip member) that counts every byte it hands
    out into a ``ReadBudget``; seeks are passed through (pydicom seeks while parsing)."""

    def __init__(self, raw: IO[bytes], budget: ReadBudget) -> None:
        self._raw = raw
        self._budget = budget

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self._budget.add_bytes(len(data))
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> CountingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
