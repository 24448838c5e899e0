"""The remote engine against medgem's own server: thinking, images, cancel, errors; and the
same greedy tokens as the local transformers engine when the server runs the tiny model."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from medgem.api import MedGemma
from medgem.audit import open_store
from medgem.engines.base import Finished, TextDelta
from medgem.engines.remote import RemoteEngine
from medgem.errors import EngineUnavailableError, RemoteError
from medgem.server.app import create_app
from medgem.server.auth import KeyStore
from medgem.server.server_config import ServerConfig
from test_server_helpers import SCRIPTED_ID, ScriptedEngine, audited, free_port, serve_in_thread


@pytest.fixture(scope="module")
def scripted_server() -> Iterator[tuple[str, ScriptedEngine]]:
    engine = ScriptedEngine(" ".join(f"w{i}" for i in range(100)), delay=0.01)
    app = create_app(ServerConfig(), audited(MedGemma(engine), open_store(":memory:")))  # type: ignore[arg-type]
    with serve_in_thread(app) as base:
        yield base, engine


def test_model_info_comes_from_the_server(scripted_server: tuple[str, ScriptedEngine]) -> None:
    engine = RemoteEngine(SCRIPTED_ID, scripted_server[0])  # /v1 is added
    assert engine.base_url.endswith("/v1") and engine.info.engine == "remote"
    assert engine.info.demo and engine.info.context_length == 4096 and engine.capabilities.images


def test_thinking_is_rewrapped_and_split_again(scripted_server: tuple[str, ScriptedEngine]) -> None:
    model = MedGemma.load(SCRIPTED_ID, engine="remote", options={"base_url": scripted_server[0] + "/v1"})
    answer = model.ask("Describe this", images=[Image.new("RGB", (32, 32))], think=True, max_new_tokens=200)
    assert answer.thinking == "The lungs look clear on both sides."
    assert answer.text.startswith("Seen 1 image(s). w0 w1") and answer.finish_reason == "stop"
    assert answer.usage.completion_tokens > 100 and answer.label.startswith("TEST MODEL")
    raw = "".join(e.text for e in RemoteEngine(SCRIPTED_ID, scripted_server[0]).generate(
        model.request("q", think=True, max_new_tokens=200)) if isinstance(e, TextDelta))
    assert raw.startswith("<unused94>thought\nThe lungs") and "<unused95>Seen 0" in raw


def test_the_servers_audit_record_is_named_on_the_answer() -> None:
    """A medgem server audits what it answers; the answer read through it names that record (so
    `medgem ask` through a running server prints the id to review), with no local trail."""
    store = open_store(":memory:")
    app = create_app(ServerConfig(), audited(MedGemma(ScriptedEngine("w0 w1 w2")), store))  # type: ignore[arg-type]
    with serve_in_thread(app) as base:
        model = MedGemma.load(SCRIPTED_ID, engine="remote", audit=False, options={"base_url": base})
        answer = model.ask("q", max_new_tokens=3)
    record = store.get(answer.audit_id or "")
    assert record is not None and record.kind == "answer"
    assert answer.text and answer.text in json.dumps(record.body["output"])


def test_budget_gives_length(scripted_server: tuple[str, ScriptedEngine]) -> None:
    model = MedGemma.load(SCRIPTED_ID, engine="remote", options={"base_url": scripted_server[0]})
    answer = model.ask("q", max_new_tokens=5)
    assert answer.finish_reason == "length" and answer.usage.completion_tokens == 5


def test_cancel_stops_the_remote_generation(scripted_server: tuple[str, ScriptedEngine]) -> None:
    base, scripted = scripted_server
    before = scripted.cancelled
    engine = RemoteEngine(SCRIPTED_ID, base)
    cancel = threading.Event()
    events = []
    for event in engine.generate(MedGemma(engine).request("q", max_new_tokens=200), cancel):
        events.append(event)
        if len(events) == 3:
            cancel.set()
    assert isinstance(events[-1], Finished) and events[-1].finish_reason == "cancelled"
    # The closed connection reached the server, which stopped its engine.
    for _ in range(50):
        if scripted.cancelled > before:
            break
        threading.Event().wait(0.1)
    assert scripted.cancelled == before + 1


def test_errors_say_what_to_do(scripted_server: tuple[str, ScriptedEngine], tmp_path: Path) -> None:
    with pytest.raises(EngineUnavailableError, match="cannot reach"):
        RemoteEngine(SCRIPTED_ID, f"http://127.0.0.1:{free_port()}")
    with pytest.raises(RemoteError, match="does not serve 'nope'"):
        RemoteEngine("nope", scripted_server[0])
    engine = RemoteEngine(SCRIPTED_ID, scripted_server[0])
    with pytest.raises(RemoteError, match="max_tokens") as refused:
        list(engine.generate(MedGemma(engine).request("q", max_new_tokens=100_000)))
    assert refused.value.status == 400
    keys = KeyStore(tmp_path / "keys.json")
    key = keys.add("cluster")
    app = create_app(ServerConfig(api_key_file=tmp_path / "keys.json"),
                     audited(MedGemma(ScriptedEngine()), open_store(":memory:")))  # type: ignore[arg-type]
    with serve_in_thread(app) as base:
        with pytest.raises(RemoteError, match="api-key") as denied:
            RemoteEngine(SCRIPTED_ID, base)
        assert denied.value.status == 401
        assert RemoteEngine(SCRIPTED_ID, base, api_key=key).info.id == SCRIPTED_ID


def test_remote_is_a_registered_engine_and_knows_the_variant(
        scripted_server: tuple[str, ScriptedEngine]) -> None:
    """The registry builds it like any engine, and a served variant that cannot think refuses
    --think here as it does locally (the server named the variant)."""
    from medgem.engines import RemoteOptions, engine_names, load_engine
    from medgem.errors import UnsupportedInputError

    assert "remote" in engine_names()
    engine = load_engine("remote", SCRIPTED_ID, RemoteOptions(base_url=scripted_server[0]))
    assert engine.info.engine == "remote"
    import dataclasses

    served = ScriptedEngine()
    served.info = dataclasses.replace(served.info, variant="4b-it")
    app = create_app(ServerConfig(), audited(MedGemma(served), open_store(":memory:")))  # type: ignore[arg-type]
    with serve_in_thread(app) as base:
        model = MedGemma.load(SCRIPTED_ID, engine="remote", options={"base_url": base})
        assert model.variant is not None and model.variant.key == "4b-it"
        with pytest.raises(UnsupportedInputError, match="does not support thinking"):
            model.ask("q", think=True, max_new_tokens=5)


def test_remote_gives_the_local_greedy_tokens(tiny_vlm_checkpoint: Path) -> None:
    local = MedGemma.load(tiny_vlm_checkpoint, engine="hf", options={"device": "cpu", "progress": False})
    try:
        image = Image.new("RGB", (64, 64), (120, 120, 120))
        expected = local.ask("Describe this X-ray", images=[image], max_new_tokens=10)
        with serve_in_thread(create_app(ServerConfig(), audited(local, open_store(":memory:")))) as base:
            remote = MedGemma.load("medgem-test-vlm", engine="remote", options={"base_url": base + "/v1"})
            got = remote.ask("Describe this X-ray", images=[image], max_new_tokens=10)
    finally:
        local.close()
    assert got.text == expected.text
    assert got.usage == expected.usage and got.finish_reason == expected.finish_reason
