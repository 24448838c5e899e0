"""One generation-options object, built at each edge and carried on the request."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_cli
from medgem.errors import ImageInputError, InputError
from medgem.request import GenerationOptions
from test_server_helpers import scripted_model

MESSAGES = [{"role": "user", "content": "Anything?"}]


def test_options_validate_and_combine() -> None:
    with pytest.raises(InputError, match="max_new_tokens must be at least 1"):
        GenerationOptions(max_new_tokens=0)
    with pytest.raises(InputError, match="temperature"):
        GenerationOptions(temperature=-1)
    with pytest.raises(InputError, match="top_p"):
        GenerationOptions(top_p=0)
    with pytest.raises(InputError, match="stop strings"):
        GenerationOptions(stop=("",))
    assert GenerationOptions(stop="END").stop == ("END",)  # type: ignore[arg-type]
    base = GenerationOptions(max_new_tokens=5, think=True)
    assert GenerationOptions.of(base, seed=3, temperature=None) == GenerationOptions(
        max_new_tokens=5, think=True, seed=3)
    with pytest.raises(TypeError, match="unknown generation option"):
        GenerationOptions.of(base, max_tokens=5)


def test_think_stays_on_the_request() -> None:
    """think is part of the options the request carries, not only text in the system turn."""
    model = scripted_model()
    request = model.request("q", think=True)
    assert request.options.think and request.options.max_new_tokens == 1500
    assert not model.request("q").options.think


def test_chat_and_stream_chat_take_stop() -> None:
    model = scripted_model()
    answer = model.chat(MESSAGES, stop=["abnormality"])
    assert answer.text == "Seen 0 image(s). No acute cardiopulmonary" and answer.finish_reason == "stop"
    chunks = list(model.stream_chat(MESSAGES, options=GenerationOptions(stop=("cardio",))))
    assert chunks[-1].answer.text == "Seen 0 image(s). No acute"  # type: ignore[union-attr]


def test_cli_stop_cuts_a_real_answer(tiny_text_checkpoint: Path) -> None:
    """--stop with a word the tiny model really writes (from a first greedy run)."""
    first = run_cli("ask", "--model", str(tiny_text_checkpoint), "--max-new-tokens", "16", "--json",
                    "Hello")
    assert first.returncode == 0, first.stderr
    text = json.loads(first.stdout)["answer"]
    cut = text[len(text) // 2:].strip()[:3]
    assert cut, text
    second = run_cli("ask", "--model", str(tiny_text_checkpoint), "--max-new-tokens", "16", "--json",
                     "--stop", cut, "Hello")
    assert second.returncode == 0, second.stderr
    answer = json.loads(second.stdout)
    assert answer["finish_reason"] == "stop" and answer["answer"] == text[: text.index(cut)].strip()


def test_one_image_given_alone_is_one_image(tmp_path: Path) -> None:
    """``images="chest.png"`` (a str or Path, not a list) is that one file, and raw bytes are an
    upload: the str was read as its characters ("no image at 't'") and a Path or bytes were a
    TypeError."""
    from PIL import Image

    picture = tmp_path / "chest.png"
    Image.new("RGB", (32, 32), "gray").save(picture)
    model = scripted_model()
    for given in (str(picture), picture, picture.read_bytes(), [picture.read_bytes()],
                  Image.open(picture)):
        assert len(model.request("q", images=given).images) == 1, type(given)
    with pytest.raises(ImageInputError, match=r"no image at '.*missing\.png'"):
        model.request("q", images=str(tmp_path / "missing.png"))
