"""The transformers engines on tiny real-architecture checkpoints (random weights)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from PIL import Image

from medgem import AnswerChunk, FinalChunk, MedGemma
from medgem.engines.base import Engine
from medgem.errors import ContextLengthError, EngineUnavailableError, UnsupportedInputError
from medgem.request import GenerationOptions, Message, Request, TextPart

XRAY = Image.linear_gradient("L").resize((96, 80)).convert("RGB")


@pytest.fixture(scope="module")
def direct(tiny_vlm_checkpoint: Path) -> MedGemma:
    return MedGemma.load(tiny_vlm_checkpoint, engine="hf", options={"progress": False})


@pytest.fixture(scope="module")
def pipeline(tiny_vlm_checkpoint: Path) -> MedGemma:
    return MedGemma.load(tiny_vlm_checkpoint, engine="hf-pipeline", options={"progress": False})


def tokens_of(model: MedGemma, text: str) -> list[int]:
    return model.engine.tokenizer.encode(text, add_special_tokens=False)  # type: ignore[attr-defined]


def test_engines_satisfy_the_protocol(direct: MedGemma, pipeline: MedGemma) -> None:
    assert isinstance(direct.engine, Engine) and isinstance(pipeline.engine, Engine)
    assert direct.engine.capabilities.images and pipeline.engine.info.engine == "hf-pipeline"


def test_pipeline_and_direct_paths_give_identical_greedy_tokens_for_image_and_text(
    direct: MedGemma, pipeline: MedGemma
) -> None:
    for kwargs in (
        {"images": [XRAY], "system": "You are an expert radiologist."},
        {"system": "You are a helpful medical assistant."},
    ):
        question = "Describe this X-ray" if "images" in kwargs else "Bacterial or viral?"
        a = direct.ask(question, max_new_tokens=12, **kwargs)
        b = pipeline.ask(question, max_new_tokens=12, **kwargs)
        assert a.usage == b.usage
        assert a.usage.completion_tokens == 12 and a.finish_reason == "length"
        assert a.raw == b.raw and tokens_of(direct, a.raw) == tokens_of(pipeline, b.raw)


def test_image_prompt_carries_the_image_tokens(direct: MedGemma) -> None:
    with_image = direct.request("Describe", images=[XRAY])
    without = direct.request("Describe")
    # 4 soft tokens + start/end-of-image + the blank lines around them
    engine = direct.engine
    assert engine.prepare(with_image).prompt_tokens - engine.prepare(without).prompt_tokens >= 6


def test_each_request_is_encoded_once(direct: MedGemma, pipeline: MedGemma,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The context check and generation share one encoding (processor + image preprocessing):
    counted by wrapping the real encoder. The pipeline path encodes once for the count; the
    pipeline API then preprocesses its own input."""
    for model in (direct, pipeline):
        engine = model.engine
        real = engine.encode  # type: ignore[attr-defined]
        calls: list[Request] = []

        def counting(request: Request, real: object = real, calls: list[Request] = calls) -> object:
            calls.append(request)
            return real(request)  # type: ignore[operator]

        monkeypatch.setattr(engine, "encode", counting)
        answer = model.ask("Describe this X-ray", images=[XRAY], max_new_tokens=3)
        assert answer.usage.completion_tokens == 3
        assert len(calls) == 1, (engine.info.engine, len(calls))


def test_stream_yields_answer_chunks_then_a_final_answer(direct: MedGemma) -> None:
    chunks = list(direct.stream("Describe this X-ray", images=[XRAY], max_new_tokens=6))
    assert isinstance(chunks[-1], FinalChunk)
    answer = chunks[-1].answer
    assert "".join(c.text for c in chunks if isinstance(c, AnswerChunk)).strip() == answer.text
    assert answer.timings.total_s >= answer.timings.first_token_s > 0
    assert answer.model.demo and answer.label.startswith("TEST MODEL")
    assert "clinical use" in answer.caveat


def test_text_question_to_a_multimodal_model_works(direct: MedGemma) -> None:
    answer = direct.ask("How do you differentiate bacterial from viral pneumonia?", max_new_tokens=4)
    assert answer.usage.completion_tokens == 4


def test_image_to_a_text_model_is_a_clear_error(tiny_text_checkpoint: Path) -> None:
    model = MedGemma.load(tiny_text_checkpoint, options={"progress": False})
    assert not model.engine.capabilities.images
    with pytest.raises(UnsupportedInputError, match="text-only model"):
        model.ask("Describe", images=[XRAY])
    assert model.ask("Hello?", system="Be brief.", max_new_tokens=3).usage.completion_tokens == 3


