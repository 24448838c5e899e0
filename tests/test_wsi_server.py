"""Slides and PDFs through the server (uploads, and paths on an allowed folder): the real readers
behind it, audit and previews kept clean.

The engine is the scripted one (it reports how many images reached it): this tests the server's
handling of slide uploads, not the model.
"""

from __future__ import annotations

import base64
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from medgem.audit import AuditStore, open_store
from medgem.errors import ImageInputError
from medgem.server.app import create_app
from medgem.server.server_config import ServerConfig
from test_server_helpers import audited, png_data_url, scripted_model, serve_in_thread

pytest.importorskip("openslide")
pytest.importorskip("pypdfium2")
wsi_fixtures = pytest.importorskip("wsi_fixtures")


#: 5 x 4 cells of 224 px at 4 um/px, all tissue: 20 patches, more than the server's 16 images.
GRID = (5, 4)


@pytest.fixture(scope="module")
def allowed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("allowed")
    cells = [(c, r) for r in range(GRID[1]) for c in range(GRID[0])]
    wsi_fixtures.write_aperio(folder / "case.svs", wsi_fixtures.slide_pixels(GRID, 224, cells),
                              mpp=4.0, factors=(1, 4), compression="zlib")
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory,
           allowed: Path) -> Iterator[tuple[str, AuditStore, Path]]:
    db = tmp_path_factory.mktemp("audit") / "audit.sqlite"
    store = open_store(db)
    config = ServerConfig(log_prompts=True, allowed_dirs=(allowed,))  # riskiest: inputs are kept
    with serve_in_thread(create_app(config, audited(scripted_model(context_length=8192), store))) as base:
        yield base, store, db


def _dump(db: Path) -> str:
    return "\n".join(sqlite3.connect(db).iterdump()).lower()


def _data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def _ask(base: str, **body: object) -> str:
    text = []
    with httpx.stream("POST", base + "/api/ask", json=body, timeout=120) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[6:])
                text += [c["delta"].get("content") or "" for c in chunk["choices"]]
    return "".join(text)


def test_uploaded_slide_becomes_its_patches_and_no_label_is_stored(
    server: tuple[str, AuditStore, Path], tmp_path: Path
) -> None:
    base, _store, db = server
    image = wsi_fixtures.slide_pixels((4, 3), 224, [(0, 0), (1, 1), (3, 2)])
    slide = wsi_fixtures.write_aperio(tmp_path / "case.svs", image, mpp=4.0, factors=(1, 4))
    answer = _ask(base, question="Describe the tissue", image=_data_url(slide.read_bytes(), "image/tiff"))
    assert answer.startswith("Seen 3 image(s).")  # one per tissue patch
    dump = _dump(db)
    assert wsi_fixtures.PLANTED_NAME.lower() not in dump
    assert wsi_fixtures.PLANTED_NAME.encode().hex() not in dump  # not even inside a stored blob


def test_uploaded_dicom_wsi_zip_becomes_its_patches_and_no_label_is_stored(
    server: tuple[str, AuditStore, Path], tmp_path: Path
) -> None:
    import io
    import zipfile

    pytest.importorskip("wsidicom")
    base, _store, db = server
    image = wsi_fixtures.slide_pixels((4, 3), 224, [(0, 0), (1, 1), (3, 2)])
    folder = wsi_fixtures.write_dicom_wsi(tmp_path / "slide", image)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for file in sorted(folder.iterdir()):
            archive.write(file, file.name)
    answer = _ask(base, question="Describe the tissue", image=_data_url(buffer.getvalue(), "application/zip"))
    assert answer.startswith("Seen 3 image(s).")
    dump = _dump(db)
    assert wsi_fixtures.PLANTED_NAME.lower() not in dump
    assert wsi_fixtures.PLANTED_NAME.encode().hex() not in dump


