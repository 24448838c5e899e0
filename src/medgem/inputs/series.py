"""Folders and zips of DICOM files -> series: grouped by SeriesInstanceUID, chosen, sorted, sampled.

Only headers are read here; the caller decodes the pixels of the sampled slices alone, so a
2000-slice series costs 85 decodes, not 2000.
"""

from __future__ import annotations

import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medgem.errors import ImageInputError, NotAnImageError
from medgem.inputs.dicom import (
    DicomSource,
    check_image_header,
    header_int,
    looks_like_dicom,
    read_header,
)
from medgem.inputs.limits import CountingReader, ReadBudget, describe_files
from medgem.inputs.options import ImagingOptions

#: Files that are never DICOM instances, skipped when scanning a folder or zip.
SKIPPED_NAMES = {"DICOMDIR", ".DS_Store", "Thumbs.db"}
SKIPPED_SUFFIXES = {".txt", ".xml", ".json", ".md", ".csv", ".html", ".pdf", ".ini", ".db"}


@dataclass
class Series:
    """The instances of one SeriesInstanceUID, with the header facts needed to choose and sort.

    Attributes:
        uid: SeriesInstanceUID ("" when absent).
        modality: DICOM modality.
        description: SeriesDescription (shown to the local user only, never in model metadata).
        number: SeriesNumber when present.
        members: (source, header) pairs, in sorted order once ``sort_slices`` ran.
    """

    uid: str
    modality: str
    description: str
    number: int | None
    members: list[tuple[DicomSource, Any]] = field(default_factory=list)

    @property
    def short_uid(self) -> str:
        """The last 12 characters of the UID: enough to pick the series, not the whole UID."""
        return ("…" + self.uid[-12:]) if len(self.uid) > 12 else self.uid

    def summary(self) -> str:
        """One line for listings that travel (errors go back to clients and into the audit
        trail): short UID, modality and slice count; never the free-text description, which
        can hold names."""
        number = f"#{self.number} " if self.number is not None else ""
        return f"{number}{self.short_uid} {self.modality or '?'}: {len(self.members)} slices"


