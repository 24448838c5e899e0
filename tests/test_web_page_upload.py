"""The web page given a file that is no image (a .jsonl): one clear message naming the file as
the user knows it, the previous answer gone, and the file not sent with the next question.
Saves artifacts/web-page-bad-upload.png."""

from __future__ import annotations

from pathlib import Path

import pytest

from medgem.api import MedGemma
from medgem.audit import open_store
from medgem.server.app import create_app
from medgem.server.server_config import ServerConfig
from test_server_helpers import ScriptedEngine, audited, serve_in_thread
from test_web_page import ARTIFACTS, REPLY, _page, browser, xray_png  # noqa: F401 (fixtures)

pytestmark = pytest.mark.browser


def test_a_non_image_upload_is_named_and_clears_the_last_answer(
        browser: object, xray_png: Path, tmp_path: Path) -> None:  # noqa: F811
    notes = tmp_path / "ward-notes.jsonl"
    notes.write_text('{"question": "Is this pneumonia?"}\n')
    engine = ScriptedEngine(REPLY)
    with serve_in_thread(create_app(ServerConfig(), audited(MedGemma(engine), open_store(":memory:")))) as base:  # type: ignore[arg-type]
        page: object = _page(browser, base)
        p: object = page
        p.set_input_files("#file", str(xray_png))  # type: ignore[attr-defined]
        p.wait_for_selector("#preview-images img")  # type: ignore[attr-defined]
        p.fill("#question", "Describe this chest X-ray.")  # type: ignore[attr-defined]
        p.click("#ask")  # type: ignore[attr-defined]
        p.wait_for_selector("#review:not([hidden])", timeout=60_000)  # type: ignore[attr-defined]
        assert "Seen 1 image(s)" in p.inner_text("#answer")  # type: ignore[attr-defined]

        p.set_input_files("#file", str(notes))  # type: ignore[attr-defined]
        p.wait_for_selector("#error:not([hidden])")  # type: ignore[attr-defined]
        error = p.inner_text("#error")  # type: ignore[attr-defined]
        assert "ward-notes.jsonl" in error and "not an image" in error
        assert "upload" not in error.replace("ward-notes.jsonl", "") and "DICOM file" not in error
        assert p.inner_text("#answer").strip() == ""  # type: ignore[attr-defined]
        assert p.locator("#review").is_hidden() and p.locator("#preview").is_hidden()  # type: ignore[attr-defined]
        assert p.locator("#file-line").is_hidden()  # type: ignore[attr-defined]
        ARTIFACTS.mkdir(exist_ok=True)
        p.screenshot(path=str(ARTIFACTS / "web-page-bad-upload.png"), full_page=True)  # type: ignore[attr-defined]

        # The refused file does not ride along with the next question.
        p.fill("#question", "What is pneumonia?")  # type: ignore[attr-defined]
        p.click("#ask")  # type: ignore[attr-defined]
        p.wait_for_selector("#review:not([hidden])", timeout=60_000)  # type: ignore[attr-defined]
        assert "Seen 0 image(s)" in p.inner_text("#answer")  # type: ignore[attr-defined]
        p.close()  # type: ignore[attr-defined]
