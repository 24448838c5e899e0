"""A study reference -> the series to read -> only the instances the prompt needs -> the
existing readers.

The order matters for what leaves the PACS: the series are listed (QIDO-RS / C-FIND) and one is
chosen; its instance headers are listed and sorted, and the slices to send are sampled from
that list exactly as a local folder is sampled (``series.sort_slices`` + ``sample_indices``);
only then are those instances retrieved, each de-identified (PS3.15) before it is written to a
private temporary folder that the folder reader reads and that is removed afterwards, whether
the read worked or not. A whole-slide series is read tile by tile instead (``slide_frames``):
only the frames its tissue mask and sampled patches need, over DICOMweb.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from medgem.errors import ImageInputError, PacsError
from medgem.inputs.dicom import (
    NON_IMAGE_MODALITIES,
    DicomSource,
    has_pixel_data,
    header_int,
    header_text,
    without_pixels,
)
from medgem.inputs.limits import ReadBudget
from medgem.inputs.options import ImagingOptions, MedicalInput, raise_hint
from medgem.inputs.pacs.client import PacsClient
from medgem.inputs.pacs.connect import open_client
from medgem.inputs.pacs.reference import StudyReference, uid_hash
from medgem.inputs.pacs.slide_frames import is_slide_series
from medgem.inputs.series import Series, sample_indices, sort_slices
from medgem.inputs.volume import slice_spacing

#: Modalities of series that hold no picture of the patient (reports, key objects, states,
#: RT plans and structures, masks): never chosen for a question.
NOT_IMAGE_SERIES = frozenset({"SR", "KO", "PR", "DOC", "RTPLAN", "RTRECORD", "PLAN", *NON_IMAGE_MODALITIES})


@dataclass(frozen=True)
class RemoteSeries:
    """One series of a remote study as listed (no pixels): what choosing and listing need."""

    uid: str
    modality: str
    body_part: str
    number: int | None
    description: str
    instances: int | None

    @property
    def short_uid(self) -> str:
        return ("…" + self.uid[-12:]) if len(self.uid) > 12 else self.uid

    def summary(self) -> str:
        """One line without free text (the description may hold names)."""
        number = f"#{self.number} " if self.number is not None else ""
        part = f" {self.body_part}" if self.body_part else ""
        count = f": {self.instances} instances" if self.instances is not None else ""
        return f"{number}{self.short_uid} {self.modality or '?'}{part}{count}"


@dataclass(frozen=True)
class FetchedStudy:
    """What was fetched, kept in memory beside the images (never written to disk): the
    original UIDs the answer refers to and the source headers a report back needs.

    Attributes:
        reference: where it came from (token included, for sending back).
        series: the chosen series' UID.
        instances: the SOPInstanceUIDs sent to the model, in prompt order (for a slide: the
            patch level's, then the level its tissue was found on, when another).
        headers: those instances' original headers, pixel data removed (SR evidence).
        total_instances: how many instances the series has.
        bytes_moved: bytes that crossed the wire to fetch them (listings included).
        frames: for a whole-slide image read tile by tile, the frames fetched (else None).
        frames_total: the frames its pyramid levels hold.
    """

    reference: StudyReference
    series: str
    instances: tuple[str, ...]
    headers: tuple[Any, ...] = field(repr=False)
    total_instances: int
    bytes_moved: int
    frames: int | None = None
    frames_total: int | None = None

    def audit_fields(self) -> dict[str, object]:
        """The fetch as an audit event's body: the PACS, hashed UIDs, counts, bytes."""
        body = {**self.reference.audit_fields(), "series": uid_hash(self.series),
                "instances": [uid_hash(uid) for uid in self.instances],
                "total_instances": self.total_instances, "bytes": self.bytes_moved}
        if self.frames is not None:
            body.update(frames=self.frames, frames_total=self.frames_total)
        return body

    def compact(self) -> FetchedStudy:
        """The same study holding only what a report back needs: the first header whole
        (the report's patient and study modules come from it), the others as their UIDs
        (what an image reference names). What a server keeps until an answer is reviewed."""
        if not self.headers:
            return self
        first = self.headers[0]
        return replace(self, headers=(first, *(reference_only(ds, first) for ds in self.headers[1:])))


def list_series(reference: StudyReference, client: PacsClient | None = None) -> list[RemoteSeries]:
    """The study's series, by series number then UID.

    Raises:
        PacsError: the PACS is down, refuses medgem, or does not know the study.
    """
    if client is None:
        with closing(open_client(reference)) as own:
            found = own.series(reference.study)
    else:
        found = client.series(reference.study)
    if not found:
        raise PacsError(f"study …{reference.study[-12:]} is not on {reference.where}",
                        "check the StudyInstanceUID")
    series = [RemoteSeries(header_text(ds, "SeriesInstanceUID"), header_text(ds, "Modality").upper(),
                           header_text(ds, "BodyPartExamined").upper(), header_int(ds, "SeriesNumber"),
                           header_text(ds, "SeriesDescription"), header_int(ds, "NumberOfSeriesRelatedInstances"))
              for ds in found]
    return sorted(series, key=lambda s: (s.number is None, s.number or 0, s.uid))


def choose_remote_series(series: list[RemoteSeries], reference: StudyReference,
                         options: ImagingOptions, prefer: Sequence[str] = ()) -> RemoteSeries:
    """The series to read: the one the reference or ``--series`` names; else among the image
    series the only one, or the one whose modality or body part the question (``prefer``,
    its words) or ``--modality`` names.

    Raises:
        PacsError: the named series is not in the study, the study has no image series, or
            several fit equally (listing them, so ``--series`` can pick one).
    """
    where = f"study …{reference.study[-12:]} on {reference.where}"
    listing = "; ".join(s.summary() for s in series)
    wanted = reference.series or options.series
    if wanted:
        key = wanted.strip().lstrip("…").lstrip("#")
        matches = [s for s in series if s.uid == key]
        if not matches and key.isdigit():  # a series number as listed (#5)
            matches = [s for s in series if s.number == int(key)]
        matches = matches or [s for s in series if key and key in s.uid]
        if len(matches) != 1:
            problem = "matches no series" if not matches else f"matches {len(matches)} series"
            raise PacsError(f"series {wanted[-16:]} {problem} in {where}: {listing}",
                            "give the series UID listed by `medgem inspect --study`")
        return matches[0]
    images = [s for s in series if s.modality not in NOT_IMAGE_SERIES]
    if not images:
        raise PacsError(f"{where} holds no image series ({listing})",
                        "ask about a study with CT, MR, X-ray or other images")
    if len(images) == 1:
        return images[0]
    words = {w.upper() for w in prefer for w in re.findall(r"[A-Za-z]+", w)}
    if options.modality:
        words.add(options.modality.upper())
    words |= {"MR" for w in list(words) if w in ("MRI",)} | {"CHEST" for w in list(words) if w in ("LUNG", "LUNGS", "THORAX")}
    scores = [(s.modality in words) + (bool(s.body_part) and s.body_part in words) for s in images]
    best = max(scores)
    top = [s for s, score in zip(images, scores, strict=True) if score == best]
    if best > 0 and len(top) == 1:
        return top[0]
    raise PacsError(f"{where} holds {len(images)} image series: "
                    + "; ".join(s.summary() for s in images),
                    "choose one with --series UID (the short UID shown is enough), or name its "
                    "modality or body part in the question")


def _sampled(instances: list[Any], options: ImagingOptions, where: str) -> tuple[list[Any], list[int], Series]:
    """Sort the instance headers as a local folder is sorted and pick the slices to send."""
    listed = Series("", "", "", None, [(DicomSource(name=header_text(ds, "SOPInstanceUID")), ds)
                                         for ds in instances])
    sort_slices(listed)
    frames = [header_int(ds, "NumberOfFrames") or 1 for _, ds in listed.members]
    if len(listed.members) == 1 or max(frames) > 1:
        picked = [0]  # one instance, or a multi-frame series: its first instance holds the frames
    else:
        picked = sample_indices(len(listed.members), options.max_slices)
    chosen = [listed.members[i][1] for i in picked]
    pixels = sum((header_int(ds, "Rows") or 0) * (header_int(ds, "Columns") or 0) * f
                 for ds, f in zip(chosen, (frames[i] for i in picked), strict=True))
    if pixels > options.max_total_pixels:
        raise ImageInputError(f"{where}: the {len(picked)} instances to fetch declare {pixels:,} pixels, over "
                              f"{options.max_total_pixels:,}", raise_hint("max_total_pixels"))
    return chosen, picked, listed


def read_study(reference: StudyReference, options: ImagingOptions, *,
               prefer: Sequence[str] = ()) -> tuple[MedicalInput, FetchedStudy]:
    """Fetch what the prompt needs of a remote study and read it like local files.

    Args:
        reference: the study, series or instance and how to reach it.
        options: the imaging choices and limits (``slice_limit`` bounds the series' instance
            count, ``max_archive_bytes`` the bytes fetched, ``max_total_pixels`` the pixels the
            sampled headers declare).
        prefer: words of the question, used to choose among several image series.

    Returns:
        The input as the folder or file reader made it (slice counts and sampled indices of
        the whole series), and what was fetched.

    Raises:
        PacsError: a bad or unknown reference, a PACS that is down, slow or refuses medgem, a
            series that is not an image.
        ImageInputError: over a reading limit, or an instance the readers refuse.
    """
    with closing(open_client(reference)) as client:
        return _read(client, reference, options, prefer)


def _read(client: PacsClient, reference: StudyReference, options: ImagingOptions,
          prefer: Sequence[str]) -> tuple[MedicalInput, FetchedStudy]:
    from medgem.inputs.deid import deidentify
    from medgem.inputs.readers import READERS

    series_list = list_series(reference, client)
    chosen = choose_remote_series(series_list, reference, options, prefer)
    where = f"series {chosen.short_uid} on {reference.where}"
    if chosen.modality in NOT_IMAGE_SERIES and not options.allow_non_image:
        raise PacsError(f"{where} is a {chosen.modality} series, not images of the patient",
                        "choose an image series (medgem inspect --study lists them)")
    instances = client.instances(reference.study, chosen.uid)
    if is_slide_series(instances):
        return _read_slide(client, reference, chosen, instances, options, len(series_list), where)
    if reference.instance:
        instances = [ds for ds in instances if header_text(ds, "SOPInstanceUID") == reference.instance]
        if not instances:
            raise PacsError(f"instance …{reference.instance[-12:]} is not in {where}",
                            "check the SOPInstanceUID")
    if not instances:
        raise PacsError(f"{where} lists no instances", "choose another series")
    budget = ReadBudget(options, where)
    budget.files(len(instances))
    wanted, picked, listed = _sampled(instances, options, where)
    uids = [header_text(ds, "SOPInstanceUID") for ds in wanted]
    key = os.urandom(32)  # pseudonyms for this read only: nothing links it to another
    headers: list[Any] = []
    with tempfile.TemporaryDirectory(prefix="medgem-pacs-") as folder:
        study_dir = Path(folder) / f"study-{uid_hash(reference.study)[:8]}"
        study_dir.mkdir()
        for number, ds in enumerate(client.retrieve(reference.study, chosen.uid, uids)):
            options.check_cancelled()
            if client.bytes_moved > options.max_archive_bytes:
                raise ImageInputError(f"{where}: fetching moved more than {options.max_archive_bytes:,} bytes",
                                      raise_hint("max_archive_bytes"))
            if not has_pixel_data(ds):
                raise PacsError(f"{where} holds instances without pixel data (not an image)",
                                "choose an image series")
            headers.append(without_pixels(ds))
            clean = _deidentified(ds, key, options, deidentify)
            clean.save_as(study_dir / f"{number:05d}.dcm", enforce_file_format=True)
        flat = replace(options, series=None)
        if len(uids) == 1:
            item = READERS["dicom"](study_dir / "00000.dcm", flat)
            item = replace(item, source=study_dir.name)
        else:
            item = READERS["dicom-folder"](study_dir, flat)
    item = _whole_series_facts(item, chosen, listed, picked, len(series_list))
    fetched = FetchedStudy(reference, chosen.uid, tuple(uids), tuple(headers), len(instances),
                           client.bytes_moved)
    return item, fetched


def _read_slide(client: PacsClient, reference: StudyReference, chosen: RemoteSeries,
                instances: list[Any], options: ImagingOptions, series_count: int, where: str
                ) -> tuple[MedicalInput, FetchedStudy]:
    """A whole-slide series: only the frames the patches and the tissue mask need
    (``slide_frames``), never its instances whole. Frames by number are a WADO-RS request, so
    DIMSE (whose C-GET moves whole instances: every level of the pyramid) is refused."""
    from medgem.inputs.pacs.dicomweb import DicomwebClient
    from medgem.inputs.pacs.slide_frames import read_remote_slide

    if reference.protocol == "dimse" or not isinstance(client, DicomwebClient):
        raise PacsError(f"{where} is a whole-slide image: its tiles are fetched by frame, which needs "
                        "DICOMweb (a DIMSE C-GET would move every pyramid level whole)",
                        "give the study's DICOMweb URL (https://HOST/dicom-web/studies/UID)")
    if reference.instance and all(header_text(ds, "SOPInstanceUID") != reference.instance for ds in instances):
        raise PacsError(f"instance …{reference.instance[-12:]} is not in {where}", "check the SOPInstanceUID")
    ReadBudget(options, where).files(len(instances))
    item, record, headers = read_remote_slide(client, reference.study, chosen.uid, options, where,
                                              f"study-{uid_hash(reference.study)[:8]}")
    item = replace(item, metadata=dict(item.metadata, series=chosen.short_uid, series_count=series_count))
    fetched = FetchedStudy(reference, chosen.uid, tuple(header_text(ds, "SOPInstanceUID") for ds in headers),
                           tuple(headers), len(instances), client.bytes_moved,
                           frames=record.frames_moved, frames_total=record.frames_total)
    return item, fetched


def fetch_evidence(reference: StudyReference, series_hash: str,
                   instance_hashes: Sequence[str]) -> FetchedStudy:
    """The instances an earlier answer saw, found again from the UID hashes its audit record
    keeps (the record never holds a UID): the study's series listed and the one whose hash
    matches chosen, its instances listed and those whose hashes match kept in the recorded
    order. Only the first is retrieved (pixels and all: the report takes the patient and study
    modules from it); the others are referenced by the UIDs their listing gives.

    Raises:
        PacsError: the series or some of the instances are no longer on the PACS, or it is
            down or refuses medgem.
    """
    with closing(open_client(reference)) as client:
        listed = [s for s in list_series(reference, client) if uid_hash(s.uid) == series_hash]
        where = f"study …{reference.study[-12:]} on {reference.where}"
        if len(listed) != 1:
            raise PacsError(f"the series the answer saw is no longer in {where}",
                            "nothing was sent; check that the study was not changed on the PACS")
        series = listed[0].uid
        by_hash = {uid_hash(header_text(ds, "SOPInstanceUID")): ds for ds in client.instances(reference.study, series)}
        found = [by_hash[h] for h in instance_hashes if h in by_hash]
        if not found or len(found) != len(instance_hashes):
            raise PacsError(f"{len(instance_hashes) - len(found)} of the {len(instance_hashes)} instances the "
                            f"answer saw are no longer in {where}", "nothing was sent; check the study on the PACS")
        uids = [header_text(ds, "SOPInstanceUID") for ds in found]
        (whole,) = client.retrieve(reference.study, series, uids[:1])  # drained: DIMSE releases then
        first = without_pixels(whole)
        rest = [reference_only(ds, first) for ds in found[1:]]
        return FetchedStudy(reference, series, tuple(uids), (first, *rest), len(by_hash), client.bytes_moved)


def reference_only(listed: Any, first: Any) -> Any:
    """An instance (a header, or a listing's entry) as SR evidence: the four UIDs an image
    reference names, the study and series taken from ``first``."""
    import pydicom

    ds = pydicom.Dataset()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = first.StudyInstanceUID, first.SeriesInstanceUID
    ds.SOPInstanceUID = header_text(listed, "SOPInstanceUID")
    ds.SOPClassUID = header_text(listed, "SOPClassUID") or first.SOPClassUID
    return ds


def _deidentified(ds: Any, key: bytes, options: ImagingOptions, deidentify: Any) -> Any:
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    if not hasattr(ds, "file_meta") or "TransferSyntaxUID" not in ds.file_meta:
        meta = FileMetaDataset()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta = meta
    try:
        return deidentify(ds, key, allow_burned_in=options.allow_burned_in)
    except ValueError as exc:
        raise ImageInputError(f"an instance could not be de-identified ({exc})", "check the study") from None


def _whole_series_facts(item: MedicalInput, chosen: RemoteSeries, listed: Series,
                        picked: list[int], series_count: int) -> MedicalInput:
    """The facts of the whole remote series (its slice count, the indices sent, its spacing),
    as a local read of all its files would give them."""
    total = len(listed.members)
    facts = dict(item.metadata, series=chosen.short_uid, series_count=series_count)
    description = item.description
    if item.kind == "volume" and "slices_total" in facts and total > 1:
        facts.update(slices_total=total, sampled_indices=picked)
        sent = len(picked)
        description = description.replace(f"{sent} of {sent} slices", f"{sent} of {total} slices")
        spacing = slice_spacing(listed)
        if spacing is not None:
            facts["slice_spacing_mm"] = spacing
    return replace(item, metadata=facts, description=description)


def inspect_study(reference: StudyReference, options: ImagingOptions
                  ) -> tuple[dict[str, object], MedicalInput | None, FetchedStudy | None]:
    """What ``medgem inspect --study`` reports: the study's series (listed without fetching a
    pixel), and, when one series is chosen (the reference or ``--series`` names it, or the
    study has one image series), that series read as the model would get it.

    Raises:
        PacsError: as ``read_study``.
    """
    from medgem.inputs.facts import item_report

    series = list_series(reference)
    report: dict[str, object] = {
        "source": f"study …{reference.study[-12:]} on {reference.where}", "format": reference.protocol,
        "series": [{"series": s.short_uid, "number": s.number, "modality": s.modality or None,
                    "slices": s.instances, "description": s.description or None,
                    "body_part": s.body_part or None} for s in series]}
    try:
        choose_remote_series(series, reference, options)
    except PacsError as exc:
        if reference.series or options.series:
            raise
        report["choose"] = f"{exc.message}: pass --series UID (the short UID shown is enough)"
        return report, None, None
    item, fetched = read_study(reference, options)
    report.update(item_report(item),
                  fetched={"instances": len(fetched.instances), "of": fetched.total_instances,
                           "bytes": fetched.bytes_moved,
                           **({"frames": fetched.frames, "frames_of": fetched.frames_total}
                              if fetched.frames is not None else {})})
    return report, item, fetched