def _is_candidate(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    if not base or base in SKIPPED_NAMES or base.startswith("."):
        return False
    return Path(base).suffix.lower() not in SKIPPED_SUFFIXES


#: One DICOM instance found while scanning: where its bytes are and its header (no pixels).
Header = tuple[DicomSource, Any]


def _found(found: list[Header], refused: list[ImageInputError], where: str, names: list[str],
           what: str) -> list[Header]:
    """The image headers a scan found; when none, the first non-image object's error, else
    what the folder or zip holds instead."""
    if found:
        return found
    if refused:
        raise refused[0]
    if not names:
        raise ImageInputError(f"{what} {where} is empty", f"pass a {what} holding DICOM files")
    raise ImageInputError(

        f"{what} {where} holds no images ({describe_files(names)}; none is DICOM)",
        "pass a folder or zip of DICOM files (with the 'DICM' marker), or pictures one by one",
    )


def _accept(ds: Any, source: DicomSource, options: ImagingOptions, budget: ReadBudget,
            refused: list[ImageInputError]) -> bool:
    """Check one header; non-image objects are set aside (their error kept), others counted."""
    try:
        check_image_header(ds, source.name, options)
    except NotAnImageError as exc:
        refused.append(exc)
        return False
    budget.add_header(ds, source.name)
    return True


def folder_headers(folder: Path, options: ImagingOptions) -> list[Header]:
    """The headers of the DICOM image files under ``folder`` (recursively), recognised by the
    'DICM' marker. Files are counted before any is opened; each header's pixels are counted
    against the budget as it is read; ``options.cancelled`` is asked between files.

    Raises:
        ImageInputError: an empty folder, no DICOM images (naming what it holds), more files
            than the slice limit, more pixels than the pixel limit, or only non-image objects.
        InputCancelled: the caller cancelled.
    """
    budget = ReadBudget(options, f"folder {folder.name}")
    every = sorted(p for p in folder.rglob("*") if p.is_file())
    files = [p for p in every if _is_candidate(p.name)]
    budget.files(len(files))
    found: list[Header] = []
    refused: list[ImageInputError] = []
    for path in files:
        options.check_cancelled()
        with path.open("rb") as handle:
            head = handle.read(132)
        if not looks_like_dicom(head):
            continue
        source = DicomSource(name=str(path.relative_to(folder)), path=path)
        ds = read_header(source)
        if _accept(ds, source, options, budget, refused):
            found.append((source, ds))
    names = [str(p.relative_to(folder)) for p in every]
    return _found(found, refused, folder.name, names, "folder")


def zip_headers(archive: Path, options: ImagingOptions) -> list[Header]:
    """The headers of the DICOM image files inside a zip, streamed member by member: the
    member count and declared sizes are checked before anything is inflated, the bytes really
    inflated are counted, only each member's header is read (its pixels stay in the zip until
    decoded), and ``options.cancelled`` is asked between members.

    Raises:
        ImageInputError: not a zip, too many files, an archive expanding past the byte limit
            (zip bomb), more pixels than the limit, or no DICOM images inside.
        InputCancelled: the caller cancelled.
    """
    budget = ReadBudget(options, archive.name)
    found: list[Header] = []
    refused: list[ImageInputError] = []
    try:
        with zipfile.ZipFile(archive) as zf:
            every = [i for i in zf.infolist() if not i.is_dir()]
            infos = [i for i in every if _is_candidate(i.filename)]
            budget.files(len(infos))
            budget.declared_bytes(sum(i.file_size for i in infos))
            for info in infos:
                options.check_cancelled()
                with CountingReader(zf.open(info), budget) as stream:
                    if not looks_like_dicom(stream.read(132)):
                        continue
                    stream.seek(0)
                    source = DicomSource(name=info.filename, path=archive, member=info.filename)
                    ds = read_header(source, handle=stream)  # type: ignore[arg-type]
                if _accept(ds, source, options, budget, refused):
                    found.append((source, ds))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as exc:
        raise ImageInputError(f"{archive.name} is not a readable zip ({exc})", "re-create the archive") from exc
    return _found(found, refused, archive.name, [i.filename for i in every], "zip")


def group_series(headers: list[Header]) -> list[Series]:
    """Group scanned image headers by SeriesInstanceUID, ordered by series number then UID."""
    groups: dict[str, Series] = {}
    for source, ds in headers:
        uid = str(ds.get("SeriesInstanceUID", "") or "")
        if uid not in groups:
            groups[uid] = Series(uid, str(ds.get("Modality", "") or ""),
                                 str(ds.get("SeriesDescription", "") or ""),
                                 header_int(ds, "SeriesNumber"))
        groups[uid].members.append((source, ds))
    return sorted(groups.values(), key=lambda s: (s.number is None, s.number or 0, s.uid))


def choose_series(series: list[Series], wanted: str | None, where: str) -> Series:
    """Pick one series: the only one, or the one whose UID equals or uniquely contains ``wanted``.

    Raises:
        ImageInputError: several series and no choice (listing them), or a choice matching none
            or several.
    """
    listing = "; ".join(s.summary() for s in series)
    if wanted is None:
        if len(series) == 1:
            return series[0]
        raise ImageInputError(
            f"{where} holds {len(series)} series: {listing}",
            "choose one with --series UID (the short UID shown is enough)",
        )
    key = wanted.strip().lstrip("…").lstrip("#")
    exact = [s for s in series if s.uid == key]
    matches = exact or [s for s in series if key and key in s.uid]
    if not matches and key.isdigit():
        matches = [s for s in series if s.number == int(key)]
    if len(matches) == 1:
        return matches[0]
    problem = "matches no series" if not matches else f"matches {len(matches)} series"
    raise ImageInputError(f"--series {wanted} {problem} in {where}: {listing}", "give more of the UID")


def _position_along_normal(ds: Any) -> float | None:
    position, orientation = ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient")
    if not position or len(position) != 3:
        return None
    if orientation and len(orientation) == 6:
        normal = np.cross(np.asarray(orientation[:3], float), np.asarray(orientation[3:], float))
        return float(np.dot(normal, np.asarray(position, float)))
    return float(position[2])


def sort_slices(series: Series) -> str:
    """Sort members by InstanceNumber, else by position along the slice normal, else file name;
    returns which ("instance number", "position", "file name")."""
    numbers = [header_int(ds, "InstanceNumber") for _, ds in series.members]
    if all(n is not None for n in numbers) and len(set(numbers)) == len(numbers):
        series.members.sort(key=lambda m: header_int(m[1], "InstanceNumber") or 0)
        return "instance number"
    positions = [_position_along_normal(ds) for _, ds in series.members]
    if all(p is not None for p in positions) and len(set(positions)) == len(positions):
        order = np.argsort(np.asarray(positions, dtype=float), kind="stable")
        series.members[:] = [series.members[i] for i in order]
        return "position"
    series.members.sort(key=lambda m: m[0].name)
    return "file name"


def check_uniform(series: Series, where: str) -> tuple[int, int]:
    """All slices must share one size; returns it as (rows, columns).

    Raises:
        ImageInputError: mixed sizes, naming them and how many slices have each.
    """
    sizes = Counter((int(ds.Rows), int(ds.Columns)) for _, ds in series.members)
    if len(sizes) > 1:
        found = ", ".join(f"{c}x{r} ({n} slices)" for (r, c), n in sorted(sizes.items()))
        raise ImageInputError(
            f"series {series.short_uid} in {where} mixes image sizes: {found}",
            "it is probably several series sharing a UID (e.g. a localizer); pass the slices of "
            "one size in their own folder",
        )
    return next(iter(sizes))


def sample_indices(count: int, limit: int) -> list[int]:
    """Up to ``limit`` indices spread uniformly over ``range(count)``, first and last included."""
    if count <= limit:
        return list(range(count))
    return [int(i) for i in np.round(np.linspace(0, count - 1, limit)).astype(int)]
