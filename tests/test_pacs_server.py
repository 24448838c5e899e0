"""The server takes studies by reference (``image_dicom`` parts, Google's container's shape) only
from the PACS the operator allowed: over real HTTP, against the real Orthanc; anything else is a
403 with nothing fetched."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import httpx
import pytest

from medgem.audit import open_store
from medgem.inputs.pacs import uid_hash
from medgem.server.app import create_app
from medgem.server.server_config import ServerConfig
from pacs_fixtures import Orthanc
from test_server_helpers import SCRIPTED_ID, audited, scripted_model, serve_in_thread


def _body(sources: str | list[str], question: str = "Pneumothorax?", token: str | None = None) -> dict[str, object]:
    part: dict[str, object] = {"dicom_source": sources}
    if token:
        part["access_credential"] = token
    return {"model": SCRIPTED_ID, "messages": [{"role": "user", "content": [
        {"type": "image_dicom", "image_dicom": part}, {"type": "text", "text": question}]}]}


class _Counter(BaseHTTPRequestHandler):
    hits: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.hits.append(self.path)
        self.send_response(500)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture(scope="module")
def bystander() -> Iterator[str]:
    """A loopback HTTP server that counts every request: a PACS no one allowed."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Counter)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_image_dicom_from_an_allowed_pacs_reaches_the_model(orthanc: Orthanc, tmp_path: Path) -> None:
    uids = orthanc.uids
    instance = f"{orthanc.dicomweb}/studies/{uids['cr_study']}/series/{uids['cr_series']}/instances/{uids['cr_instance']}"
    series = f"{orthanc.dicomweb}/studies/{uids['study']}/series/{uids['mr_series']}"
    config = ServerConfig(allowed_pacs=(orthanc.dicomweb,))
    store = open_store(tmp_path / "audit.sqlite")
    with serve_in_thread(create_app(config, audited(scripted_model(), store))) as base:
        one = httpx.post(base + "/v1/chat/completions", json=_body(instance), timeout=120)
        assert one.status_code == 200, one.text
        assert "Seen 1 image(s)" in one.json()["choices"][0]["message"]["content"]
        listed = httpx.post(base + "/v1/chat/completions", json=_body([instance, instance]), timeout=120)
        assert "Seen 2 image(s)" in listed.json()["choices"][0]["message"]["content"]
        volume = httpx.post(base + "/v1/chat/completions", json=_body(series, "Any lesion?"), timeout=120)
        assert volume.status_code == 200, volume.text
        assert "Seen 6 image(s)" in volume.json()["choices"][0]["message"]["content"]  # the MR slices
        unknown = httpx.post(base + "/v1/chat/completions",
                             json=_body(f"{orthanc.dicomweb}/studies/1.2.3.4"), timeout=60)
        assert unknown.status_code == 400 and "is not on" in unknown.json()["error"]["message"]
        assert httpx.get(base + "/healthz").status_code == 200  # still serving
    fetches = list(store.records(kind="pacs_fetch"))
    assert len(fetches) == 4  # one + two listed + the MR series, each an event
    assert {f.body["study"] for f in fetches} == {uid_hash(uids["cr_study"]), uid_hash(uids["study"])}
    assert all(f.body["endpoint"] == "/v1/chat/completions" for f in fetches)


def test_image_dicom_outside_the_allowlist_is_403_and_nothing_is_fetched(
        orthanc: Orthanc, bystander: str, tmp_path: Path) -> None:
    store = open_store(tmp_path / "audit.sqlite")
    allowed = ServerConfig(allowed_pacs=(f"{bystander}/dicom-web",))
    with serve_in_thread(create_app(allowed, audited(scripted_model(), store))) as base:
        for uri in [f"{orthanc.dicomweb}/studies/{orthanc.uids['study']}",  # a real PACS, not allowed
                    f"{bystander}/dicom-web-evil/studies/1.2.3",  # a lookalike root
                    orthanc.dimse(orthanc.uids["study"])]:
            refused = httpx.post(base + "/v1/chat/completions", json=_body(uri), timeout=30)
            assert refused.status_code == 403, refused.text
            assert refused.json()["error"]["code"] == "pacs_not_allowed"
            assert "--allow-pacs" in refused.json()["error"]["message"]
        # one allowed part does not open the door to a second, forbidden one: checked first
        mixed = _body([f"{bystander}/dicom-web/studies/1.2.3", f"{orthanc.dicomweb}/studies/1.2.3"])
        assert httpx.post(base + "/v1/chat/completions", json=mixed, timeout=30).status_code == 403
    assert _Counter.hits == []  # nothing was fetched from anywhere
    with serve_in_thread(create_app(ServerConfig(), audited(scripted_model(), store))) as base:
        default = httpx.post(base + "/v1/chat/completions",
                             json=_body(f"{orthanc.dicomweb}/studies/{orthanc.uids['study']}"), timeout=30)
        assert default.status_code == 403  # no --allow-pacs: no PACS at all
        malformed = httpx.post(base + "/v1/chat/completions", json={
            "model": SCRIPTED_ID, "messages": [{"role": "user", "content": [
                {"type": "image_dicom", "image_dicom": {"dicom_source": 7}}]}]}, timeout=30)
        assert malformed.status_code in (400, 422)


def test_an_allowed_pacs_that_is_down_or_failing_is_the_gateways_502_and_the_server_serves_on(
        tmp_path: Path) -> None:
    """The PACS's fault is not the caller's: a 502 names the PACS (as the page's browse routes
    do), where an unknown UID stays a 400."""
    import socket

    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}/dicom-web"

    class _Failing(_Counter):
        hits: ClassVar[list[str]] = []

    failing = ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
    threading.Thread(target=failing.serve_forever, daemon=True).start()
    broken = f"http://127.0.0.1:{failing.server_address[1]}/dicom-web"
    try:
        config = ServerConfig(allowed_pacs=(closed, broken))
        with serve_in_thread(create_app(config, audited(scripted_model(), open_store(tmp_path / "a.sqlite")))) as base:
            down = httpx.post(base + "/v1/chat/completions", json=_body(f"{closed}/studies/1.2.3"), timeout=60)
            assert down.status_code == 502, down.text
            assert down.json()["error"]["code"] == "pacs_unavailable"
            assert "cannot reach" in down.json()["error"]["message"]
            error = httpx.post(base + "/v1/chat/completions", json=_body(f"{broken}/studies/1.2.3"), timeout=60)
            assert error.status_code == 502 and "answered 500" in error.json()["error"]["message"], error.text
            assert _Failing.hits  # it was asked
            assert httpx.get(base + "/healthz").status_code == 200
    finally:
        failing.shutdown()
