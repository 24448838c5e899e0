"""The OpenAI-compatible API over real HTTP: the openai client, errors, keys, limits, audit."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from medgem.audit import AuditStore, open_store, sha256_hex
from medgem.errors import InputError
from medgem.server.app import create_app
from medgem.server.auth import KeyStore
from medgem.server.server_config import ServerConfig
from test_server_helpers import SCRIPTED_ID, audited, png_data_url, scripted_model, serve_in_thread


@pytest.fixture(scope="module")
def allowed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("allowed")
    data = png_data_url().split(",", 1)[1]
    (folder / "xray.png").write_bytes(base64.b64decode(data))
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, allowed: Path) -> Iterator[tuple[str, AuditStore]]:
    store = open_store(tmp_path_factory.mktemp("audit") / "audit.sqlite")
    config = ServerConfig(max_images=2, max_new_tokens=1000, allowed_dirs=(allowed,), max_body_bytes=2_000_000)
    with serve_in_thread(create_app(config, audited(scripted_model(), store))) as base:
        yield base, store


@pytest.fixture()
def client(server: tuple[str, AuditStore]) -> openai.OpenAI:
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0)


def _image_message(question: str = "Describe this X-ray", url: str | None = None) -> list[dict[str, object]]:
    return [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url or png_data_url()}},
        {"type": "text", "text": question},
    ]}]


def test_openai_client_text(client: openai.OpenAI, server: tuple[str, AuditStore]) -> None:
    completion = client.chat.completions.create(
        model=SCRIPTED_ID, messages=[{"role": "user", "content": "How is pneumonia diagnosed?"}])
    assert completion.choices[0].message.content == "Seen 0 image(s). No acute cardiopulmonary abnormality is seen."
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens == 9
    record = server[1].get(completion.id)
    assert record is not None and record.kind == "answer" and record.body["output"] == completion.choices[0].message.content
    assert record.body["user"] == "local" and record.body["model"]["id"] == SCRIPTED_ID
    assert record.body["caveat"] and record.body["label"].startswith("TEST MODEL")
    # Hashes of the inputs, never the prompt itself.
    assert record.body["inputs"] == [{"role": "user", "kind": "text", "chars": 27,
                                      "sha256": sha256_hex("How is pneumonia diagnosed?")}]
    assert "pneumonia" not in str(record.body) and "prompt" not in record.body


def test_openai_client_image_streaming_with_thinking(client: openai.OpenAI, server: tuple[str, AuditStore]) -> None:
    url = png_data_url()
    stream = client.chat.completions.create(
        model=SCRIPTED_ID, messages=_image_message(url=url), stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True}, extra_body={"think": True})
    content, reasoning, finish, usage, ids = "", "", None, None, set()
    for chunk in stream:
        ids.add(chunk.id)
        if chunk.usage:
            usage = chunk.usage
        if chunk.choices:
            delta = chunk.choices[0].delta
            content += delta.content or ""
            reasoning += getattr(delta, "reasoning_content", None) or ""
            # the same thought under vLLM's newer name, for clients of either convention
            assert getattr(delta, "reasoning", None) == getattr(delta, "reasoning_content", None)
            finish = chunk.choices[0].finish_reason or finish
    assert content == "Seen 1 image(s). No acute cardiopulmonary abnormality is seen."
    assert reasoning == "The lungs look clear on both sides."
    assert finish == "stop" and usage is not None and usage.prompt_tokens > 256
    (record_id,) = ids
    record = server[1].get(record_id)
    assert record is not None and record.body["thinking"] == reasoning and record.body["settings"]["think"]
    image_bytes = base64.b64decode(url.split(",", 1)[1])
    assert {"role": "user", "kind": "image", "mime": "image/png", "sha256": sha256_hex(image_bytes),
            "bytes": len(image_bytes)} in record.body["inputs"]


def test_non_streaming_thinking_and_length(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=SCRIPTED_ID, messages=_image_message(), max_tokens=4, extra_body={"think": True})  # type: ignore[arg-type]
    message = completion.choices[0].message
    assert completion.choices[0].finish_reason == "length"
    assert message.content == "" and getattr(message, "reasoning_content", None)
    assert getattr(message, "reasoning", None) == getattr(message, "reasoning_content", None)


def test_models_health_and_metrics(client: openai.OpenAI, server: tuple[str, AuditStore]) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == [SCRIPTED_ID]
    assert httpx.get(server[0] + "/healthz").json()["status"] == "ok"
    client.chat.completions.create(model=SCRIPTED_ID, messages=[{"role": "user", "content": "hi"}])
    text = httpx.get(server[0] + "/metrics").text
    for name in ("medgem_requests_total{", "medgem_tokens_total{kind=\"completion\"}", "medgem_queue_depth ",
                 "medgem_request_duration_seconds_bucket{", "medgem_time_to_first_token_seconds_count"):
        assert name in text
    # Standard exposition that Prometheus' own parser reads, with process metrics beside ours.
    from prometheus_client.parser import text_string_to_metric_families

    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("medgem_tokens_total", (("kind", "completion"),))] > 0
    assert samples[("medgem_answers_total", (("finish_reason", "stop"),))] >= 1
    assert samples[("process_resident_memory_bytes", ())] > 1e6
    assert "access-control-allow-origin" not in httpx.get(server[0] + "/v1/models", headers={"Origin": "http://evil"}).headers


def test_allowed_folder_is_read_and_others_are_not(client: openai.OpenAI, allowed: Path, tmp_path: Path) -> None:
    inside = client.chat.completions.create(model=SCRIPTED_ID, messages=_image_message(url=str(allowed / "xray.png")))  # type: ignore[arg-type]
    assert inside.choices[0].message.content.startswith("Seen 1 image(s)")  # type: ignore[union-attr]
    (tmp_path / "secret.png").write_bytes((allowed / "xray.png").read_bytes())
    for path in (str(tmp_path / "secret.png"), str(allowed / ".." / tmp_path.name / "secret.png"), "/etc/passwd"):
        with pytest.raises(openai.BadRequestError, match="not allowed"):
            client.chat.completions.create(model=SCRIPTED_ID, messages=_image_message(url=path))  # type: ignore[arg-type]


BAD_BODIES: list[tuple[str, bytes | dict[str, object], int, str]] = [
    ("malformed json", b'{"model": "x", "messages": [', 400, "invalid_json"),
    ("not an object", b"[1, 2]", 400, "invalid_json"),
    ("wrong type", {"model": SCRIPTED_ID, "messages": "hello"}, 400, "invalid_value"),
    ("wrong type deep", {"model": SCRIPTED_ID, "messages": [{"role": "user", "content": 5}]}, 400, "invalid_value"),
    ("unknown field", {"model": SCRIPTED_ID, "messages": [{"role": "user", "content": "hi"}], "tempurature": 1}, 400, "invalid_value"),
    ("unknown model", {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}, 404, "model_not_found"),
    ("empty messages", {"model": SCRIPTED_ID, "messages": []}, 400, "invalid_value"),
    ("last not user", {"model": SCRIPTED_ID, "messages": [{"role": "assistant", "content": "hi"}]}, 400, "invalid_request_error"),
    ("invalid base64", {"model": SCRIPTED_ID, "messages": _image_message(url="data:image/png;base64,@@@notbase64")}, 400, "invalid_request_error"),
    ("not an image", {"model": SCRIPTED_ID, "messages": _image_message(url="data:image/png;base64," + base64.b64encode(b"hello").decode())}, 400, "invalid_request_error"),
    ("unsupported type", {"model": SCRIPTED_ID, "messages": _image_message(url="data:text/html;base64,PGgxPg==")}, 400, "invalid_request_error"),
    ("remote url", {"model": SCRIPTED_ID, "messages": _image_message(url="https://example.com/x.png")}, 400, "invalid_request_error"),
    ("too many images", {"model": SCRIPTED_ID, "messages": [{"role": "user", "content": [
        *[{"type": "image_url", "image_url": {"url": png_data_url()}}] * 3, {"type": "text", "text": "q"}]}]}, 400, "invalid_request_error"),
    ("too many tokens", {"model": SCRIPTED_ID, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000}, 400, "invalid_value"),
    ("zero tokens", {"model": SCRIPTED_ID, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, 400, "invalid_value"),
    ("prompt over context", {"model": SCRIPTED_ID, "messages": [{"role": "user", "content": "word " * 5000}]}, 400, "context_length_exceeded"),
    ("n > 1", {"model": SCRIPTED_ID, "messages": [{"role": "user", "content": "hi"}], "n": 2}, 400, "invalid_value"),
    ("body too large", {"model": SCRIPTED_ID, "messages": [{"role": "user", "content": "x" * 2_100_000}]}, 413, "request_too_large"),
]


@pytest.mark.parametrize(("name", "body", "status", "code"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(
    server: tuple[str, AuditStore], client: openai.OpenAI, name: str, body: bytes | dict[str, object], status: int, code: str,
) -> None:
    url = server[0] + "/v1/chat/completions"
    before = server[1].count("rejected")
    if isinstance(body, bytes):
        response = httpx.post(url, content=body, headers={"Content-Type": "application/json"})
    else:
        response = httpx.post(url, json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code and error["message"]
    assert server[1].count("rejected") == before + 1  # refusals are audited too
    ok = client.chat.completions.create(model=SCRIPTED_ID, messages=[{"role": "user", "content": "still there?"}])
    assert ok.choices[0].finish_reason == "stop"


def test_wrong_type_names_the_parameter(server: tuple[str, AuditStore]) -> None:
    response = httpx.post(server[0] + "/v1/chat/completions",
                          json={"model": SCRIPTED_ID, "messages": [{"role": "user", "content": "x"}], "temperature": "hot"})
    assert response.json()["error"]["param"] == "temperature"


def test_api_keys_are_required_named_and_revocable(tmp_path: Path) -> None:
    keys = KeyStore(tmp_path / "keys.json")
    alice = keys.add("alice")
    bob = keys.add("bob")
    assert alice.startswith("mg-") and alice not in (tmp_path / "keys.json").read_text()
    store = open_store(":memory:")
    config = ServerConfig(api_key_file=tmp_path / "keys.json")
    with serve_in_thread(create_app(config, audited(scripted_model(), store))) as base:
        body = {"model": SCRIPTED_ID, "messages": [{"role": "user", "content": "hi"}]}
        assert httpx.post(base + "/v1/chat/completions", json=body).json()["error"]["code"] == "invalid_api_key"
        wrong = httpx.post(base + "/v1/chat/completions", json=body, headers={"Authorization": "Bearer mg-nope"})
        assert wrong.status_code == 401 and wrong.json()["error"]["type"] == "authentication_error"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=base + "/v1", api_key="mg-nope", max_retries=0).models.list()
        client = openai.OpenAI(base_url=base + "/v1", api_key=alice, max_retries=0)
        completion = client.chat.completions.create(model=SCRIPTED_ID, messages=[{"role": "user", "content": "hi"}])
        assert store.get(completion.id).body["user"] == "alice"  # type: ignore[union-attr]
        keys.revoke("alice")
        with pytest.raises(openai.AuthenticationError):
            client.models.list()
        assert httpx.get(base + "/v1/models", headers={"Authorization": f"Bearer {bob}"}).status_code == 200
        assert httpx.get(base + "/api/info").json()["auth_required"] is True


def test_binding_beyond_loopback_needs_keys(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="API keys"):
        create_app(ServerConfig(host="0.0.0.0"), audited(scripted_model(), open_store(":memory:")))
    KeyStore(tmp_path / "keys.json").add("ops")
    app = create_app(ServerConfig(host="0.0.0.0", api_key_file=tmp_path / "keys.json"), audited(scripted_model(), open_store(":memory:")))
    assert app.state.serving.keys is not None


def test_cors_is_opt_in() -> None:
    config = ServerConfig(cors_origins=("http://ris.local",))
    with serve_in_thread(create_app(config, audited(scripted_model(), open_store(":memory:")))) as base:
        allowed = httpx.options(base + "/v1/chat/completions", headers={
            "Origin": "http://ris.local", "Access-Control-Request-Method": "POST"})
        assert allowed.headers["access-control-allow-origin"] == "http://ris.local"
        other = httpx.options(base + "/v1/chat/completions", headers={
            "Origin": "http://evil", "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in other.headers


def test_log_prompts_keeps_text_and_deidentified_dicom(tmp_path: Path) -> None:
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    dicom = Path(str(get_testdata_file("CT_small.dcm"))).read_bytes()
    assert b"CompressedSamples" in dicom  # the test file's patient name
    store = open_store(tmp_path / "audit.sqlite")
    config = ServerConfig(log_prompts=True)
    with serve_in_thread(create_app(config, audited(scripted_model(), store))) as base:
        client = openai.OpenAI(base_url=base + "/v1", api_key="x", max_retries=0)
        url = "data:application/dicom;base64," + base64.b64encode(dicom).decode()
        completion = client.chat.completions.create(model=SCRIPTED_ID, messages=_image_message("Any bleed?", url))  # type: ignore[arg-type]
    record = store.get(completion.id)
    assert record is not None
    parts = record.body["prompt"][0]["content"]
    assert parts[1] == {"type": "text", "text": "Any bleed?"}
    blob = store.get_blob(parts[0]["blob"])
    assert blob is not None and blob[1] == "application/dicom"
    cleaned = pydicom.dcmread(__import__("io").BytesIO(blob[0]))
    assert "CompressedSamples" not in str(cleaned.get("PatientName", ""))
    assert b"CompressedSamples" not in blob[0]
