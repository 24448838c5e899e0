"""Whole-slide images: real pyramidal TIFFs written with tifffile, read back through OpenSlide."""

from __future__ import annotations

import json
import resource
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from medgem.errors import ImageInputError
from medgem.inputs import ImagingOptions, read_inputs, save_preprocessed
from medgem.inputs.readers import detect_format
from medgem.inputs.tissue import otsu_threshold, sample_cells, tissue_mask
from medgem.inputs.wsi import Level, mask_level, patch_level

pytest.importorskip("openslide")
wsi_fixtures = pytest.importorskip("wsi_fixtures")

#: Tissue planted in these (col, row) cells of a 4 x 3 grid of 896-px cells at 1 um/px (10x).
PLANTED = [(1, 0), (2, 1), (3, 2), (0, 2)]


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("slides")
    image = wsi_fixtures.slide_pixels((4, 3), 896, PLANTED)
    return {
        "aperio": wsi_fixtures.write_aperio(folder / "case.svs", image),
        "generic": wsi_fixtures.write_generic(folder / "case.tif", image),
        "no_mpp": wsi_fixtures.write_aperio(folder / "nompp.svs", image, mpp=None),
    }


def _cells(item: object) -> list[tuple[int, int]]:
    origins = item.metadata["patch_origins"]  # type: ignore[attr-defined]
    return [(x // 896, y // 896) for x, y in origins]


def _reading_order(cells: list[tuple[int, int]]) -> list[tuple[int, int]]:
    return sorted(cells, key=lambda c: (c[1], c[0]))


def test_aperio_slide_reads_back_through_openslide_with_its_mpp(slides: dict[str, Path]) -> None:
    assert detect_format(slides["aperio"]) == "slide"
    item = read_inputs([slides["aperio"]]).items[0]
    facts = item.metadata
    assert facts["vendor"] == "aperio" and facts["mpp"] == 1.0 and facts["mpp_source"] == "file"
    assert [(lv["width"], lv["height"]) for lv in facts["levels"]] == [(3584, 2688), (896, 672), (224, 168)]
    assert facts["patch_level"] == 0 and facts["mask_level"] == 2
    assert item.kind == "slide" and item.modality == "SM"


@pytest.mark.parametrize("name", ["aperio", "generic"])
def test_patches_lie_exactly_on_the_planted_tissue_in_reading_order(
    slides: dict[str, Path], name: str
) -> None:
    item = read_inputs([slides[name]]).items[0]
    assert _cells(item) == _reading_order(PLANTED)
    for patch in item.images:
        assert patch.size == (896, 896)
        mean = np.asarray(patch).reshape(-1, 3).mean(axis=0)
        assert np.allclose(mean, wsi_fixtures.TISSUE_RGB, atol=6)  # stained, not glass
    assert item.metadata["tissue_fraction"] == pytest.approx(4 / 12, abs=0.02)


def test_generic_tiff_takes_its_resolution_from_the_tiff_tags(slides: dict[str, Path]) -> None:
    item = read_inputs([slides["generic"]]).items[0]
    assert item.metadata["vendor"] == "generic-tiff" and item.metadata["mpp"] == 1.0


def test_sampling_is_seeded_capped_and_keeps_reading_order(slides: dict[str, Path]) -> None:
    first = read_inputs([slides["aperio"]], ImagingOptions(max_patches=2, patch_seed=3)).items[0]
    again = read_inputs([slides["aperio"]], ImagingOptions(max_patches=2, patch_seed=3)).items[0]
    cells = _cells(first)
    assert len(cells) == 2 and cells == _cells(again) and set(cells) <= set(PLANTED)
    assert cells == _reading_order(cells)
    draws = {tuple(_cells(read_inputs([slides["aperio"]], ImagingOptions(max_patches=2, patch_seed=s)).items[0]))
             for s in range(6)}
    assert len(draws) > 1  # other seeds, other patches


def test_magnification_override_reads_bigger_regions(slides: dict[str, Path]) -> None:
    item = read_inputs([slides["aperio"]], ImagingOptions(magnification=5)).items[0]
    assert item.metadata["patch_region_px"] == 1792  # 2 um/px from a 1 um/px level 0
    assert [p.size for p in item.images] == [(896, 896)] * len(item.images)


def test_level_choice_follows_microns_per_pixel() -> None:
    levels = [Level(40000, 30000, 1, 0.25), Level(10000, 7500, 4, 1.0), Level(2500, 1875, 16, 4.0)]
    assert patch_level(levels, 0.25, 1.0) == 1  # 10x at 0.25 um/px lives on the 4x downsample
    assert patch_level(levels, 0.25, 0.5) == 0  # 20x needs level 0
    assert patch_level(levels, 0.25, 4.0) == 2
    # cell = 3584 level-0 px: level 2 has 224-px cells and 4.7 M pixels -> detect tissue there
    assert mask_level(levels, 3584, "s") == 2
    with pytest.raises(ImageInputError, match="no low-resolution level"):
        mask_level([Level(50000, 50000, 1, 0.25)], 3584, "s")


def test_tissue_mask_keeps_stain_and_drops_glass_and_pen() -> None:
    from PIL import Image

    rgb = np.empty((60, 90, 3), np.uint8)
    rgb[:] = wsi_fixtures.GLASS_RGB
    rgb[:, 30:60] = wsi_fixtures.TISSUE_RGB
    rgb[:, 60:] = (10, 10, 30)  # black pen: saturated but dark
    mask = tissue_mask(Image.fromarray(rgb))
    assert mask[:, 32:58].all() and not mask[:, :28].any() and not mask[:, 62:].any()
    assert otsu_threshold(np.array([10] * 50 + [200] * 50, np.uint8)) in range(10, 200)


def test_a_slide_covered_edge_to_edge_is_all_tissue() -> None:
    from PIL import Image

    rgb = np.empty((40, 80, 3), np.uint8)
    rgb[:, :40] = (190, 60, 160)  # two stain shades, no glass: Otsu alone would split them
    rgb[:, 40:] = (200, 150, 190)
    assert tissue_mask(Image.fromarray(rgb)).all()


def test_sample_of_fewer_cells_than_the_cap_is_all_of_them() -> None:
    from medgem.inputs.tissue import Cell

    cells = [Cell(i, 0, 1.0) for i in range(5)]
    assert sample_cells(cells, 125, 0) == cells


def test_missing_resolution_is_one_clear_error(slides: dict[str, Path]) -> None:
    with pytest.raises(ImageInputError, match=r"carries no resolution.*--mpp"):
        read_inputs([slides["no_mpp"]])
    item = read_inputs([slides["no_mpp"]], ImagingOptions(mpp=1.0)).items[0]
    assert _cells(item) == _reading_order(PLANTED)


def test_flat_50k_tiff_is_refused_without_decoding(tmp_path: Path) -> None:
    path = wsi_fixtures.write_flat_tiff_header(tmp_path / "flat.tif")
    assert path.stat().st_size < 1024  # only a header: decoding would have nothing to read
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ImageInputError, match="50000x50000 TIFF without a usable pyramid"):
        read_inputs([path])
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB


def _bad_input(kind: str, folder: Path) -> Path:
    """One file of each kind of bad input the issue names."""
    image = wsi_fixtures.slide_pixels((4, 3), 896, PLANTED)
    if kind == "flat 50k TIFF":
        return wsi_fixtures.write_flat_tiff_header(folder / "flat.tif")
    if kind == "no resolution":
        return wsi_fixtures.write_aperio(folder / "nompp.svs", image, mpp=None)
    if kind == "corrupt tile":
        path = wsi_fixtures.write_aperio(folder / "bad.svs", image)
        return wsi_fixtures.corrupt_tile(path, 4 * 14 + 8)  # tile row 4, col 8: in planted cell (2, 1)
    if kind == "blank glass":
        return wsi_fixtures.write_aperio(folder / "blank.svs", wsi_fixtures.slide_pixels((4, 3), 896, []))
    if kind == "encrypted PDF":
        return wsi_fixtures.write_encrypted_pdf(folder / "locked.pdf")
    return wsi_fixtures.write_pdf(folder / "long.pdf", [f"page {n}" for n in range(1000)])


@pytest.mark.parametrize(("kind", "says"), [
    ("flat 50k TIFF", "50000x50000 TIFF without a usable pyramid"),
    ("no resolution", "carries no resolution"),
    ("corrupt tile", "is corrupt"),
    ("blank glass", "no tissue found"),
    ("encrypted PDF", "password-protected"),
    ("1,000-page PDF", "1000 pages, over the limit of 20"),
])
def test_bad_input_is_one_error_line_a_failing_exit_and_nothing_written(
    kind: str, says: str, tmp_path: Path
) -> None:
    pytest.importorskip("pypdfium2")
    path = _bad_input(kind, tmp_path)
    out = tmp_path / "seen"
    result = run_cli("inspect", str(path), "--save-preprocessed", str(out), timeout=120)
    assert result.returncode == 1 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medgem: error: ") and says in lines[0], result.stderr
    assert " — " in lines[0]  # and what to do next
    assert not out.exists()


def test_mpp_flag_supplies_a_missing_resolution(slides: dict[str, Path]) -> None:
    result = run_cli("inspect", str(slides["no_mpp"]), "--mpp", "1.0", "--json", timeout=120)
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout)["metadata"]
    assert facts["mpp_source"] == "given (--mpp)" and facts["patches"] == len(PLANTED)


