"""The web page in a real browser (Debian's chromium driven by Playwright).

Upload a PNG, ask, watch the answer stream, open the reasoning, record a review, and find the
review in the audit store. Saves artifacts/web-page.png.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from medgem.api import MedGemma
from medgem.audit import AuditStore, open_store
from medgem.request.variants import find_variant
from medgem.server.app import create_app
from medgem.server.server_config import ServerConfig
from test_server_helpers import ScriptedEngine, audited, serve_in_thread

pytestmark = pytest.mark.browser
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
REPLY = ("The cardiomediastinal silhouette is within normal limits. The lungs are clear without focal "
         "consolidation, pleural effusion or pneumothorax. No acute osseous abnormality.")
THOUGHT = "Check the heart size, the lung fields, the costophrenic angles and the bones in turn."


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not shutil.which(CHROMIUM):
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


@pytest.fixture()
def xray_png(tmp_path: Path) -> Path:
    """A chest-radiograph-like greyscale picture."""
    from PIL import Image, ImageDraw, ImageFilter

    image = Image.new("L", (512, 512), 20)
    draw = ImageDraw.Draw(image)
    draw.ellipse((70, 90, 240, 440), fill=70)
    draw.ellipse((272, 90, 442, 440), fill=70)
    draw.ellipse((200, 230, 330, 420), fill=170)
    draw.rectangle((244, 40, 268, 470), fill=200)
    for y in range(120, 420, 34):
        draw.arc((60, y - 40, 452, y + 60), 200, 340, fill=150, width=6)
    image = image.filter(ImageFilter.GaussianBlur(4))
    path = tmp_path / "chest.png"
    image.save(path)
    return path


def _wait_until(condition: Callable[[], bool], timeout: float = 60) -> None:
    """Poll from Python: the page's CSP forbids the eval that wait_for_function needs."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the page did not get there in time")
        time.sleep(0.02)


def _page(browser: object, base: str) -> object:
    page = browser.new_page(viewport={"width": 1360, "height": 1000})  # type: ignore[attr-defined]
    page.goto(base + "/")
    page.wait_for_selector("#model-name:not(:has-text('loading'))")
    return page


def _ask_and_review(page: object, store: AuditStore, png: Path, *, think: bool) -> str:
    p: object = page
    p.set_input_files("#file", str(png))  # type: ignore[attr-defined]
    p.wait_for_selector("#preview-images img")  # type: ignore[attr-defined]
    assert "What the model sees: 1 image" in p.inner_text("#preview-caption")  # type: ignore[attr-defined]
    p.fill("#question", "Describe this chest X-ray.")  # type: ignore[attr-defined]
    if think:
        p.check("#think")  # type: ignore[attr-defined]
    p.click("#ask")  # type: ignore[attr-defined]
    # Streaming: the text grows while the status says so, before the answer is complete.
    _wait_until(lambda: len(p.inner_text("#answer")) > 0)  # type: ignore[attr-defined]
    p.wait_for_selector("#review:not([hidden])", timeout=120_000)  # type: ignore[attr-defined]
    assert p.inner_text("#status") == "done"  # type: ignore[attr-defined]
    record_id = p.inner_text("#meta dd:last-of-type").strip()  # type: ignore[attr-defined]
    assert record_id.startswith("chatcmpl-")
    p.click("button[data-verdict=correct]")  # type: ignore[attr-defined]
    p.fill("#correction", "Normal chest radiograph.")  # type: ignore[attr-defined]
    p.fill("#note", "Reviewed against the original study.")  # type: ignore[attr-defined]
    p.fill("#reviewer", "Dr. A. Reviewer")  # type: ignore[attr-defined]
    p.click("#save-review")  # type: ignore[attr-defined]
    p.wait_for_selector("#review-log li")  # type: ignore[attr-defined]
    reviews = store.children(record_id)
    assert [r.body["verdict"] for r in reviews] == ["correct"]
    assert reviews[0].body["correction"] == "Normal chest radiograph." and reviews[0].body["reviewer"] == "Dr. A. Reviewer"
    return record_id


def test_page_with_the_real_tiny_model(browser: object, tiny_vlm_checkpoint: Path, xray_png: Path) -> None:
    model = MedGemma.load(tiny_vlm_checkpoint, engine="hf", options={"device": "cpu", "progress": False})
    store = open_store(":memory:")
    try:
        with serve_in_thread(create_app(ServerConfig(), audited(model, store))) as base:
            page = _page(browser, base)
            assert "TEST MODEL" in page.inner_text("#demo-label")  # type: ignore[attr-defined]
            page.fill("#max-tokens", "12")  # type: ignore[attr-defined]
            record_id = _ask_and_review(page, store, xray_png, think=False)
            record = store.get(record_id)
            assert record is not None and record.body["model"]["engine"] == "hf"
            assert page.inner_text("#answer").strip() == record.body["output"]  # type: ignore[attr-defined]
            page.close()  # type: ignore[attr-defined]
    finally:
        model.close()


