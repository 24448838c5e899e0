"""Ollama's API on `medgem serve`, driven by the official `ollama` Python client against a live
server (the demo model, a real process on 127.0.0.1 with API keys on): the same keys, audit
records, caveat and limits as the OpenAI routes."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ollama  # the official client: a dev dependency, never skipped
import pytest
from PIL import Image

from conftest import REPO, run_cli


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Served:
    def __init__(self, url: str, key: str, store: Path, name: str) -> None:
        self.url, self.key, self.store, self.name = url, key, store, name

    def client(self, key: str | None = None) -> Any:
        token = self.key if key is None else key
        return ollama.Client(host=self.url, headers={"Authorization": f"Bearer {token}"} if token else {})

    def post(self, path: str, body: dict[str, Any], key: str | None = None) -> tuple[int, Any]:
        token = self.key if key is None else key
        asked = urllib.request.Request(f"{self.url}{path}", data=json.dumps(body).encode(), headers={
            "Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})})
        try:
            with urllib.request.urlopen(asked, timeout=120) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def records(self, kind: str) -> int:
        from medgem.audit import open_store

        store = open_store(self.store)
        try:
            return store.count(kind)
        finally:
            store.close()


@pytest.fixture(scope="module")
def served(demo_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("ollama")
    keys = folder / "keys.json"
    made = run_cli("keys", "--file", str(keys), "add", "clinic")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    store = folder / "audit.sqlite"
    port = _free_port()
    env = {**os.environ, "MEDGEM_CACHE": str(folder / "mc"), "MEDGEM_CONFIG": ""}
    server = subprocess.Popen(
        [sys.executable, "-m", "medgem", "serve", "--model", str(demo_checkpoint), "--port",
         str(port), "--api-key-file", str(keys), "--audit-db", str(store)],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while True:
        assert server.poll() is None and time.monotonic() < deadline, server.communicate()[1]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                break
        except OSError:
            time.sleep(0.5)
    yield Served(f"http://127.0.0.1:{port}", key, store, "medgem-demo-gemma3-270m")
    server.send_signal(signal.SIGTERM)
    server.wait(90)


def test_tags_show_and_ps_describe_the_served_model(served: Served) -> None:
    client = served.client()
    [model] = client.list().models
    assert model.model == served.name and model.size > 0 and model.details.family == "gemma3"
    shown = client.show(served.name)
    assert "completion" in shown.capabilities and "vision" in shown.capabilities
    assert shown.modelinfo["gemma3.context_length"] > 0
    status, raw = served.post("/api/show", {"model": served.name})
    assert status == 200 and "must not directly inform" in raw["medgem"]["caveat"]
    assert raw["medgem"]["label"].startswith("DEMO MODEL")
    [running] = client.ps().models
    assert running.model == served.name
    with pytest.raises(ollama.ResponseError) as missing:
        client.show("llama3")
    assert missing.value.status_code == 404 and "is not served here" in str(missing.value.error)


def test_chat_whole_and_streamed_give_the_same_greedy_answer_with_one_record_each(served: Served) -> None:
    client = served.client()
    before = served.records("answer")
    messages = [{"role": "user", "content": "What is pneumonia?"}]
    whole = client.chat(model=served.name, messages=messages, options={"num_predict": 4}, stream=False)
    assert whole.done and whole.done_reason in ("stop", "length") and whole.message.role == "assistant"
    assert 1 <= whole.eval_count <= 4 and whole.prompt_eval_count > 0 and whole.total_duration > 0
    pieces = list(client.chat(model=served.name, messages=messages, options={"num_predict": 4}, stream=True))
    assert pieces[-1].done and not any(piece.done for piece in pieces[:-1])
    # the whole body's text is the answer trimmed, as on the OpenAI routes
    assert "".join(piece.message.content or "" for piece in pieces).strip() == whole.message.content
    assert pieces[-1].eval_count == whole.eval_count
    assert served.records("answer") == before + 2  # one audit record per answer

    status, raw = served.post("/api/chat", {"model": served.name, "messages": messages,
                                            "stream": False, "options": {"num_predict": 2}})
    assert status == 200 and "must not directly inform" in raw["medgem"]["caveat"]
    assert raw["medgem"]["label"].startswith("DEMO MODEL") and raw["medgem"]["audit_id"]


def test_generate_whole_and_streamed_with_an_image(served: Served) -> None:
    client = served.client()
    picture = io.BytesIO()
    Image.new("RGB", (64, 64), (90, 90, 90)).save(picture, format="PNG")
    whole = client.generate(model=served.name, prompt="Describe this X-ray",
                            images=[picture.getvalue()], options={"num_predict": 3}, stream=False)
    assert whole.done and whole.prompt_eval_count > 256  # the image's 256 tokens are in the prompt
    streamed = list(client.generate(model=served.name, prompt="Describe this X-ray",
                                    images=[base64.b64encode(picture.getvalue()).decode()],
                                    options={"num_predict": 3}, stream=True))
    assert streamed[-1].done and "".join(p.response for p in streamed).strip() == whole.response
    loaded = client.generate(model=served.name)  # Ollama's "load it" call: no prompt
    assert loaded.done and loaded.done_reason == "load"


def test_format_constrains_the_answer_to_the_schema(served: Served) -> None:
    schema = {"type": "object", "properties": {"finding": {"type": "string", "enum": ["normal", "abnormal"]},
                                                "certain": {"type": "boolean"}},
              "required": ["finding", "certain"], "additionalProperties": False}
    answer = served.client().chat(model=served.name, messages=[{"role": "user", "content": "Normal?"}],
                                  format=schema, options={"num_predict": 48}, stream=False)
    parsed = json.loads(answer.message.content)  # random demo weights: only the constraint shapes it
    assert parsed["finding"] in ("normal", "abnormal") and isinstance(parsed["certain"], bool)
    assert set(parsed) == {"finding", "certain"}


@pytest.mark.parametrize(("call", "status", "words"), [
    ({"format": {"type": "object", "properties": {"a": {"type": "texte"}}}}, 400, "not a valid JSON schema"),
    ({"format": {"type": "object", "patternProperties": {"^a": {}}}}, 400, "patternProperties"),
    ({"options": {"top_k": 40}}, 400, "option 'top_k' is not supported by medgem"),
    ({"options": {"num_predict": 100000}}, 400, "options.num_predict 100000 is over this server's limit"),
    ({"model": "llama3"}, 404, "model 'llama3' is not served here"),
])
def test_refusals_are_ollama_errors_and_recorded(served: Served, call: dict[str, Any], status: int,
                                                 words: str) -> None:
    client = served.client()
    before = served.records("rejected")
    arguments = {"model": served.name, "messages": [{"role": "user", "content": "Hi"}], **call}
    with pytest.raises(ollama.ResponseError) as refused:
        client.chat(**arguments, stream=False)
    assert refused.value.status_code == status and words in refused.value.error
    assert served.records("rejected") == before + 1


def test_keys_are_required_as_on_the_openai_routes(served: Served) -> None:
    for bad in ("", "not-a-key"):
        with pytest.raises(ollama.ResponseError) as refused:
            served.client(bad).chat(model=served.name, messages=[{"role": "user", "content": "Hi"}])
        assert refused.value.status_code == 401
    with pytest.raises(ollama.ResponseError) as listing:
        served.client("").list()
    assert listing.value.status_code == 401


def test_think_goes_through_as_on_the_openai_route(served: Served) -> None:
    """The demo model is no thinking variant: both APIs say the same about `think`."""
    body = {"model": served.name, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2,
            "think": True}
    openai_status, openai_body = served.post("/v1/chat/completions", body)
    status, raw = served.post("/api/chat", {"model": served.name, "think": True, "stream": False,
                                            "messages": body["messages"], "options": {"num_predict": 2}})
    assert status == openai_status
    if status == 200:
        assert raw["done"] and not raw["message"].get("thinking")
    else:
        assert raw["error"] == openai_body["error"]["message"]


def test_medgems_own_api_ask_still_answers(served: Served) -> None:
    asked = urllib.request.Request(f"{served.url}/api/ask", data=json.dumps(
        {"question": "What is sepsis?", "max_tokens": 2}).encode(), headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {served.key}"})
    with urllib.request.urlopen(asked, timeout=120) as response:
        assert response.status == 200 and "text/event-stream" in response.headers["content-type"]
        assert b"[DONE]" in response.read()