def test_uploaded_pdf_pages_reach_the_model_and_its_metadata_does_not_reach_the_store(
    server: tuple[str, AuditStore, Path], tmp_path: Path
) -> None:
    base, _store, db = server
    pdf = wsi_fixtures.write_pdf(tmp_path / "labs.pdf", ["Sodium 140 mmol/L", "Potassium 4.1"])
    answer = _ask(base, question="List the lab values", image=_data_url(pdf.read_bytes(), "application/pdf"))
    assert answer.startswith("Seen 2 image(s).")
    dump = _dump(db)
    assert wsi_fixtures.PLANTED_NAME.lower() not in dump
    assert wsi_fixtures.PLANTED_NAME.encode().hex() not in dump


def _chat(base: str, path: Path) -> httpx.Response:
    """A chat completion naming a file on the server's disk."""
    model = httpx.get(base + "/v1/models").json()["data"][0]["id"]
    return httpx.post(base + "/v1/chat/completions", timeout=120, json={"model": model, "messages": [
        {"role": "user", "content": [{"type": "text", "text": "colon, biopsy: describe"},
                                     {"type": "image_url", "image_url": {"url": str(path)}}]}]})


def test_slide_on_an_allowed_folder_is_read_by_path_and_counts_as_one_image(
    server: tuple[str, AuditStore, Path], allowed: Path, tmp_path: Path
) -> None:
    base, _store, db = server
    response = _chat(base, allowed / "case.svs")
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"].startswith("Seen 20 image(s).")
    assert wsi_fixtures.PLANTED_NAME.lower() not in _dump(db)
    outside = wsi_fixtures.write_aperio(tmp_path / "elsewhere.svs",
                                        wsi_fixtures.slide_pixels((2, 1), 224, [(0, 0)]), mpp=4.0)
    refused = _chat(base, outside)
    assert refused.status_code == 400 and "not allowed" in refused.text


def test_a_slide_in_chat_messages_gets_the_pathology_layout(allowed: Path) -> None:
    from medgem.request import ImagePart, TextPart
    from medgem.request.compose import PATHOLOGY_INSTRUCTION
    from medgem.request.openai_messages import request_from_openai

    def ask(*extra: dict[str, object], system: str | None = None) -> object:
        head = [{"role": "system", "content": system}] if system else []
        return request_from_openai([*head, {"role": "user", "content": [
            {"type": "text", "text": "colon, biopsy:"}, *extra,
            {"type": "image_url", "image_url": {"url": str(allowed / "case.svs")}}]}],
            allowed_dirs=[allowed])

    request = ask()
    (user,) = request.messages  # type: ignore[attr-defined]
    assert user.parts[0] == TextPart(f"{PATHOLOGY_INSTRUCTION}\n\ncolon, biopsy:")
    assert [p.source for p in user.parts[1:] if isinstance(p, ImagePart)] == [f"patch {n}" for n in range(1, 21)]
    framed = ask(system="You are a pathologist.")
    assert framed.messages[0].parts[0] == TextPart("You are a pathologist.\n\ncolon, biopsy:")  # type: ignore[attr-defined]
    with pytest.raises(ImageInputError, match="only image"):
        ask({"type": "image_url", "image_url": {"url": png_data_url()}})


def test_slide_upload_preview_shows_patches_never_the_label(
    server: tuple[str, AuditStore, Path], tmp_path: Path
) -> None:
    import io

    import numpy as np
    from PIL import Image

    base = server[0]
    image = wsi_fixtures.slide_pixels((4, 3), 224, [(0, 0), (1, 1), (3, 2)])
    slide = wsi_fixtures.write_aperio(tmp_path / "case.svs", image, mpp=4.0, factors=(1, 4))
    response = httpx.post(base + "/api/preview", timeout=120,
                          json={"image": _data_url(slide.read_bytes(), "image/tiff")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["count"] == 3 and wsi_fixtures.PLANTED_NAME not in response.text
    for shown in body["images"]:
        pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(shown["url"].split(",", 1)[1]))).convert("RGB"))
        assert not np.all(pixels == wsi_fixtures.LABEL_RGB, axis=-1).any()
