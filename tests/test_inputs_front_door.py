"""One front door for inputs: a file gives the model the same pixels through every surface.

The two pictures that used to differ between paths: a 16-bit grayscale PNG (stretched to the
full range, not saturated) and a half-transparent RGBA PNG (alpha composited on black).
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from medgem.audit import open_store
from medgem.inputs import Upload, read_inputs
from medgem.inputs.picture import picture_to_rgb
from medgem.request.openai_messages import request_from_openai
from medgem.server.app import create_app
from medgem.server.server_config import ServerConfig
from test_server_helpers import audited, scripted_model, serve_in_thread


def _pictures(folder: Path) -> dict[str, Path]:
    ramp = (np.arange(32 * 48, dtype=np.uint32).reshape(32, 48) * 40 + 1000).astype(np.uint16)
    grey16 = folder / "grey16.png"
    Image.fromarray(ramp).save(grey16)  # mode I;16: values 1000..62400
    rgba = np.zeros((32, 48, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2] = 200, 120, 40
    rgba[..., 3] = np.linspace(0, 255, 48, dtype=np.uint8)[None, :]
    transparent = folder / "rgba.png"
    Image.fromarray(rgba, mode="RGBA").save(transparent)
    return {"grey16": grey16, "rgba": transparent}


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _pictures(tmp_path_factory.mktemp("pictures"))


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def _beside_a_dicom(path: Path) -> Image.Image:
    """The picture asked about together with a DICOM image (the old photo-only shortcut)."""
    from pydicom.data import get_testdata_file

    dicom = Path(str(get_testdata_file("CT_small.dcm")))
    loaded = read_inputs([path, dicom])
    assert len(loaded.images) == 2
    return loaded.images[loaded.sources.index(path.name)]


def _data_url(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def test_the_expected_pixels_are_stretched_and_composited(pictures: dict[str, Path]) -> None:
    grey = _pixels(picture_to_rgb(Image.open(pictures["grey16"])))
    assert grey.min() == 0 and grey.max() == 255  # full range, not 94% white
    rgba = _pixels(picture_to_rgb(Image.open(pictures["rgba"])))
    assert tuple(rgba[0, 0]) == (0, 0, 0) and tuple(rgba[0, -1]) == (200, 120, 40)


def test_every_surface_gives_the_same_pixels(pictures: dict[str, Path]) -> None:
    with serve_in_thread(create_app(ServerConfig(), audited(scripted_model(), open_store(":memory:")))) as base:
        for name, path in pictures.items():
            expected = _pixels(picture_to_rgb(Image.open(path)))
            data_url = _data_url(path)
            seen = {
                "file": read_inputs([path]).images[0],
                "bytes": read_inputs([Upload(path.read_bytes(), "image/png")]).images[0],
                "PIL image": read_inputs([Image.open(path)]).images[0],
                "path with a DICOM beside it": _beside_a_dicom(path),
                "OpenAI data URL": request_from_openai(
                    [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url}},
                                                  {"type": "text", "text": "q"}]}]).images[0].image,
            }
            preview = httpx.post(base + "/api/preview", json={"image": data_url}, timeout=30).json()
            png = base64.b64decode(preview["images"][0]["url"].split(",", 1)[1])
            seen["web page preview"] = Image.open(io.BytesIO(png))
            for surface, image in seen.items():
                got = _pixels(image)
                if got.shape != expected.shape:  # the preview shows the model-size copy
                    got = _pixels(Image.fromarray(expected).resize(image.size, Image.Resampling.BILINEAR))
                    assert np.abs(_pixels(image).astype(int) - got.astype(int)).max() <= 1, (name, surface)
                else:
                    assert np.array_equal(got, expected), (name, surface)


def test_describe_with_previews_and_boxes_reads_the_file_once(
    tiny_vlm_checkpoint: Path, chest_xray_dicom: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`describe --save-preprocessed --boxes`: the path is checked, sniffed and read once (it
    was checked three times and read up to three times: modality, previews, prompt, boxes)."""
    import builtins

    from medgem.cli import main
    from medgem.inputs import readers

    target = str(chest_xray_dicom)
    counts = {"exists": 0, "sniffed": 0, "read": 0, "opened": 0}
    exists, detect, real_open = Path.exists, readers.detect_format, builtins.open

    def counted_exists(path: Path, *args: object, **kwargs: object) -> bool:
        counts["exists"] += str(path) == target
        return exists(path, *args, **kwargs)  # type: ignore[arg-type]

    def counted_detect(path: Path) -> str:
        counts["sniffed"] += str(path) == target
        return detect(path)

    def counted_open(file: object, *args: object, **kwargs: object) -> object:
        counts["opened"] += str(file) == target
        return real_open(file, *args, **kwargs)  # type: ignore[call-overload]

    for name, reader in list(readers.READERS.items()):
        def counted_reader(path: Path, options: object, reader: object = reader) -> object:
            counts["read"] += str(path) == target
            return reader(path, options)  # type: ignore[operator]
        monkeypatch.setitem(readers.READERS, name, counted_reader)
    monkeypatch.setattr(Path, "exists", counted_exists)
    monkeypatch.setattr(readers, "detect_format", counted_detect)
    monkeypatch.setattr(builtins, "open", counted_open)
    monkeypatch.setattr(io, "open", counted_open)
    code = main(["describe", target, "--model", str(tiny_vlm_checkpoint), "--max-new-tokens", "2",
                 "--json", "--no-audit", "--no-server", "--debug",
                 "--save-preprocessed", str(tmp_path / "seen"), "--boxes", str(tmp_path / "boxes.png")])
    # --boxes constrains the answer to the boxes schema; 2 tokens cannot close it: said, exit 1
    said = capsys.readouterr()
    assert code == 1, said
    assert "token budget" in json.loads(said.out)["structured_error"], said.out
    assert len(list((tmp_path / "seen").glob("*.png"))) == 1 and (tmp_path / "boxes.png").is_file()
    # one existence check, one sniff of the first bytes, one read of the whole file
    assert counts == {"exists": 1, "sniffed": 1, "read": 1, "opened": 2}, counts
