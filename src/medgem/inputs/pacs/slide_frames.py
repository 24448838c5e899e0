"""A whole-slide image on a DICOMweb PACS, read frame by frame: only the tiles the prompt needs.

A VL Whole Slide Microscopy series holds one multi-frame instance per pyramid level (and label
and overview instances); fetched whole it is gigabytes. Here the series' headers come first
(WADO-RS metadata, no pixels), the pyramid is built from the VOLUME instances, and the local
slide pipeline (``wsi.slide_to_input``) runs over it unchanged: it picks the mask level and the
patch level, finds tissue on the first and samples patches from the second, and every region it
reads fetches only the tiles (frames) that region overlaps, by WADO-RS frame retrieval. So the
same slide gives the same patches and prompt read from the PACS or from a local folder, and only
the small mask level plus the tiles under the sampled patches cross the wire.

Frames are asked for as stored (``transfer-syntax=*``, or the instance's own syntax when the
headers name it), so lossy tiles are never re-encoded by the server, and compressed ones are
decoded by wsidicom's codec, as a local DICOM slide's tiles are; a syntax no installed decoder
reads is asked for again uncompressed (the server decodes it). TILED_FULL only: its frame of tile
(column, row) is ``row * columns + column + 1`` in the first focal plane and optical path.

Nothing is written to disk, so there is no file to de-identify: the patches are pixels of VOLUME
instances only (a label or overview instance never has a frame asked for), the facts are the
pyramid's sizes and the sampling (``slide_to_input`` copies no header text), and a level that
declares burned-in annotation is refused unless that is allowed, as for any DICOM image.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from medgem.errors import ImageInputError, PacsError, require
from medgem.inputs.dicom import burned_in, header_values, without_pixels
from medgem.inputs.options import ImagingOptions, MedicalInput, raise_hint
from medgem.inputs.slide_detect import WSI_SOP_CLASS
from medgem.inputs.wsi import Level, SlideReader, slide_to_input

#: Compressed syntaxes asked for by name when the headers give an instance's syntax.
NATIVE_MEDIA = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",  # JPEG baseline
    "1.2.840.10008.1.2.4.90": "image/jp2",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": "image/jp2",  # JPEG 2000
}
#: Uncompressed syntaxes: a frame's bytes are its pixels, row by row.
UNCOMPRESSED = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"})
#: Frames as stored (PS3.18 ``transfer-syntax=*``): asked for when the headers do not name the
#: instance's syntax (Orthanc's metadata does not); the answer's Content-Type names it.
AS_STORED = ("application/octet-stream", "*")
#: Uncompressed frames (explicit VR little endian), decoded by the server: asked for when the
#: headers say the level is uncompressed, or when no decoder here reads the stored syntax.
AS_PIXELS = ("application/octet-stream", "1.2.840.10008.1.2.1")
#: Most frames asked for in one WADO-RS request (one multipart answer held in memory).
FRAMES_PER_REQUEST = 64
#: Decoded tiles kept for neighbouring regions (a patch edge often shares a tile with the next).
TILE_CACHE_BYTES = 128 * 1024**2


class FrameSource(Protocol):
    """What reading a slide needs of a DICOMweb client (``DicomwebClient`` is one)."""

    bytes_moved: int

    def series_metadata(self, study: str, series: str) -> list[Any]: ...

    def frames(self, study: str, series: str, instance: str, numbers: Sequence[int],
               media_type: tuple[str, str]) -> tuple[list[bytes], tuple[str, str]]: ...


@dataclass(frozen=True)
class RemoteLevel:
    """One pyramid level on the PACS: a TILED_FULL instance, as its header describes it."""

    uid: str
    width: int  # TotalPixelMatrixColumns
    height: int  # TotalPixelMatrixRows
    tile_width: int  # Columns
    tile_height: int  # Rows
    frames: int
    mpp: float | None
    transfer_syntax: str
    samples: int
    planar: int
    photometric: str
    header: Any = field(repr=False, compare=False)

    @property
    def across(self) -> int:
        return -(-self.width // self.tile_width)

    @property
    def down(self) -> int:
        return -(-self.height // self.tile_height)

    @property
    def media_type(self) -> tuple[str, str]:
        """What to ask its frames as: its own syntax when the headers name one medgem decodes,
        else as stored."""
        if self.transfer_syntax in UNCOMPRESSED:
            return AS_PIXELS
        if self.transfer_syntax in NATIVE_MEDIA:
            return NATIVE_MEDIA[self.transfer_syntax], self.transfer_syntax
        return AS_STORED

    def frame_number(self, column: int, row: int) -> int:
        """The 1-based frame of tile (column, row): TILED_FULL stores them row by row."""
        return row * self.across + column + 1


@dataclass
class SlideFetch:
    """What reading a remote slide moved: for the audit event and ``FetchedStudy``."""

    levels: list[RemoteLevel]
    fetched: dict[str, set[int]] = field(default_factory=dict)  # instance UID -> frame numbers

    @property
    def frames_moved(self) -> int:
        return sum(len(numbers) for numbers in self.fetched.values())

    @property
    def frames_total(self) -> int:
        return sum(level.frames for level in self.levels)


def is_slide_series(instances: Sequence[Any]) -> bool:
    """Whether a series' instance listing (QIDO-RS) is a whole-slide image."""
    return any(str(ds.get("SOPClassUID", "") or "") == WSI_SOP_CLASS for ds in instances)