def test_page_streams_shows_reasoning_and_keeps_the_caveat_visible(browser: object, xray_png: Path) -> None:
    store = open_store(":memory:")
    engine = ScriptedEngine(REPLY, thought=THOUGHT, delay=0.08)
    model = MedGemma(engine, variant=find_variant("1.5-4b-it"))  # type: ignore[arg-type]  # a thinking variant
    with serve_in_thread(create_app(ServerConfig(), audited(model, store))) as base:
        page = _page(browser, base)
        caveat = page.locator("#caveat")  # type: ignore[attr-defined]
        assert caveat.is_visible() and "must not directly inform diagnosis" in caveat.inner_text()
        assert page.locator("#demo-label").is_visible()  # type: ignore[attr-defined]
        page.set_input_files("#file", str(xray_png))  # type: ignore[attr-defined]
        page.wait_for_selector("#preview-images img")  # type: ignore[attr-defined]
        page.fill("#question", "Describe this chest X-ray.")  # type: ignore[attr-defined]
        page.check("#think")  # type: ignore[attr-defined]
        page.click("#ask")  # type: ignore[attr-defined]
        _wait_until(lambda: len(page.inner_text("#answer")) > 10)  # type: ignore[attr-defined]
        partial = page.inner_text("#answer")  # type: ignore[attr-defined]
        assert page.inner_text("#status") == "streaming" and len(partial) < len(REPLY)  # type: ignore[attr-defined]
        page.wait_for_selector("#review:not([hidden])", timeout=60_000)  # type: ignore[attr-defined]
        assert page.inner_text("#answer").strip().endswith("No acute osseous abnormality.")  # type: ignore[attr-defined]
        reasoning = page.locator("#reasoning")  # type: ignore[attr-defined]
        assert reasoning.is_visible() and reasoning.get_attribute("open") is None  # collapsed by default
        page.click("#reasoning summary")  # type: ignore[attr-defined]
        assert THOUGHT in page.inner_text("#reasoning-text")  # type: ignore[attr-defined]
        record_id = page.inner_text("#meta dd:last-of-type").strip()  # type: ignore[attr-defined]
        page.click("button[data-verdict=accept]")  # type: ignore[attr-defined]
        page.fill("#reviewer", "Dr. A. Reviewer")  # type: ignore[attr-defined]
        page.click("#save-review")  # type: ignore[attr-defined]
        page.wait_for_selector("#review-log li")  # type: ignore[attr-defined]
        assert store.children(record_id)[0].body["verdict"] == "accept"
        page.mouse.wheel(0, 2000)  # type: ignore[attr-defined]
        assert caveat.is_visible()  # sticky: visible after scrolling too
        page.mouse.wheel(0, -2000)  # type: ignore[attr-defined]
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "web-page.png"), full_page=True)  # type: ignore[attr-defined]
        page.close()  # type: ignore[attr-defined]


def test_page_shows_errors_and_asks_for_a_key(browser: object, tmp_path: Path) -> None:
    from medgem.server.auth import KeyStore

    KeyStore(tmp_path / "keys.json").add("ward")
    config = ServerConfig(api_key_file=tmp_path / "keys.json")
    with serve_in_thread(create_app(config, audited(MedGemma(ScriptedEngine()), open_store(":memory:")))) as base:  # type: ignore[arg-type]
        page = _page(browser, base)
        assert page.locator("#apikey").is_visible()  # type: ignore[attr-defined]
        page.fill("#question", "Hello?")  # type: ignore[attr-defined]
        page.click("#ask")  # type: ignore[attr-defined]
        page.wait_for_selector("#error:not([hidden])")  # type: ignore[attr-defined]
        assert "API key is required" in page.inner_text("#error")  # type: ignore[attr-defined]
        page.close()  # type: ignore[attr-defined]


def test_with_keys_the_page_shows_the_model_only_after_a_key(browser: object, tmp_path: Path) -> None:
    from medgem.server.auth import KeyStore

    key = KeyStore(tmp_path / "keys.json").add("ward")
    config = ServerConfig(api_key_file=tmp_path / "keys.json")
    with serve_in_thread(create_app(config, audited(MedGemma(ScriptedEngine()), open_store(":memory:")))) as base:  # type: ignore[arg-type]
        page = _page(browser, base)
        assert page.inner_text("#model-name") == "enter an API key"  # type: ignore[attr-defined]
        page.fill("#apikey", key)  # type: ignore[attr-defined]
        page.dispatch_event("#apikey", "change")  # type: ignore[attr-defined]
        page.wait_for_selector("#model-name:has-text('medgem-test-scripted')")  # type: ignore[attr-defined]
        page.close()  # type: ignore[attr-defined]


class _Silent(ScriptedEngine):
    """A model that writes no answer text (a base model at a short budget, or a thinking model
    that spends the budget thinking)."""

    def _text(self, request: object) -> str:
        return ""


def test_an_empty_answer_is_said_as_such_and_not_offered_as_the_correction(browser: object) -> None:
    # The answer box stayed blank under "done", as if the page had failed to show the answer.
    store = open_store(":memory:")
    with serve_in_thread(create_app(ServerConfig(), audited(MedGemma(_Silent()), store))) as base:  # type: ignore[arg-type]
        page = _page(browser, base)
        page.fill("#question", "Again?")  # type: ignore[attr-defined]
        page.click("#ask")  # type: ignore[attr-defined]
        page.wait_for_selector("#review:not([hidden])", timeout=60_000)  # type: ignore[attr-defined]
        assert page.inner_text("#status") == "done"  # type: ignore[attr-defined]
        assert "empty answer" in page.inner_text("#answer")  # type: ignore[attr-defined]
        record_id = page.inner_text("#meta dd:last-of-type").strip()  # type: ignore[attr-defined]
        record = store.get(record_id)
        assert record is not None and record.body["output"] == ""
        page.click("button[data-verdict=correct]")  # type: ignore[attr-defined]
        assert page.input_value("#correction") == ""  # type: ignore[attr-defined]
        page.close()  # type: ignore[attr-defined]
