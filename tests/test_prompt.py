from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from medgem.errors import InputError, UnsupportedInputError
from medgem.request import GenerationOptions, ImagePart, Message, TextPart
from medgem.request.compose import build_request, build_volume_request, describe_prompt
from medgem.request.thinking import THINK_INSTRUCTION
from medgem.request.variants import default_budget, find_variant

IMG = Image.new("RGB", (8, 8))


def test_system_turn_then_image_then_question_as_in_the_quick_start() -> None:
    request = build_request("Describe this X-ray", images=[IMG], system="You are an expert radiologist.")
    system, user = request.messages
    assert system.role == "system" and system.text == "You are an expert radiologist."
    assert isinstance(user.parts[0], ImagePart)
    assert user.parts[1] == TextPart("Describe this X-ray")
    assert request.options.max_new_tokens == 300 and request.options.greedy


def test_thinking_prefixes_the_system_prompt_and_raises_the_budget() -> None:
    variant = find_variant("27b-text-it")
    request = build_request("Q?", system="You are a helpful medical assistant.", variant=variant,
                            options=GenerationOptions(think=True))
    assert request.messages[0].text == f"{THINK_INSTRUCTION} You are a helpful medical assistant."
    assert request.options.max_new_tokens == 1500
    assert build_request("Q?", variant=variant, options=GenerationOptions(think=True)).messages[0].text == THINK_INSTRUCTION


def test_think_refused_for_a_variant_without_thinking() -> None:
    with pytest.raises(UnsupportedInputError, match="does not support thinking"):
        build_request("Q?", variant=find_variant("4b-it"), options=GenerationOptions(think=True))


def test_empty_question_is_an_input_error() -> None:
    with pytest.raises(InputError, match="empty"):
        build_request("   ")


def test_pretrained_models_get_a_completion_prompt() -> None:
    request = build_request("findings:", images=[IMG], system="ignored", chat=False)
    assert request.template == "completion"
    (user,) = request.messages
    assert [type(p).__name__ for p in user.parts] == ["ImagePart", "TextPart", "TextPart"]
    assert user.text == "<start_of_image>findings:"


def test_volume_layout_instruction_slices_then_question_last_no_system() -> None:
    request = build_volume_request("Any hemorrhage?", [IMG, IMG, IMG], modality="CT")
    (user,) = request.messages
    assert user.role == "user"
    texts = [p.text for p in user.parts if isinstance(p, TextPart)]
    assert texts[1:4] == ["SLICE 1", "SLICE 2", "SLICE 3"]
    assert texts[-1] == "Any hemorrhage?"
    assert isinstance(user.parts[1], ImagePart) and isinstance(user.parts[3], ImagePart)
    assert request.options.max_new_tokens == 2000


def test_budgets_from_the_facts_file() -> None:
    assert default_budget("image", False) == 300
    assert default_budget("image", True) == 1300
    assert default_budget("text", False) == 500
    assert default_budget("text", True) == 1500
    assert build_request("compare", images=[IMG, IMG]).options.max_new_tokens == 600


def test_describe_prompt_by_modality() -> None:
    assert describe_prompt("CR") == "Describe this X-ray"
    assert "CT" in describe_prompt("CT")
    assert describe_prompt(None) == "Describe this medical image."


def test_shipped_template_folds_system_into_first_user_turn() -> None:
    from jinja2 import Environment

    from medgem.request.compose import shipped_chat_template

    template = Environment().from_string(shipped_chat_template())
    text = template.render(
        bos_token="<bos>", add_generation_prompt=True,
        messages=[
            {"role": "system", "content": [{"type": "text", "text": "You are an expert radiologist."}]},
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this X-ray"}]},
            {"role": "assistant", "content": "Normal."},
            {"role": "user", "content": "Sure?"},
        ],
    )
    assert text == (
        "<bos><start_of_turn>user\nYou are an expert radiologist.\n\n<start_of_image>Describe this X-ray"
        "<end_of_turn>\n<start_of_turn>model\nNormal.<end_of_turn>\n<start_of_turn>user\nSure?"
        "<end_of_turn>\n<start_of_turn>model\n"
    )


