"""Slides through the whole path: pyramidal TIFF -> patches -> pathology prompt -> real engines."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from medgem import MedGemma
from medgem.errors import ContextLengthError
from medgem.inputs import ImagingOptions, read_inputs
from medgem.request import ImagePart, Request, TextPart
from medgem.request.compose import PATHOLOGY_INSTRUCTION

pytest.importorskip("openslide")
pytest.importorskip("transformers")
wsi_fixtures = pytest.importorskip("wsi_fixtures")

QUESTION = "colon, biopsy: describe the findings"
#: 5 x 4 cells of 224 px at 4 um/px: every cell is one 896-px patch at 10x; 20 all told.
GRID = (5, 4)


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cells = [(c, r) for r in range(GRID[1]) for c in range(GRID[0])]
    image = wsi_fixtures.slide_pixels(GRID, 224, cells)
    for number, (col, row) in enumerate(cells):  # a distinct shade per cell: order is visible
        image[row * 224:(row + 1) * 224, col * 224:(col + 1) * 224, 1] = 40 + 4 * number
    return wsi_fixtures.write_aperio(tmp_path_factory.mktemp("e2e") / "slide.svs", image, mpp=4.0,
                                     factors=(1, 4), compression="zlib")


@pytest.fixture(scope="module")
def short_context_vlm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny VLM with a 160-token context: a 20-patch slide cannot fit."""
    from medgem.demo.build import TINY, build_checkpoint

    shape = TINY.__class__(**{**TINY.__dict__, "context": 160})
    return build_checkpoint(tmp_path_factory.mktemp("short") / "vlm", shape=shape,
                            model_id="medgem-test-short")


def test_prompt_is_instruction_then_one_image_per_patch_in_reading_order(
    tiny_vlm_checkpoint: Path, slide: Path
) -> None:
    model = MedGemma.load(tiny_vlm_checkpoint, options={"progress": False})
    request = model.request(QUESTION, images=[str(slide)], max_patches=6, patch_seed=2)
    (user,) = request.messages  # no system turn, as in the pathology notebook
    assert user.parts[0] == TextPart(f"{PATHOLOGY_INSTRUCTION}\n\n{QUESTION}")
    assert all(isinstance(p, ImagePart) for p in user.parts[1:]) and len(user.parts) == 7
    expected = read_inputs([slide], ImagingOptions(max_patches=6, patch_seed=2)).items[0]
    for part, patch, number in zip(user.parts[1:], expected.images, range(1, 7), strict=True):
        assert isinstance(part, ImagePart) and part.source == f"patch {number}"
        assert np.array_equal(np.asarray(part.image), np.asarray(patch))
    greens = [int(np.asarray(p.image)[448, 448, 1]) for p in request.images]
    assert greens == sorted(greens)  # shades grow in reading order, so the order survived
    # the engine's own tokens: one image block per patch, after the text
    engine = model.engine
    ids = engine.encode(request)["input_ids"][0].tolist()
    boi = engine.processor.tokenizer.convert_tokens_to_ids("<start_of_image>")
    positions = [i for i, t in enumerate(ids) if t == boi]
    assert len(positions) == 6
    instruction_ids = engine.processor.tokenizer(PATHOLOGY_INSTRUCTION, add_special_tokens=False)["input_ids"]
    assert ids.index(instruction_ids[0]) < positions[0]
    answer = model.ask(QUESTION, images=[str(slide)], max_patches=6, patch_seed=2, max_new_tokens=2)
    assert answer.usage.completion_tokens == 2


def _check(model: MedGemma, request: Request) -> None:
    prepared = model.engine.prepare(request)
    try:
        model.check_context(prepared.prompt_tokens, request)
    finally:
        prepared.release()


def test_context_check_says_how_many_patches_fit(short_context_vlm: Path, slide: Path) -> None:
    model = MedGemma.load(short_context_vlm, options={"progress": False})
    request = model.request(QUESTION, images=[str(slide)])
    assert len(request.images) == 20
    with pytest.raises(ContextLengthError, match=r"(\d+) of 20 patches fit") as caught:
        _check(model, request)
    fit = int(str(caught.value).split(" of 20 patches fit")[0].rsplit(" ", 1)[-1])
    assert 0 < fit < 20 and f"--max-patches {fit}" in str(caught.value)
    _check(model, model.request(QUESTION, images=[str(slide)], max_patches=fit))
    with pytest.raises(ContextLengthError):
        _check(model, model.request(QUESTION, images=[str(slide)], max_patches=fit + 1))


