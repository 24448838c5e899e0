"""The web page's endpoints: info, preview (photo, DICOM, zipped series), ask, review, records."""

from __future__ import annotations

import base64
import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from medgem.audit import AuditStore, open_store
from medgem.server.app import create_app
from medgem.server.server_config import ServerConfig
from test_server_helpers import SCRIPTED_ID, audited, png_data_url, scripted_model, serve_in_thread


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, AuditStore]]:
    store = open_store(tmp_path_factory.mktemp("audit") / "audit.sqlite")
    with serve_in_thread(create_app(ServerConfig(), audited(scripted_model(), store))) as base:
        yield base, store


def _ask(base: str, **body: object) -> tuple[list[dict[str, object]], str]:
    chunks = []
    with httpx.stream("POST", base + "/api/ask", json=body, timeout=60) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(json.loads(line[6:]))
    return chunks, str(chunks[0]["id"])


def _content(chunks: list[dict[str, object]], key: str = "content") -> str:
    return "".join(c["choices"][0]["delta"].get(key) or "" for c in chunks if c["choices"])  # type: ignore[index]


def _ct_dicom() -> bytes:
    from pydicom.data import get_testdata_file

    return Path(str(get_testdata_file("CT_small.dcm"))).read_bytes()


def test_index_page_is_served_with_a_strict_policy(server: tuple[str, AuditStore]) -> None:
    response = httpx.get(server[0] + "/")
    assert response.status_code == 200 and "Intended use" in response.text
    assert "default-src 'self'" in response.headers["content-security-policy"]
    for asset in ("/static/app.js", "/static/app.css"):
        assert httpx.get(server[0] + asset).status_code == 200
    assert "http" not in response.text.split("<body>")[0].replace("http-equiv", "")  # no CDN


def test_info_names_model_label_and_caveat(server: tuple[str, AuditStore]) -> None:
    info = httpx.get(server[0] + "/api/info").json()
    assert info["model"] == SCRIPTED_ID and info["label"].startswith("TEST MODEL")
    assert "must not directly inform diagnosis" in info["caveat"] and info["auth_required"] is False


def test_preview_of_a_photo_and_a_dicom(server: tuple[str, AuditStore]) -> None:
    photo = httpx.post(server[0] + "/api/preview", json={"image": png_data_url((1000, 500))}).json()
    assert photo["count"] == 1 and photo["volume"] is None
    assert photo["images"][0]["url"].startswith("data:image/png;base64,")
    dicom = "data:application/dicom;base64," + base64.b64encode(_ct_dicom()).decode()
    shown = httpx.post(server[0] + "/api/preview", json={"image": dicom}).json()
    assert shown["count"] == 1 and shown["modalities"] == ["CT"]


def test_preview_of_a_zipped_series(server: tuple[str, AuditStore]) -> None:
    pydicom = pytest.importorskip("pydicom")
    source = pydicom.dcmread(io.BytesIO(_ct_dicom()))
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        for number in range(1, 9):
            source.InstanceNumber = number
            source.SOPInstanceUID = f"{source.SOPInstanceUID.rsplit('.', 1)[0]}.{number}"
            source.ImagePositionPatient = [0.0, 0.0, float(number)]
            buffer = io.BytesIO()
            source.save_as(buffer)
            zf.writestr(f"slice{number}.dcm", buffer.getvalue())
    url = "data:application/zip;base64," + base64.b64encode(archive.getvalue()).decode()
    shown = httpx.post(server[0] + "/api/preview", json={"image": url}).json()
    assert shown["volume"] == "CT" and shown["count"] == 8 and len(shown["images"]) == 6


def test_preview_refuses_what_is_not_an_image(server: tuple[str, AuditStore]) -> None:
    response = httpx.post(server[0] + "/api/preview", json={"image": "data:text/plain;base64,aGVsbG8="})
    assert response.status_code == 400 and "not supported" in response.json()["error"]["message"]