# --- parity with Google's Gemma 3 template (issue 25) -------------------------------------------
# tests/data/gemma3_it_chat_template.jinja is google/gemma-3-4b-it's chat template
# (tokenizer_config.json), the reference: medgem's prompts and its shipped fallback must render
# as it does.
REAL_TEMPLATE = Path(__file__).parent / "data" / "gemma3_it_chat_template.jinja"


def _render(template_text: str, request: object) -> str:
    from jinja2 import Environment

    def fail(message: str) -> None:
        raise ValueError(message)

    template = Environment().from_string(template_text)
    messages = [{"role": "assistant" if m.role == "assistant" else m.role,  # type: ignore[attr-defined]
                 "content": [{"type": "text", "text": p.text} if isinstance(p, TextPart) else {"type": "image"}
                             for p in m.parts]} for m in request.messages]  # type: ignore[attr-defined]
    return template.render(bos_token="<bos>", add_generation_prompt=True, messages=messages, raise_exception=fail)


def _both(request: object) -> tuple[str, str]:
    from medgem.request.compose import shipped_chat_template

    return _render(REAL_TEMPLATE.read_text(), request), _render(shipped_chat_template(), request)


def test_a_system_prompt_keeps_its_trailing_newline_with_thinking_on() -> None:
    variant = find_variant("27b-text-it")
    request = build_request("Q?", system="You are a helpful medical assistant.\n", variant=variant,
                            options=GenerationOptions(think=True))
    real, shipped = _both(request)
    assert real == shipped
    assert "You are a helpful medical assistant.\n\n\nQ?" in real  # the newline, then the blank line


def test_the_shipped_template_does_not_trim_system_text() -> None:
    request = build_request("Describe this X-ray", images=[IMG], system="  You are an expert radiologist.\n")
    real, shipped = _both(request)
    assert shipped == real
    assert real.startswith("<bos><start_of_turn>user\n  You are an expert radiologist.\n\n\n<start_of_image>")


def test_two_system_text_parts_are_joined_by_the_templates_separator() -> None:
    from medgem.request.openai_messages import request_from_openai

    request = request_from_openai([
        {"role": "system", "content": [{"type": "text", "text": "You are X."}, {"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": "Hi"}])
    assert request.messages[0].text == "You are X.\n\nBe brief."
    real, shipped = _both(request)
    assert real == shipped and "You are X.\n\nBe brief.\n\nHi<end_of_turn>" in real


def test_an_image_in_a_system_message_is_refused_not_dropped() -> None:
    from medgem.errors import ImageInputError
    from medgem.request.openai_messages import request_from_openai

    with pytest.raises(ImageInputError, match=r"messages\[0\]\.content\[1\] is an image in a system message"):
        request_from_openai([
            {"role": "system", "content": [{"type": "text", "text": "You are X."}, {"type": "image", "image": IMG}]},
            {"role": "user", "content": "Hi"}])


@pytest.mark.parametrize(("messages", "where"), [
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
     r"messages\[1\] is a user turn where the assistant's was due"),
    ([{"role": "system", "content": "S"}, {"role": "assistant", "content": "Hello"},
      {"role": "user", "content": "b"}],
     r"messages\[1\] is an assistant turn where the user's was due"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "x"},
      {"role": "assistant", "content": "y"}, {"role": "user", "content": "b"}],
     r"messages\[2\] is an assistant turn where the user's was due"),
])
def test_turns_out_of_order_are_refused_before_the_template_raises(
        messages: list[dict[str, str]], where: str) -> None:
    """Gemma 3's template raises on turns that do not alternate (the real one as the shipped
    one); every surface that reads OpenAI-shaped messages says which turn, in one line."""
    from medgem.request.compose import chat_request, shipped_chat_template
    from medgem.request.openai_messages import request_from_openai

    with pytest.raises(InputError, match=where):
        request_from_openai(messages)
    unchecked = chat_request(None, [Message(m["role"], (TextPart(m["content"]),))
                                    for m in messages if m["role"] != "system"], GenerationOptions())
    for template in (REAL_TEMPLATE.read_text(), shipped_chat_template()):
        with pytest.raises(ValueError, match="alternate"):
            _render(template, unchecked)


def test_pretrained_models_read_only_the_last_turn_so_order_is_not_checked() -> None:
    from medgem.request.openai_messages import request_from_openai

    request = request_from_openai([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
                                  chat=False)
    assert request.template == "completion" and request.messages[0].text == "b"
