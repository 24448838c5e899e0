"""PDF documents: real PDFs written offline, rendered through pdfium."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from medgem.errors import ImageInputError
from medgem.inputs import ImagingOptions, read_inputs
from medgem.inputs.readers import detect_format

pytest.importorskip("pypdfium2")
wsi_fixtures = pytest.importorskip("wsi_fixtures")

PAGES = ["Haemoglobin 13.2 g/dL", "Sodium 140 mmol/L", "Potassium 4.1 mmol/L"]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return wsi_fixtures.write_pdf(tmp_path_factory.mktemp("pdf") / "labs.pdf", PAGES)


def _ink_rows(image: object) -> np.ndarray:
    grey = np.asarray(image.convert("L"))  # type: ignore[attr-defined]
    return np.where((grey < 128).any(axis=1))[0]


def test_pages_become_square_model_sized_images_in_order(report: Path) -> None:
    assert detect_format(report) == "pdf"
    item = read_inputs([report]).items[0]
    assert item.kind == "document" and len(item.images) == 3
    assert {im.size for im in item.images} == {(896, 896)}
    # A4 portrait: 842 pt tall -> 896 px; 595 pt wide -> 633 px, centred on white
    first = np.asarray(item.images[0])
    assert (first[:, :130] == 255).all() and (first[:, -130:] == 255).all()
    rows = _ink_rows(item.images[0])
    assert len(rows) and rows.max() < 200  # the text sits at the top of the page
    assert item.text is None and item.metadata["text_chars"] == sum(len(p) for p in PAGES)


def test_text_layer_is_sent_only_when_asked_in_page_order(report: Path) -> None:
    item = read_inputs([report], ImagingOptions(pdf_text=True)).items[0]
    assert item.text is not None
    positions = [item.text.index(page) for page in PAGES]
    assert positions == sorted(positions)
    assert "[page 3]" in item.text


def test_document_title_and_author_never_reach_output(report: Path) -> None:
    result = run_cli("inspect", str(report), "--json", timeout=120)
    assert result.returncode == 0, result.stderr
    assert wsi_fixtures.PLANTED_NAME not in result.stdout
    assert json.loads(result.stdout)["metadata"]["pages"] == 3


def test_inspect_shows_pages_and_what_is_sent(report: Path) -> None:
    result = run_cli("inspect", str(report), "--pdf-text", timeout=120)
    assert result.returncode == 0, result.stderr
    assert "pages:              3" in result.stdout
    assert "(sent)" in result.stdout and "one per page in order" in result.stdout


def test_pdf_text_on_a_pdf_without_text_says_none_is_sent(tmp_path: Path) -> None:
    """A scanned report has no text layer: --pdf-text cannot send one, and inspect says so
    instead of telling the user to pass the --pdf-text they passed."""
    scan = wsi_fixtures.write_pdf(tmp_path / "scan.pdf", [""])
    item = read_inputs([scan], ImagingOptions(pdf_text=True)).items[0]
    assert item.text is None
    assert any("no text layer" in w for w in item.warnings), item.warnings
    result = run_cli("inspect", str(scan), "--pdf-text", timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--pdf-text sends it" not in result.stdout, result.stdout
    assert "no text layer" in result.stdout, result.stdout


def test_encrypted_pdf_is_one_clear_error(tmp_path: Path) -> None:
    path = wsi_fixtures.write_encrypted_pdf(tmp_path / "locked.pdf")
    with pytest.raises(ImageInputError, match="password-protected"):
        read_inputs([path])


def test_thousand_page_pdf_is_refused_before_rendering(tmp_path: Path) -> None:
    path = wsi_fixtures.write_pdf(tmp_path / "long.pdf", [f"page {n}" for n in range(1000)])
    with pytest.raises(ImageInputError, match=r"1000 pages, over the limit of 20.*--max-pages"):
        read_inputs([path])


def test_page_limit_can_be_raised(tmp_path: Path) -> None:
    path = wsi_fixtures.write_pdf(tmp_path / "five.pdf", [f"page {n}" for n in range(5)])
    with pytest.raises(ImageInputError):
        read_inputs([path], ImagingOptions(max_pages=4))
    assert len(read_inputs([path], ImagingOptions(max_pages=5)).items[0].images) == 5


def test_pdf_upload_bytes_go_through_the_reader_table(report: Path) -> None:
    from medgem.inputs import Upload, read_inputs

    loaded = read_inputs([Upload(report.read_bytes(), "application/pdf", "labs.pdf")])
    assert len(loaded.images) == 3


def test_slide_pdf_and_dicom_wsi_uploads_are_never_stored_raw(report: Path, tmp_path: Path) -> None:
    import io
    import zipfile

    from medgem.inputs import deidentify_upload as deidentify_bytes

    slide = wsi_fixtures.write_aperio(tmp_path / "s.svs", wsi_fixtures.slide_pixels((2, 1), 256, [(0, 0)]))
    assert deidentify_bytes(report.read_bytes(), "application/pdf", b"k") == (None, "application/pdf")
    assert deidentify_bytes(slide.read_bytes(), "image/tiff", b"k")[0] is None
    folder = wsi_fixtures.write_dicom_wsi(tmp_path / "dwsi", wsi_fixtures.slide_pixels((2, 1), 256, [(0, 0)]))
    label = (folder / "label.dcm").read_bytes()
    assert deidentify_bytes(label, "application/dicom", b"k")[0] is None
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for file in sorted(folder.iterdir()):
            archive.write(file, file.name)
    assert deidentify_bytes(buffer.getvalue(), "application/zip", b"k")[0] is None
    # a DICOM file whose 128-byte preamble is a TIFF header (dual-format files exist) is still
    # an ordinary DICOM: kept, de-identified
    from pydicom.data import get_testdata_file

    dual = Path(str(get_testdata_file("CT_small.dcm"))).read_bytes()
    assert dual[:4] == b"II*\x00"
    assert deidentify_bytes(dual, "application/dicom", b"k")[0] is not None


def test_a_pdf_question_sends_pages_in_order_and_the_text_before_the_question(
    tiny_vlm_checkpoint: Path, report: Path
) -> None:
    from medgem import MedGemma

    model = MedGemma.load(tiny_vlm_checkpoint, options={"progress": False})
    question = "List the lab values as JSON"
    request = model.request(question, images=[str(report)], pdf_text=True)
    pages = read_inputs([report]).items[0].images
    assert len(request.images) == 3
    for part, page in zip(request.images, pages, strict=True):
        assert np.array_equal(np.asarray(part.image), np.asarray(page))
    text = request.messages[-1].text
    assert [text.index(p) for p in PAGES] == sorted(text.index(p) for p in PAGES)
    assert text.index(PAGES[-1]) < text.index(question)
    plain = model.request(question, images=[str(report)])
    assert PAGES[0] not in plain.messages[-1].text  # the text layer only when asked
    assert model.ask(question, images=[str(report)], max_new_tokens=2).usage.completion_tokens == 2
