"""The server with the real transformers engine on the tiny checkpoints, over real HTTP.

The official openai client, streaming and not, text and image; the `medgem serve` command as a
user runs it, stopped with SIGTERM, its audit trail checked with `medgem audit verify`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from medgem.api import MedGemma
from medgem.audit import AuditStore, open_store
from medgem.server.app import create_app
from medgem.server.server_config import ServerConfig
from test_server_helpers import audited, free_port, png_data_url, serve_in_thread, wait_healthy

QUESTION = "Describe this chest X-ray."


@pytest.fixture(scope="module")
def vlm(tiny_vlm_checkpoint: Path) -> Iterator[MedGemma]:
    model = MedGemma.load(tiny_vlm_checkpoint, engine="hf", options={"device": "cpu", "progress": False})
    yield model
    model.close()


@pytest.fixture(scope="module")
def server(vlm: MedGemma, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, AuditStore]]:
    store = open_store(tmp_path_factory.mktemp("audit") / "audit.sqlite")
    with serve_in_thread(create_app(ServerConfig(), audited(vlm, store))) as base:
        yield base, store


@pytest.fixture()
def client(server: tuple[str, AuditStore]) -> openai.OpenAI:
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="local", max_retries=0)


def _image_message(url: str) -> list[dict[str, object]]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": QUESTION}]}]


def _streamed(client: openai.OpenAI, messages: list[dict[str, object]], max_tokens: int) -> tuple[str, str | None, str]:
    text, finish, record_id = "", None, ""
    stream = client.chat.completions.create(model="medgem-test-vlm", messages=messages, max_tokens=max_tokens,  # type: ignore[arg-type]
                                            stream=True)
    for chunk in stream:
        record_id = chunk.id
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
    return text, finish, record_id


def test_text_over_http_matches_the_python_api(vlm: MedGemma, client: openai.OpenAI, server: tuple[str, AuditStore]) -> None:
    messages: list[dict[str, object]] = [{"role": "user", "content": "What is a normal heart rate?"}]
    direct = vlm.chat(messages, max_new_tokens=12)
    whole = client.chat.completions.create(model="medgem-test-vlm", messages=messages, max_tokens=12)  # type: ignore[arg-type]
    assert whole.choices[0].message.content == direct.text  # greedy: the same tokens
    assert whole.usage is not None and whole.usage.completion_tokens == direct.usage.completion_tokens
    assert whole.usage.prompt_tokens == direct.usage.prompt_tokens
    streamed, finish, record_id = _streamed(client, messages, 12)
    assert streamed.strip() == direct.text and finish == whole.choices[0].finish_reason
    record = server[1].get(record_id)
    assert record is not None and record.body["model"]["engine"] == "hf" and record.body["model"]["revision"]
    assert record.body["label"].startswith("TEST MODEL")


def test_image_over_http_streaming_and_not(client: openai.OpenAI, server: tuple[str, AuditStore]) -> None:
    url = png_data_url((96, 80), (40, 40, 40))
    whole = client.chat.completions.create(model="medgem-test-vlm", messages=_image_message(url), max_tokens=10)  # type: ignore[arg-type]
    text_only = client.chat.completions.create(
        model="medgem-test-vlm", messages=[{"role": "user", "content": QUESTION}], max_tokens=10)
    assert whole.usage is not None and text_only.usage is not None
    assert whole.usage.prompt_tokens > text_only.usage.prompt_tokens  # the image's soft tokens
    streamed, finish, record_id = _streamed(client, _image_message(url), 10)
    assert streamed.strip() == whole.choices[0].message.content and finish == whole.choices[0].finish_reason
    record = server[1].get(record_id)
    assert record is not None and record.body["settings"]["images"] == 1
    assert server[1].verify().ok


def test_a_question_too_long_for_any_context_is_refused_before_the_tokenizer_runs(
        vlm: MedGemma, client: openai.OpenAI, server: tuple[str, AuditStore]) -> None:
    # A 50 MB question used to be tokenized whole (136 s on 2 cores, the engine held, every
    # other request waiting) before its 400; text longer than the context times Gemma 3's
    # longest token cannot fit, and says so at once.
    limit = vlm.engine.info.context_length
    text = "a" * max(limit * 40, 8 * 1024 * 1024)
    rejected = server[1].count("rejected")
    started = time.monotonic()
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="medgem-test-vlm", messages=[{"role": "user", "content": text}], max_tokens=2)
    assert time.monotonic() - started < 5
    error = refused.value.body
    assert isinstance(error, dict) and error["code"] == "context_length_exceeded"
    assert f"{len(text):,} characters" in error["message"] and str(limit) in error["message"]
    assert server[1].count("rejected") == rejected + 1
    ok = client.chat.completions.create(model="medgem-test-vlm", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert ok.choices[0].finish_reason in ("length", "stop")  # the server keeps serving


@pytest.mark.parametrize(("roles", "wrong"), [(("user", "user"), 1), (("user", "assistant", "assistant", "user"), 2),
                                              (("system", "assistant", "user"), 1)])
def test_turns_that_do_not_alternate_are_a_400_not_a_500(roles: tuple[str, ...], wrong: int,
                                                         server: tuple[str, AuditStore]) -> None:
    # Gemma 3's template raises on two user (or assistant) turns in a row: that reached the
    # client as "500 internal error — see the log", on the OpenAI and the Ollama routes.
    messages = [{"role": role, "content": f"turn {index}"} for index, role in enumerate(roles)]
    rejected = server[1].count("rejected")
    openai_route = httpx.post(server[0] + "/v1/chat/completions", json={
        "model": "medgem-test-vlm", "messages": messages, "max_tokens": 2})
    assert openai_route.status_code == 400, openai_route.text
    error = openai_route.json()["error"]
    assert error["code"] == "invalid_request_error" and "alternate" in error["message"]
    assert error["param"] == f"messages[{wrong}].role"
    ollama_route = httpx.post(server[0] + "/api/chat", json={"model": "medgem-test-vlm", "messages": messages, "stream": False})
    assert ollama_route.status_code == 400 and "alternate" in ollama_route.json()["error"]
    assert server[1].count("rejected") == rejected + 2
    ok = httpx.post(server[0] + "/v1/chat/completions", json={
        "model": "medgem-test-vlm", "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "a"},
                                                 {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}],
        "max_tokens": 2})
    assert ok.status_code == 200  # alternating turns, a system turn first, still answered


def test_images_to_a_text_model_are_refused(tiny_text_checkpoint: Path) -> None:
    model = MedGemma.load(tiny_text_checkpoint, engine="hf", options={"device": "cpu", "progress": False})
    try:
        with serve_in_thread(create_app(ServerConfig(), audited(model, open_store(":memory:")))) as base:
            client = openai.OpenAI(base_url=base + "/v1", api_key="local", max_retries=0)
            with pytest.raises(openai.BadRequestError, match="text-only"):
                client.chat.completions.create(model="medgem-test-text", messages=_image_message(png_data_url()))  # type: ignore[arg-type]
            ok = client.chat.completions.create(model="medgem-test-text", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
            assert ok.usage is not None and ok.usage.completion_tokens <= 3
    finally:
        model.close()


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "medgem", *args], capture_output=True, text=True, timeout=timeout)


def test_serve_command_answers_drains_on_sigterm_and_audits(tiny_vlm_checkpoint: Path, tmp_path: Path) -> None:
    port = free_port()
    audit = tmp_path / "audit.sqlite"
    process = subprocess.Popen(
        [sys.executable, "-m", "medgem", "serve", "--model", str(tiny_vlm_checkpoint), "--engine", "hf",
         "--device", "cpu", "--port", str(port), "--audit-db", str(audit)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "MEDGEM_API_KEYS": str(tmp_path / "none.json")},
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}", process, timeout=180)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="local", max_retries=0)
        answer = client.chat.completions.create(model="medgem-test-vlm", messages=_image_message(png_data_url()), max_tokens=5)  # type: ignore[arg-type]
        assert answer.choices[0].finish_reason in ("stop", "length")
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) in (0, -signal.SIGTERM)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    output = process.stdout.read().decode() if process.stdout else ""
    assert QUESTION not in output and "base64" not in output  # prompts never reach the log
    verified = _cli("audit", "--db", str(audit), "verify")
    assert verified.returncode == 0 and verified.stdout.startswith("OK: 2 records")  # accepted, answered
    assert answer.id in _cli("audit", "--db", str(audit), "list").stdout


def test_serve_refuses_a_public_bind_without_keys(tiny_vlm_checkpoint: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "medgem", "serve", "--model", str(tiny_vlm_checkpoint), "--engine", "hf",
         "--device", "cpu", "--host", "0.0.0.0", "--audit-db", str(tmp_path / "a.sqlite")],
        capture_output=True, text=True, timeout=180, env={**os.environ, "MEDGEM_API_KEYS": str(tmp_path / "none.json")},
    )
    assert result.returncode != 0 and "API keys" in result.stderr and "medgem keys add" in result.stderr


def test_keys_command_adds_lists_and_revokes(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    added = _cli("keys", "--file", str(keys), "add", "radiology")
    assert added.returncode == 0 and added.stdout.startswith("mg-")
    assert added.stdout.strip() not in keys.read_text()
    assert "radiology\tuser\tcreated" in _cli("keys", "--file", str(keys), "list").stdout
    assert _cli("keys", "--file", str(keys), "revoke", "radiology").returncode == 0
    assert "revoked" in _cli("keys", "--file", str(keys), "list").stdout
    again = _cli("keys", "--file", str(keys), "revoke", "radiology")
    assert again.returncode != 0 and "no active key" in again.stderr