def test_label_and_vendor_text_never_reach_any_output(slides: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "seen"
    result = run_cli("--debug", "inspect", str(slides["aperio"]), "--json", "--save-preprocessed",
                     str(out), timeout=120)  # --debug: the most the logs ever say
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["metadata"]["patches"] == 4 and len(report["saved"]) == 5
    assert wsi_fixtures.PLANTED_NAME not in result.stdout + result.stderr
    for png in out.glob("*.png"):
        assert wsi_fixtures.PLANTED_NAME.encode() not in png.read_bytes()
        pixels = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(png).convert("RGB"))
        label_pixels = np.all(pixels == wsi_fixtures.LABEL_RGB, axis=-1).sum()
        assert label_pixels == 0, f"{png.name} shows the label"
    item = read_inputs([slides["aperio"]]).items[0]
    assert wsi_fixtures.PLANTED_NAME not in json.dumps(item.metadata) + item.description


def test_saved_overview_and_patches_are_what_the_model_gets(slides: dict[str, Path], tmp_path: Path) -> None:
    from PIL import Image

    item = read_inputs([slides["aperio"]]).items[0]
    written = save_preprocessed([item], tmp_path)
    names = [p.name for p in written]
    assert names[0] == "01_case_overview.png" and names[1:] == [f"01_case_patch_{i:03d}.png" for i in range(1, 5)]
    assert np.array_equal(np.asarray(Image.open(written[1])), np.asarray(item.images[0]))
    overview = np.asarray(Image.open(written[0]).convert("RGB"))
    assert np.all(overview == (255, 0, 0), axis=-1).any()  # the chosen grid is drawn in red
    # the tissue mask is tinted green (level 2: 56-px cells); glass is left as it is
    red, green, blue = (int(v) for v in overview[28, 56 + 28])  # inside planted cell (1, 0)
    assert green > red and green > blue
    assert np.allclose(overview[28, 28], wsi_fixtures.GLASS_RGB, atol=4)  # glass cell (0, 0)