def test_cli_ask_about_a_slide_with_patch_flags(tiny_vlm_checkpoint: Path, slide: Path,
                                                tmp_path: Path) -> None:
    import sqlite3

    out, db = tmp_path / "seen", tmp_path / "audit.sqlite"
    result = run_cli("ask", QUESTION, "--image", str(slide), "--model", str(tiny_vlm_checkpoint),
                     "--max-new-tokens", "2", "--json", "--max-patches", "5", "--seed", "4",
                     "--save-preprocessed", str(out), "--audit-db", str(db))
    assert result.returncode == 0, result.stderr
    # the patches sent, named as `medgem inspect` names them, and the overview (tissue and grid)
    assert len(list(out.glob("01_slide_patch_*.png"))) == 5 and (out / "01_slide_overview.png").is_file()
    assert json.loads(result.stdout)["usage"]["completion_tokens"] == 2
    # the label's planted name: not printed, not in the audit record (the file carries it)
    assert wsi_fixtures.PLANTED_NAME.encode() in slide.read_bytes()
    dump = "\n".join(sqlite3.connect(db).iterdump())
    from medgem.audit import open_store

    assert open_store(db).count("answer") == 1
    for text in (result.stdout, result.stderr, dump):
        assert wsi_fixtures.PLANTED_NAME not in text
        assert wsi_fixtures.PLANTED_NAME.encode().hex() not in text


def test_cli_describe_a_slide_sends_the_chosen_patches(tiny_vlm_checkpoint: Path, slide: Path,
                                                        tmp_path: Path) -> None:
    out = tmp_path / "seen"
    result = run_cli("describe", str(slide), "--model", str(tiny_vlm_checkpoint), "--json",
                     "--max-new-tokens", "1", "--max-patches", "3", "--save-preprocessed", str(out))
    assert result.returncode == 0, result.stderr
    assert len(list(out.glob("01_slide_patch_*.png"))) == 3 and (out / "01_slide_overview.png").is_file()
    assert json.loads(result.stdout)["usage"]["prompt_tokens"] > 3 * 4  # three patches' soft tokens


@pytest.fixture(scope="module")
def vlm_gguf(tiny_vlm_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny VLM through `medgem convert --quant f16`, as a user runs it."""
    out = tmp_path_factory.mktemp("gguf")
    converted = run_cli("convert", str(tiny_vlm_checkpoint), "--quant", "f16", "--out", str(out))
    assert converted.returncode == 0, converted.stderr
    return out / "model.gguf"


def test_llamacpp_prompt_carries_every_patch(vlm_gguf: Path, slide: Path, llamacpp_runs: None) -> None:
    model = MedGemma.load(vlm_gguf, engine="llamacpp", options={"progress": False})
    try:
        request = model.request(QUESTION, images=[str(slide)], max_patches=6, patch_seed=2)
        list(model.generate(request))
        tokens = model.engine.last_prompt_tokens  # type: ignore[attr-defined]
        runs = sum(1 for i, t in enumerate(tokens) if t == -1 and (i == 0 or tokens[i - 1] != -1))
        assert runs == 6  # one block of image embeddings per patch
    finally:
        model.close()


def test_llamacpp_context_check_says_how_many_patches_fit(vlm_gguf: Path, slide: Path,
                                                           llamacpp_runs: None) -> None:
    model = MedGemma.load(vlm_gguf, engine="llamacpp", options={"n_ctx": 160, "progress": False})
    try:
        request = model.request(QUESTION, images=[str(slide)])
        with pytest.raises(ContextLengthError, match=r"(\d+) of 20 patches fit") as caught:
            _check(model, request)
        fit = int(str(caught.value).split(" of 20 patches fit")[0].rsplit(" ", 1)[-1])
        assert 0 < fit < 20
        _check(model, model.request(QUESTION, images=[str(slide)], max_patches=fit))
    finally:
        model.close()
