"""The remote engine passes a constraint on as OpenAI's ``response_format`` and validates what
comes back, against llama-cpp-python's own OpenAI server running the real 270M GGUF (a real
process on 127.0.0.1; see test_backends)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from medgem.api import MedGemma
from medgem.errors import RemoteError
from medgem.structured import Constraint

pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python's server extras")
pytestmark = pytest.mark.usefixtures("llamacpp_runs")

from test_backends import MODEL, llama_server  # noqa: E402


@pytest.fixture(scope="module")
def remote() -> Iterator[MedGemma]:
    from medgem.demo.build import demo_gguf_path

    gguf: Path = demo_gguf_path()
    with llama_server(gguf) as (_, url):
        model = MedGemma.load(MODEL, engine="remote", options={"base_url": url}, audit=False)
        try:
            yield model
        finally:
            model.close()


def test_the_remote_engine_says_it_can_constrain(remote: MedGemma) -> None:
    assert remote.engine.capabilities.constrained
    body = remote.engine._body(remote.request("Hi", schema="boxes", max_new_tokens=4))
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["name"] == "boxes"


def test_a_reply_the_budget_cut_comes_back_invalid(remote: MedGemma) -> None:
    """llama-cpp-python's server constrains ``{"type": "json_object"}`` with its JSON grammar (the
    reply is an object from its first byte), but the budget ended it: medgem's own check on
    return marks it invalid instead of handing half an object back as data."""
    answer = remote.chat([{"role": "user", "content": "Describe a chest X-ray as JSON."}],
                         schema="json", max_new_tokens=20)
    assert answer.finish_reason == "length" and answer.text.startswith("{")
    assert answer.parsed is None and "token budget" in (answer.structured_error or "")


def test_a_server_that_refuses_the_format_is_one_line(remote: MedGemma) -> None:
    """This server knows only json_object: a json_schema format is its refusal, in one line
    (never an unconstrained answer handed back as if it held)."""
    schema = Constraint.from_schema({"type": "object", "properties": {"a": {"type": "integer"}}})
    with pytest.raises(RemoteError) as refused:
        remote.ask("Hi", schema=schema, max_new_tokens=8)
    assert "response_format" in str(refused.value) and "\n" not in str(refused.value)