def test_inspect_text_lists_vendor_levels_tissue_and_patches(slides: dict[str, Path]) -> None:
    result = run_cli("inspect", str(slides["aperio"]), "--max-patches", "3", "--patch-seed", "1",
                     timeout=120)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "vendor:             aperio" in text
    assert "level 2:            224x168, 16.0 um/px" in text
    assert "tissue fraction:    33.3%" in text
    assert "patches:            3 of 4 tissue cells (seed 1)" in text


@pytest.fixture(scope="module")
def dicom_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("wsidicom")
    image = wsi_fixtures.slide_pixels((4, 3), 224, PLANTED)
    return wsi_fixtures.write_dicom_wsi(tmp_path_factory.mktemp("dicom-wsi") / "slide", image)


def test_dicom_wsi_folder_is_read_through_wsidicom(dicom_slide: Path) -> None:
    assert detect_format(dicom_slide) == "slide"
    item = read_inputs([dicom_slide]).items[0]
    assert item.metadata["vendor"] == "dicom" and item.metadata["mpp"] == 4.0
    assert [(x // 224, y // 224) for x, y in item.metadata["patch_origins"]] == _reading_order(PLANTED)
    for patch in item.images:
        mean = np.asarray(patch).reshape(-1, 3).mean(axis=0)
        assert np.allclose(mean, wsi_fixtures.TISSUE_RGB, atol=6)


def test_dicom_wsi_written_by_wsidicom_reads_the_same(dicom_slide: Path, tmp_path: Path) -> None:
    """wsidicom's own writer: the slide saved again, with the pyramid level it adds (2x)."""
    from wsidicom import WsiDicom

    saved_to = tmp_path / "saved"
    saved_to.mkdir()
    with WsiDicom.open([p for p in dicom_slide.iterdir() if p.name != "label.dcm"]) as wsi:
        wsi.save(saved_to, add_missing_levels=True)
    item = read_inputs([saved_to]).items[0]
    assert [lv["downsample"] for lv in item.metadata["levels"]] == [1.0, 2.0, 4.0]
    original = read_inputs([dicom_slide]).items[0]
    assert item.metadata["patch_origins"] == original.metadata["patch_origins"]
    for saved, read in zip(item.images, original.images, strict=True):
        assert np.array_equal(np.asarray(saved), np.asarray(read))  # lossless both ways


def test_dicom_wsi_zip_reads_like_its_folder_and_hides_the_label(dicom_slide: Path, tmp_path: Path) -> None:
    import zipfile

    archive = tmp_path / "slide.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for file in sorted(dicom_slide.iterdir()):
            zf.write(file, file.name)
    assert detect_format(archive) == "slide"
    out = tmp_path / "seen"
    result = run_cli("inspect", str(archive), "--json", "--save-preprocessed", str(out), timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["metadata"]["patches"] == len(PLANTED)
    assert wsi_fixtures.PLANTED_NAME not in result.stdout + result.stderr
    from PIL import Image

    for png in out.glob("*.png"):
        pixels = np.asarray(Image.open(png).convert("RGB"))
        assert not np.all(pixels == wsi_fixtures.LABEL_RGB, axis=-1).any(), png.name


def test_ome_tiff_pyramid_in_subifds_is_read_through_tifffile(tmp_path: Path) -> None:
    image = wsi_fixtures.slide_pixels((4, 3), 896, PLANTED)
    path = wsi_fixtures.write_ome(tmp_path / "case.ome.tif", image)
    assert detect_format(path) == "slide"
    item = read_inputs([path]).items[0]
    facts = item.metadata
    assert facts["vendor"] == "ome-tiff" and facts["mpp"] == 1.0 and len(facts["levels"]) == 3
    assert facts["mask_level"] == 2  # the SubIFD level, not level 0
    assert _cells(item) == _reading_order(PLANTED)
    for patch, (col, row) in zip(item.images, _reading_order(PLANTED), strict=True):
        expected = image[row * 896:(row + 1) * 896, col * 896:(col + 1) * 896]
        assert np.array_equal(np.asarray(patch), expected)  # lossless tiles: exact pixels
    assert wsi_fixtures.PLANTED_NAME not in json.dumps(facts) + item.description


def test_a_plain_tiff_with_subifd_levels_is_read_beside_page_chain_pyramids(tmp_path: Path) -> None:
    """`vips tiffsave --subifd` / tifffile `subifds=` without OME: OpenSlide sees one level
    (12288x8192 in the issue: "no low-resolution level"); tifffile reads the SubIFD levels,
    and the patches are the pixels a page-chain pyramid of the same slide gives."""
    import tifffile

    image = wsi_fixtures.slide_pixels((4, 3), 896, PLANTED)
    path = wsi_fixtures.write_subifd(tmp_path / "case.tif", image)
    with tifffile.TiffFile(str(path)) as tif:  # the fixture is what the issue describes
        assert len(tif.pages) == 1 and not tif.is_ome and len(tif.series[0].levels) == 3
    item = read_inputs([path]).items[0]
    chain = read_inputs([wsi_fixtures.write_generic(tmp_path / "chain.tif", image)]).items[0]
    facts = item.metadata
    assert facts["vendor"] == "tiff-subifd" and facts["mpp"] == 1.0 and len(facts["levels"]) == 3
    assert facts["mask_level"] == 2
    assert _cells(item) == _cells(chain) == _reading_order(PLANTED)
    for patch, same in zip(item.images, chain.images, strict=True):
        assert np.array_equal(np.asarray(patch), np.asarray(same))