def _mpp(ds: Any) -> float | None:
    """Microns per pixel across (the column spacing), from the shared pixel measures or, failing
    that, the imaged volume width over the matrix width."""
    try:
        spacing = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
        return float(spacing[1]) * 1000.0
    except (AttributeError, IndexError, KeyError, TypeError, ValueError):
        pass
    width, columns = ds.get("ImagedVolumeWidth"), ds.get("TotalPixelMatrixColumns")
    if width and columns:
        return float(width) * 1000.0 / float(columns)
    return None


def _level(ds: Any, where: str) -> RemoteLevel:
    """One VOLUME instance's header as a level.

    Raises:
        ImageInputError: not TILED_FULL, not 8-bit, or fewer frames than its tiles.
    """
    uid = str(ds.get("SOPInstanceUID", ""))
    name = f"level instance …{uid[-12:]} of {where}"
    organisation = str(ds.get("DimensionOrganizationType", "") or "").upper()
    if organisation != "TILED_FULL":
        raise ImageInputError(f"{name} is {organisation or 'without a dimension organisation'}, "
                              "not TILED_FULL: its frames' positions are not implied",
                              "convert the slide to TILED_FULL, or read a local copy")
    level: RemoteLevel | None
    try:
        level = RemoteLevel(
            uid, int(ds.TotalPixelMatrixColumns), int(ds.TotalPixelMatrixRows), int(ds.Columns),
            int(ds.Rows), int(ds.get("NumberOfFrames") or 0), _mpp(ds),
            str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or ""),
            int(ds.get("SamplesPerPixel") or 1), int(ds.get("PlanarConfiguration") or 0),
            str(ds.get("PhotometricInterpretation", "") or ""), ds)
    except (AttributeError, TypeError, ValueError):
        level = None
    if level is None or min(level.width, level.height, level.tile_width, level.tile_height) < 1:
        raise ImageInputError(f"{name} lacks its matrix or tile size",
                              "check the slide on the PACS (TotalPixelMatrixColumns/Rows, Rows, Columns)")
    if int(ds.get("BitsAllocated") or 8) != 8:
        raise ImageInputError(f"{name} has {ds.get('BitsAllocated')}-bit samples; slides are read as 8-bit",
                              "read a brightfield (8-bit RGB) slide")
    tiles = level.across * level.down
    if level.frames < tiles:
        raise ImageInputError(f"{name} declares {level.frames} frames, fewer than the {tiles} tiles "
                              f"of its {level.width}x{level.height} matrix: the level is incomplete on the PACS",
                              "send the slide to the PACS again, or read a local copy")
    return level


def slide_levels(headers: Sequence[Any], where: str, options: ImagingOptions) -> list[RemoteLevel]:
    """The pyramid of a slide series' headers: its VOLUME instances, largest first (one per
    size; label, overview and thumbnail instances are never levels).

    Raises:
        ImageInputError: no VOLUME instance, a level that cannot be read by frame, or one that
            declares burned-in annotation when that is not allowed.
    """
    volumes = [ds for ds in headers if str(ds.get("SOPClassUID", "")) == WSI_SOP_CLASS
               and [kind.upper() for kind in header_values(ds, "ImageType")[2:3]] == ["VOLUME"]]
    if not volumes:
        raise ImageInputError(f"{where} holds no VOLUME instance (only label or overview images)",
                              "choose the slide's image series")
    by_size: dict[tuple[int, int], RemoteLevel] = {}
    for ds in sorted(volumes, key=lambda d: int(d.get("InstanceNumber") or 0)):
        level = _level(ds, where)
        by_size.setdefault((level.width, level.height), level)
    from medgem.inputs.deid import BurnedInAnnotationError

    for level in by_size.values():
        if burned_in(level.header) and not options.allow_burned_in:
            raise BurnedInAnnotationError(f"{where}: a level declares Burned In Annotation = YES: text in "
                                          "its pixels cannot be removed", "allow burned-in annotation explicitly")
    return sorted(by_size.values(), key=lambda lv: -lv.width * lv.height)


