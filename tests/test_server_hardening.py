"""Hostile-but-valid JSON against the real server on 127.0.0.1 (issue: hardening)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from medgem.audit import open_store
from medgem.server.app import create_app
from medgem.server.server_config import ServerConfig
from test_server_helpers import SCRIPTED_ID, audited, scripted_model, serve_in_thread

HI = [{"role": "user", "content": "hi"}]
IMAGE = [{"role": "user", "content": [{"type": "image_url",
                                       "image_url": {"url": "data:image/png;base64,<S>"}}]}]
# JSON text where <S> becomes a lone high surrogate escape (json.dumps would refuse to write one)
BODIES = {
    "messages[0].content": {"model": SCRIPTED_ID, "messages": [{"role": "user", "content": "a<S>b"}]},
    "model": {"model": "x<S>", "messages": HI},
    "stop[0]": {"model": SCRIPTED_ID, "stop": ["<S>"], "messages": HI},
    "messages[0].content[0].image_url.url": {"model": SCRIPTED_ID, "messages": IMAGE},
}


def _raw(body: dict[str, object]) -> bytes:
    return json.dumps(body).replace("<S>", "\\ud800").encode()


@pytest.mark.parametrize("where", list(BODIES))
def test_a_lone_surrogate_is_a_400_that_is_audited(where: str, tmp_path: Path) -> None:
    store = open_store(tmp_path / "audit.sqlite")
    with serve_in_thread(create_app(ServerConfig(), audited(scripted_model(), store))) as base:
        response = httpx.post(base + "/v1/chat/completions", content=_raw(BODIES[where]),
                              headers={"content-type": "application/json"})
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["code"] == "invalid_unicode" and error["param"] == where
        assert "surrogate" in error["message"]
        page = httpx.post(base + "/api/ask", content=b'{"question":"a\\udc00"}',
                          headers={"content-type": "application/json"})
        assert page.status_code == 400 and page.json()["error"]["code"] == "invalid_unicode"
        ok = httpx.post(base + "/v1/chat/completions", json={
            "model": SCRIPTED_ID, "messages": [{"role": "user", "content": "still there?"}]})
        assert ok.status_code == 200  # the server keeps serving
    assert store.count("rejected") == 2 and store.count("answer") == 1
    assert store.verify().ok


def test_logprobs_is_refused_not_silently_null(tmp_path: Path) -> None:
    store = open_store(tmp_path / "audit.sqlite")
    with serve_in_thread(create_app(ServerConfig(), audited(scripted_model(), store))) as base:
        response = httpx.post(base + "/v1/chat/completions", json={
            "model": SCRIPTED_ID, "messages": HI, "logprobs": True})
        assert response.status_code == 400
        assert response.json()["error"]["param"] == "logprobs"
        plain = httpx.post(base + "/v1/chat/completions", json={
            "model": SCRIPTED_ID, "messages": HI, "logprobs": False})
        assert plain.status_code == 200
    assert store.count("rejected") == 1


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "text/plain"])
def test_a_json_body_sent_without_the_json_content_type_is_told_to_send_it(content_type: str, tmp_path: Path) -> None:
    # `curl -d '{...}'` without -H sends a form type: the answer said "the body must be a JSON
    # object — send a JSON object" to a caller who had sent exactly that.
    store = open_store(tmp_path / "audit.sqlite")
    with serve_in_thread(create_app(ServerConfig(), audited(scripted_model(), store))) as base:
        body = json.dumps({"model": SCRIPTED_ID, "messages": HI}).encode()
        for path in ("/v1/chat/completions", "/api/reviews"):
            response = httpx.post(base + path, content=body, headers={"content-type": content_type})
            assert response.status_code == 400, response.text
            error = response.json()["error"]
            assert error["code"] == "invalid_json"
            assert f"'{content_type}'" in error["message"] and "Content-Type: application/json" in error["message"]
        missing = httpx.post(base + "/v1/chat/completions", content=b"", headers={"content-type": "application/json"})
        assert missing.json()["error"]["message"] == "the body must be a JSON object — send a JSON object"
        ok = httpx.post(base + "/v1/chat/completions", json={"model": SCRIPTED_ID, "messages": HI})
        assert ok.status_code == 200
    assert store.count("rejected") == 2 and store.count("answer") == 1
