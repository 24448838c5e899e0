"""Who may read what, over real HTTP: a key sees its own audit records unless it is an auditor,
a review is filed under the key that sent it, the model's details need a key, and a broken key
file does not reveal where it lives."""

from __future__ import annotations

from pathlib import Path

import httpx

from medgem.audit import open_store
from medgem.server.app import create_app
from medgem.server.auth import KeyStore
from medgem.server.server_config import ServerConfig
from test_server_helpers import SCRIPTED_ID, audited, scripted_model, serve_in_thread

BODY = {"model": SCRIPTED_ID, "messages": [{"role": "user", "content": "Any effusion?"}]}


def _as(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_keys_see_their_own_records_and_auditors_see_all(tmp_path: Path) -> None:
    keys = KeyStore(tmp_path / "keys.json")
    alice, bob, carol = keys.add("alice"), keys.add("bob"), keys.add("carol", "auditor")
    store = open_store(tmp_path / "audit.sqlite")
    config = ServerConfig(api_key_file=tmp_path / "keys.json")
    with serve_in_thread(create_app(config, audited(scripted_model(), store))) as base:
        record_id = httpx.post(base + "/v1/chat/completions", json=BODY, headers=_as(alice)).json()["id"]
        url = f"{base}/api/records/{record_id}"
        assert httpx.get(url, headers=_as(alice)).status_code == 200
        assert httpx.get(url, headers=_as(carol)).status_code == 200
        foreign = httpx.get(url, headers=_as(bob))
        assert foreign.status_code == 404 and "Any effusion" not in foreign.text

        review = {"record_id": record_id, "verdict": "accept", "reviewer": "bob"}
        assert httpx.post(base + "/api/reviews", json=review, headers=_as(bob)).status_code == 404
        filed = httpx.post(base + "/api/reviews", json=review, headers=_as(alice))
        assert filed.status_code == 201 and filed.json()["body"]["reviewer"] == "alice"

        assert httpx.get(base + "/api/info").json() == {"auth_required": True}
        info = httpx.get(base + "/api/info", headers=_as(bob)).json()
        assert info["model"] == SCRIPTED_ID and info["auth_required"] is True


def test_a_broken_key_file_is_a_503_without_its_path(tmp_path: Path) -> None:
    key_file = tmp_path / "secret-place" / "keys.json"
    keys = KeyStore(key_file)
    alice = keys.add("alice")
    config = ServerConfig(api_key_file=key_file)
    with serve_in_thread(create_app(config, audited(scripted_model(), open_store(":memory:")))) as base:
        key_file.write_text("{ not json")
        response = httpx.post(base + "/v1/chat/completions", json=BODY, headers=_as(alice))
        assert response.status_code == 503 and response.json()["error"]["code"] == "auth_unavailable"
        assert "secret-place" not in response.text and str(tmp_path) not in response.text