def frame_decoder(level: RemoteLevel, syntax: str) -> Callable[[bytes], NDArray[np.uint8]] | None:
    """How one frame's bytes in transfer syntax ``syntax`` become pixels: uncompressed bytes
    are the pixels row by row; compressed ones go through wsidicom's decoder for their syntax,
    the one a local DICOM slide's tiles go through, so both give the same pixels. None when no
    installed decoder reads ``syntax``.

    Raises:
        MissingDependencyError: wsidicom (the pathology extra) is not installed.
    """
    th, tw, samples = level.tile_height, level.tile_width, level.samples
    if syntax in UNCOMPRESSED:
        def raw(data: bytes) -> NDArray[np.uint8]:
            pixels = np.frombuffer(data, dtype=np.uint8)[:th * tw * samples]
            if level.planar == 1 and samples > 1:
                return pixels.reshape(samples, th, tw).transpose(1, 2, 0)
            return pixels.reshape(th, tw, samples)
        return raw
    require("wsidicom", "pathology", "reading DICOM whole-slide images")
    from pydicom.uid import UID
    from wsidicom.codec import Decoder
    from wsidicom.geometry import Size

    if Decoder.select_decoder(UID(syntax), samples, 8) is None:
        return None
    decoder = Decoder.create(UID(syntax), samples, 8, Size(tw, th), level.photometric)
    return lambda data: np.asarray(decoder.decode(data))


def decode_frame(data: bytes, level: RemoteLevel, decode: Callable[[bytes], NDArray[np.uint8]]
                 ) -> NDArray[np.uint8]:
    """One frame as (tile_height, tile_width, 3) RGB (grey tiles repeated to three channels).

    Raises:
        ImageInputError: the bytes do not decode to a tile of the level's size.
    """
    th, tw = level.tile_height, level.tile_width
    try:
        tile = decode(data)
        if tile.ndim == 2:
            tile = tile[..., None]
        if tile.shape[2] == 1:
            tile = np.repeat(tile, 3, axis=2)
        tile = tile[..., :3]
        if tile.shape != (th, tw, 3):
            raise ValueError(f"{tile.shape[1]}x{tile.shape[0]}, not {tw}x{th}")
    except Exception as exc:  # decoders raise many types on broken bytes
        raise ImageInputError(f"a tile of level instance …{level.uid[-12:]} does not decode ({exc})",
                              "check the slide on the PACS, or read a local copy") from None
    return np.ascontiguousarray(tile, dtype=np.uint8)