def test_text_model_pipeline_matches_direct(tiny_text_checkpoint: Path) -> None:
    a = MedGemma.load(tiny_text_checkpoint, engine="hf", options={"progress": False}).ask("Why?", max_new_tokens=8)
    b = MedGemma.load(tiny_text_checkpoint, engine="hf-pipeline", options={"progress": False}).ask("Why?", max_new_tokens=8)
    assert a.raw == b.raw and a.usage == b.usage


def test_pretrained_checkpoint_gets_a_completion_prompt(tiny_pt_checkpoint: Path) -> None:
    model = MedGemma.load(tiny_pt_checkpoint, options={"progress": False})
    assert not model.chat_model
    request = model.request("findings:", images=[XRAY], system="ignored")
    assert request.template == "completion"
    ids = model.engine.encode(request)["input_ids"][0].tolist()  # type: ignore[attr-defined]
    tokenizer = model.engine.tokenizer  # type: ignore[attr-defined]
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.convert_tokens_to_ids("<start_of_turn>") not in ids  # no chat format
    assert ids.count(262144) == 4  # the image's soft tokens
    assert model.ask("findings:", images=[XRAY], max_new_tokens=3).usage.completion_tokens == 3
    pipe = MedGemma.load(tiny_pt_checkpoint, engine="hf-pipeline", options={"progress": False})
    assert pipe.ask("findings:", images=[XRAY], max_new_tokens=5).raw == model.ask(
        "findings:", images=[XRAY], max_new_tokens=5).raw


def test_checkpoint_without_template_gets_the_shipped_one(tiny_pt_checkpoint: Path) -> None:
    from medgem.request.compose import shipped_chat_template

    model = MedGemma.load(tiny_pt_checkpoint, options={"progress": False})
    assert model.engine.processor.chat_template == shipped_chat_template()  # type: ignore[attr-defined]


def test_prompt_longer_than_the_context_is_refused(direct: MedGemma) -> None:
    long_question = "pneumonia " * 3000  # the tiny model's context is 2048
    with pytest.raises(ContextLengthError, match="context is 2048"):
        direct.ask(long_question)


def test_cancel_stops_generation(direct: MedGemma) -> None:
    cancel = threading.Event()
    request = Request(
        (Message("user", (TextPart("Go on"),)),), GenerationOptions(max_new_tokens=200)
    )
    seen = 0
    final = None
    for chunk in direct.generate(request, cancel):
        if isinstance(chunk, FinalChunk):
            final = chunk.answer
        else:
            seen += 1
            cancel.set()
    assert final is not None and final.finish_reason == "cancelled"
    assert final.usage.completion_tokens < 200


def test_quantization_on_cpu_points_at_gguf(tiny_vlm_checkpoint: Path) -> None:
    with pytest.raises(EngineUnavailableError, match=r"needs a CUDA GPU.*medgem convert"):
        MedGemma.load(tiny_vlm_checkpoint, options={"quantize": "4bit", "device": "cpu", "progress": False})


def test_chat_with_openai_messages_builds_the_same_prompt_as_ask(direct: MedGemma) -> None:
    import base64
    import io

    buffer = io.BytesIO()
    XRAY.save(buffer, format="PNG")  # PNG is lossless: the decoded image equals XRAY
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    messages = [
        {"role": "system", "content": "You are an expert radiologist."},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                     {"type": "text", "text": "Describe"}]},
    ]
    via_chat = direct.chat(messages, max_new_tokens=6)
    via_ask = direct.ask("Describe", images=[XRAY], system="You are an expert radiologist.",
                         max_new_tokens=6)
    assert via_chat.usage == via_ask.usage
    assert via_chat.raw == via_ask.raw


def test_abandoning_a_stream_stops_generation(direct: MedGemma) -> None:
    import time

    request = Request((Message("user", (TextPart("Go on"),)),), GenerationOptions(max_new_tokens=2000))
    stream = direct.generate(request)
    next(stream)  # the first chunk arrives; then the caller walks away
    began = time.perf_counter()
    stream.close()  # joins the worker: without the internal cancel it would run all 2000 tokens
    assert time.perf_counter() - began < 10
    after = direct.ask("Next?", max_new_tokens=2)  # the engine serves the next request
    assert after.usage.completion_tokens == 2


def test_stop_strings_cut_the_answer_and_stop_generation(direct: MedGemma) -> None:
    full = direct.ask("Describe this X-ray", images=[XRAY], max_new_tokens=24)
    assert len(full.raw) > 12
    stop = full.raw[6:10]
    cut = direct.ask("Describe this X-ray", images=[XRAY], max_new_tokens=24, stop=[stop])
    assert cut.raw == full.raw[: full.raw.find(stop)]
    assert cut.finish_reason == "stop"
    assert cut.usage.completion_tokens < full.usage.completion_tokens
