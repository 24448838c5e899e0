"""Slides and PDFs uploaded to the web page: the real readers behind the server, audit kept clean.

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
from medgem.server.app import create_app
from medgem.server.config import ServerConfig
from test_server_helpers import scripted_model, serve_in_thread

pytest.importorskip("openslide")
pytest.importorskip("pypdfium2")
wsi_fixtures = pytest.importorskip("wsi_fixtures")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, AuditStore, Path]]:
    db = tmp_path_factory.mktemp("audit") / "audit.sqlite"
    store = open_store(db)
    config = ServerConfig(log_prompts=True)  # the riskiest setting: inputs are kept
    with serve_in_thread(create_app(config, scripted_model(), store=store)) as base:
        yield base, store, db


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
    dump = "\n".join(sqlite3.connect(db).iterdump()).lower()
    assert wsi_fixtures.PLANTED_NAME.lower() not in dump
    assert wsi_fixtures.PLANTED_NAME.encode().hex() not in dump  # not even inside a stored blob


def test_uploaded_pdf_pages_reach_the_model_and_its_metadata_does_not_reach_the_store(
    server: tuple[str, AuditStore, Path], tmp_path: Path
) -> None:
    base, _store, db = server
    pdf = wsi_fixtures.write_pdf(tmp_path / "labs.pdf", ["Sodium 140 mmol/L", "Potassium 4.1"])
    answer = _ask(base, question="List the lab values", image=_data_url(pdf.read_bytes(), "application/pdf"))
    assert answer.startswith("Seen 2 image(s).")
    dump = "\n".join(sqlite3.connect(db).iterdump()).lower()
    assert wsi_fixtures.PLANTED_NAME.lower() not in dump
    assert wsi_fixtures.PLANTED_NAME.encode().hex() not in dump