class FrameReader:
    """Regions of a remote pyramid assembled from the frames they overlap, fetched on demand
    (several per request) and kept in a small cache of decoded tiles."""

    def __init__(self, client: FrameSource, study: str, series: str, levels: list[RemoteLevel],
                 options: ImagingOptions, where: str) -> None:
        self.client, self.study, self.series, self.where = client, study, series, where
        self.options = options
        self.record = SlideFetch(levels)
        self._cache: OrderedDict[tuple[int, int], NDArray[np.uint8]] = OrderedDict()
        self._decoders: dict[str, Callable[[bytes], NDArray[np.uint8]] | None] = {}
        self._asked: dict[int, tuple[str, str]] = {}
        self._cached_bytes = 0

    def slide(self) -> SlideReader:
        """The pyramid as ``wsi.slide_to_input`` reads it (downsample against the base width,
        as local DICOM slides are measured)."""
        levels = self.record.levels
        base = levels[0].width
        return SlideReader("dicom", [Level(lv.width, lv.height, base / lv.width, lv.mpp) for lv in levels],
                           self.read, lambda: None)

    def read(self, index: int, x: int, y: int, width: int, height: int) -> Image.Image:
        """A ``width`` x ``height`` region of level ``index`` whose corner is (x, y) in level-0
        pixels; outside the level's matrix is white, as a local slide reads."""
        level = self.record.levels[index]
        scale = self.record.levels[0].width / level.width
        left, top = int(x / scale), int(y / scale)
        out = np.full((height, width, 3), 255, dtype=np.uint8)
        tw, th = level.tile_width, level.tile_height
        columns = range(max(0, left // tw), min(level.across, -(-(left + width) // tw)))
        rows = range(max(0, top // th), min(level.down, -(-(top + height) // th)))
        wanted = [(c, r) for r in rows for c in columns]
        tiles = self._tiles(index, [level.frame_number(c, r) for c, r in wanted])
        for (c, r), tile in zip(wanted, tiles, strict=True):
            # the part of the tile inside the matrix and inside the region, in level pixels
            x0, y0 = max(c * tw, left), max(r * th, top)
            x1 = min((c + 1) * tw, left + width, level.width)
            y1 = min((r + 1) * th, top + height, level.height)
            if x1 > x0 and y1 > y0:
                out[y0 - top:y1 - top, x0 - left:x1 - left] = tile[y0 - r * th:y1 - r * th, x0 - c * tw:x1 - c * tw]
        return Image.fromarray(out, mode="RGB")

    def _tiles(self, index: int, numbers: list[int]) -> list[NDArray[np.uint8]]:
        missing = [n for n in dict.fromkeys(numbers) if (index, n) not in self._cache]
        fresh: dict[int, NDArray[np.uint8]] = {}
        for start in range(0, len(missing), FRAMES_PER_REQUEST):
            batch = missing[start:start + FRAMES_PER_REQUEST]
            fresh.update(zip(batch, self._fetch(index, batch), strict=True))
        tiles = []
        for number in numbers:
            tile = fresh.get(number)
            if tile is None:
                tile = self._cache[(index, number)]
                self._cache.move_to_end((index, number))
            tiles.append(tile)
        for number, tile in fresh.items():
            self._keep((index, number), tile)
        return tiles

    def _fetch(self, index: int, batch: list[int]) -> list[NDArray[np.uint8]]:
        """One WADO-RS request for ``batch``, decoded in the syntax the answer names; a syntax
        no decoder here reads is asked for again as pixels (the server decodes it)."""
        level = self.record.levels[index]
        asked = self._asked.get(index, level.media_type)
        self.options.check_cancelled()
        data, answered = self.client.frames(self.study, self.series, level.uid, batch, asked)
        if self.client.bytes_moved > self.options.max_archive_bytes:
            raise ImageInputError(f"{self.where}: fetching moved more than "
                                  f"{self.options.max_archive_bytes:,} bytes", raise_hint("max_archive_bytes"))
        if len(data) != len(batch):
            raise PacsError(f"{self.where} answered {len(data)} frames for the {len(batch)} asked for",
                            "check the PACS's WADO-RS frame retrieval, then try again")
        syntax = answered[1]
        if syntax not in self._decoders:
            self._decoders[syntax] = frame_decoder(level, syntax)
        decode = self._decoders[syntax]
        if decode is None:
            if asked == AS_PIXELS:
                raise PacsError(f"{self.where} answered frames in {syntax} when asked for uncompressed ones",
                                "check the PACS's WADO-RS frame retrieval")
            self._asked[index] = AS_PIXELS
            return self._fetch(index, batch)
        self.record.fetched.setdefault(level.uid, set()).update(batch)
        return [decode_frame(raw, level, decode) for raw in data]

    def _keep(self, key: tuple[int, int], tile: NDArray[np.uint8]) -> None:
        self._cache[key] = tile
        self._cached_bytes += tile.nbytes
        while self._cached_bytes > TILE_CACHE_BYTES and len(self._cache) > 1:
            _, dropped = self._cache.popitem(last=False)
            self._cached_bytes -= dropped.nbytes


def read_remote_slide(client: FrameSource, study: str, series: str, options: ImagingOptions,
                      where: str, name: str) -> tuple[MedicalInput, SlideFetch, list[Any]]:
    """Read a slide series as a local slide is read, fetching only the frames it needs.

    Args:
        client: an open DICOMweb client (its ``bytes_moved`` is checked against
            ``options.max_archive_bytes`` after every request).
        where: the series as errors name it; ``name``: the input's source name.

    Returns:
        (the slide input, what was fetched, the original headers of the levels whose frames
        were fetched, patch level first, pixel data removed).

    Raises:
        PacsError: the PACS refused or lacks a frame (404), is down or slow.
        ImageInputError: a level that cannot be read by frame, over the byte limit, no tissue.
    """
    headers = client.series_metadata(study, series)
    levels = slide_levels(headers, where, options)
    reader = FrameReader(client, study, series, levels, options, where)
    item = slide_to_input(reader.slide(), options, name)
    order = [levels[int(str(item.metadata["patch_level"]))], levels[int(str(item.metadata["mask_level"]))]]
    used = [level for level in dict.fromkeys(order) if level.uid in reader.record.fetched]
    return item, reader.record, [without_pixels(level.header) for level in used]
