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

from medgem.errors import ImageInputError
from medgem.inputs.dicom import DicomSource, check_image_header, looks_like_dicom, read_header
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
        """One line for listings: short UID, modality, description, slice count."""
        number = f"#{self.number} " if self.number is not None else ""
        description = f" '{self.description}'" if self.description else ""
        return f"{number}{self.short_uid} {self.modality or '?'}{description}: {len(self.members)} slices"


def _is_candidate(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    if not base or base in SKIPPED_NAMES or base.startswith("."):
        return False
    return Path(base).suffix.lower() not in SKIPPED_SUFFIXES


def folder_sources(folder: Path, options: ImagingOptions) -> list[DicomSource]:
    """DICOM files under ``folder`` (recursively), recognised by the 'DICM' marker.

    Raises:
        ImageInputError: an empty folder, no DICOM files, or more files than the slice limit.
    """
    files = sorted(p for p in folder.rglob("*") if p.is_file() and _is_candidate(p.name))
    if not files:
        raise ImageInputError(f"folder {folder.name} is empty", "pass a folder holding DICOM files")
    if len(files) > options.slice_limit:
        raise ImageInputError(
            f"folder {folder.name} holds {len(files)} files, over the limit of {options.slice_limit}",
            "pass one series' folder, or raise the slice limit",
        )
    sources = []
    for path in files:
        with path.open("rb") as handle:
            head = handle.read(132)
        if looks_like_dicom(head):
            sources.append(DicomSource(name=str(path.relative_to(folder)), path=path))
    if not sources:
        raise ImageInputError(
            f"folder {folder.name} holds {len(files)} files but none is DICOM",
            "pass a folder of DICOM files (with the 'DICM' marker), or the images one by one",
        )
    return sources


def zip_sources(archive: Path, options: ImagingOptions) -> list[DicomSource]:
    """DICOM files inside a zip, read into memory after checking the archive's declared sizes.

    Raises:
        ImageInputError: not a zip, an archive expanding past the byte limit (zip bomb), too many
            files, or no DICOM files inside.
    """
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = [i for i in zf.infolist() if not i.is_dir() and _is_candidate(i.filename)]
            if len(infos) > options.slice_limit:
                raise ImageInputError(
                    f"{archive.name} holds {len(infos)} files, over the limit of {options.slice_limit}",
                    "zip one series only, or raise the slice limit",
                )
            total = sum(i.file_size for i in infos)
            if total > options.max_archive_bytes:
                raise ImageInputError(
                    f"{archive.name} expands to {total:,} bytes, over the limit of "
                    f"{options.max_archive_bytes:,} (possible zip bomb)",
                    "unpack it yourself and pass the folder, or raise max_archive_bytes",
                )
            sources = []
            for info in infos:
                data = zf.read(info)
                if looks_like_dicom(data[:132]):
                    sources.append(DicomSource(name=info.filename, data=data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as exc:
        raise ImageInputError(f"{archive.name} is not a readable zip ({exc})", "re-create the archive") from exc
    if not sources:
        raise ImageInputError(f"{archive.name} holds no DICOM files", "zip the DICOM files of one study")
    return sources


def group_series(sources: list[DicomSource], options: ImagingOptions) -> list[Series]:
    """Read each source's header and group image instances by SeriesInstanceUID.

    Non-image objects (reports, presentation states) are dropped; when nothing is left, the first
    one's error is raised.
    """
    groups: dict[str, Series] = {}
    first_error: ImageInputError | None = None
    for source in sources:
        ds = read_header(source)
        try:
            check_image_header(ds, source.name, options)
        except ImageInputError as exc:
            if "no pixel data" not in exc.message:
                raise
            first_error = first_error or exc
            continue
        uid = str(ds.get("SeriesInstanceUID", "") or "")
        if uid not in groups:
            number = ds.get("SeriesNumber")
            groups[uid] = Series(uid, str(ds.get("Modality", "") or ""),
                                 str(ds.get("SeriesDescription", "") or ""),
                                 int(number) if number not in (None, "") else None)
        groups[uid].members.append((source, ds))
    if not groups:
        assert first_error is not None
        raise first_error
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
    def number(ds: Any) -> int | None:
        value = ds.get("InstanceNumber")
        return int(value) if value not in (None, "") else None

    numbers = [number(ds) for _, ds in series.members]
    if all(n is not None for n in numbers) and len(set(numbers)) == len(numbers):
        series.members.sort(key=lambda m: number(m[1]) or 0)
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