def test_ask_streams_then_review_lands_in_the_audit_store(server: tuple[str, AuditStore]) -> None:
    base, store = server
    chunks, record_id = _ask(base, question="Describe this X-ray", image=png_data_url(), think=True)
    content = _content(chunks)
    reasoning = _content(chunks, "reasoning_content")
    assert content.startswith("Seen 1 image(s).") and reasoning
    final = next(c for c in chunks if c.get("medgem"))
    assert final["medgem"]["audit_id"] == record_id and final["medgem"]["label"]  # type: ignore[index]
    assert any(c.get("usage") for c in chunks)
    review = httpx.post(base + "/api/reviews", json={"record_id": record_id, "verdict": "correct",
                                                     "correction": "Normal study.", "reviewer": "Dr Lee", "note": "ok"})
    assert review.status_code == 201
    record = httpx.get(f"{base}/api/records/{record_id}").json()
    assert record["kind"] == "answer" and record["body"]["endpoint"] == "/api/ask"
    assert record["reviews"][0]["body"] | {} == {"verdict": "correct", "correction": "Normal study.",
                                                 "note": "ok", "reviewer": "Dr Lee", "user": "local"}
    assert store.verify().ok


def test_ask_about_a_dicom_without_an_image_and_bad_reviews(server: tuple[str, AuditStore]) -> None:
    base = server[0]
    dicom = "data:application/dicom;base64," + base64.b64encode(_ct_dicom()).decode()
    chunks, _ = _ask(base, question="Any bleed?", image=dicom)
    assert _content(chunks).startswith("Seen 1 image(s)")
    chunks, text_id = _ask(base, question="What is a normal heart rate?")
    assert next(c for c in chunks if c.get("medgem"))["medgem"]["audit_id"] == text_id  # type: ignore[index]
    missing = httpx.post(base + "/api/reviews", json={"record_id": "nope", "verdict": "accept"})
    assert missing.status_code == 404
    no_text = httpx.post(base + "/api/reviews", json={"record_id": text_id, "verdict": "correct"})
    assert no_text.status_code == 400 and "corrected text" in no_text.json()["error"]["message"]
    verdict = httpx.post(base + "/api/reviews", json={"record_id": text_id, "verdict": "maybe"})
    assert verdict.status_code == 400 and verdict.json()["error"]["param"] == "verdict"
    assert httpx.post(base + "/api/ask", json={"question": ""}).status_code == 400
    # the page's own fields, not the CLI's or the chat route's, are named
    blank = httpx.post(base + "/api/ask", json={"question": "   "})
    assert blank.status_code == 400 and "medgem ask" not in blank.json()["error"]["message"]
    assert "the question is empty" in blank.json()["error"]["message"]
    not_url = httpx.post(base + "/api/ask", json={"question": "Any bleed?", "image": "xray.png"})
    assert not_url.status_code == 400 and not_url.json()["error"]["message"].startswith("image must be a data URL")
    assert not_url.json()["error"]["param"] == "image"
    assert httpx.get(base + "/api/records/nope").status_code == 404
    assert httpx.get(base + "/no/such/route").json()["error"]["code"] == "not_found"


def test_ask_takes_stop_strings(server: tuple[str, AuditStore]) -> None:
    """/api/ask builds the same options object as the OpenAI endpoint, stop strings included."""
    chunks, _ = _ask(server[0], question="Anything?", stop=["abnormality"])
    content = _content(chunks)
    assert content.startswith("Seen 0 image(s). No acute") and "abnormality" not in content
    reasons = [c["choices"][0].get("finish_reason") for c in chunks if c["choices"]]  # type: ignore[index]
    assert "stop" in reasons
    empty = httpx.post(server[0] + "/api/ask", json={"question": "q", "stop": [""]})
    assert empty.status_code == 400 and "stop" in empty.json()["error"]["message"]
