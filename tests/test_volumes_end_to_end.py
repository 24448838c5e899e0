"""CT series and longitudinal studies through the whole path: files -> prompt -> real engine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from imaging_fixtures import write_ct_series
from medgem import MedGemma
from medgem.request import ImagePart, TextPart


@pytest.fixture(scope="module")
def ct_series(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ct") / "series"
    volume = np.zeros((100, 16, 16), dtype=np.int16)
    volume[:, 4:12, 4:12] = 1000  # bone in the middle of every slice
    write_ct_series(folder, volume)
    return folder


def test_ct_series_becomes_85_slices_with_the_volume_prompt_layout(
    tiny_vlm_checkpoint: Path, ct_series: Path
) -> None:
    model = MedGemma.load(tiny_vlm_checkpoint, options={"progress": False})
    request = model.request("Is there a fracture?", images=[str(ct_series)])
    (user,) = request.messages  # no system turn for volumes
    assert len(request.images) == 85
    texts = [p.text for p in user.parts if isinstance(p, TextPart)]
    assert texts[-1] == "Is there a fracture?"  # question last
    assert texts[1] == "SLICE 1" and texts[85] == "SLICE 85"
    assert isinstance(user.parts[1], ImagePart) and user.parts[2] == TextPart("SLICE 1")
    assert request.options.max_new_tokens == 2000
    # windowed RGB: bone (1000 HU) is near-white in all three windows
    pixel = request.images[0].image.getpixel((8, 8))
    assert pixel == (252, 255, 255)
    answer = model.ask("Is there a fracture?", images=[str(ct_series)], max_new_tokens=3)
    assert answer.usage.prompt_tokens > 85 * 4  # every slice's soft tokens reached the model


def test_cli_ask_about_a_series_folder_saves_each_slice(
    tiny_vlm_checkpoint: Path, ct_series: Path, tmp_path: Path
) -> None:
    out = tmp_path / "seen"
    result = run_cli("ask", "Any hemorrhage?", "--image", str(ct_series), "--model",
                     str(tiny_vlm_checkpoint), "--max-new-tokens", "2", "--json",
                     "--save-preprocessed", str(out))
    assert result.returncode == 0, result.stderr
    assert len(list(out.glob("*.png"))) == 85
    assert json.loads(result.stdout)["usage"]["completion_tokens"] == 2


def test_a_volume_mixed_with_other_images_is_refused(
    tiny_vlm_checkpoint: Path, ct_series: Path, tmp_path: Path
) -> None:
    from PIL import Image

    photo = tmp_path / "photo.png"
    Image.new("RGB", (20, 20)).save(photo)
    result = run_cli("ask", "Compare", "--image", str(ct_series), "--image", str(photo),
                     "--model", str(tiny_vlm_checkpoint))
    assert result.returncode == 1
    assert "cannot be combined" in result.stderr
