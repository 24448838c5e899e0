from __future__ import annotations

import pytest
from PIL import Image

from medgem.errors import InputError, UnsupportedInputError
from medgem.request import GenerationOptions, ImagePart, TextPart
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
