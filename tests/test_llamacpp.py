"""The llama.cpp engine against transformers, on real weights and on converted tiny checkpoints.

Nothing is mocked: llama.cpp runs the GGUF files, transformers runs the same weights.
"""

from __future__ import annotations

import json
import shutil
import struct
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import run_cli

pytest.importorskip("llama_cpp")
# llama.cpp runs in this process below: only after a child process has shown it works here.
pytestmark = pytest.mark.usefixtures("llamacpp_runs")
torch = pytest.importorskip("torch")

from medgem.config import load_settings  # noqa: E402
from medgem.engines import LlamaCppOptions, load_engine  # noqa: E402
from medgem.engines.base import Finished, TextDelta  # noqa: E402
from medgem.errors import NotACheckpointError, UnsupportedInputError  # noqa: E402
from medgem.request import GenerationOptions, ImagePart, Message, Request, TextPart  # noqa: E402
from medgem.resolve import resolve_checkpoint  # noqa: E402

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Pneumonia is an infection that"]
QUESTION = "Describe this X-ray."


def completion(text: str, tokens: int) -> Request:
    return Request((Message("user", (TextPart(text),)),), GenerationOptions(max_new_tokens=tokens),
                   template="completion")


def image_question(image: Any, tokens: int, *follow_up: str) -> Request:
    messages = [Message("user", (ImagePart(image), TextPart(QUESTION)))]
    for text in follow_up:
        messages += [Message("assistant", (TextPart("It is an image."),)),
                     Message("user", (TextPart(text),))]
    return Request(tuple(messages), GenerationOptions(max_new_tokens=tokens))


def noise_image(size: int, seed: int = 0) -> Any:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def gguf_270m() -> Path:
    from medgem.demo.build import demo_gguf_path

    return demo_gguf_path()


@pytest.fixture(scope="module")
def engine_270m(gguf_270m: Path) -> Any:
    engine = load_engine("llamacpp", resolve_checkpoint(gguf_270m), LlamaCppOptions(n_ctx=2048))
    yield engine
    engine.close()


# --- real weights: Gemma 3 270M (Q4_K_M) -------------------------------------------------------


@pytest.mark.slow
def test_greedy_tokens_match_transformers_on_real_270m(reference_270m: Path, engine_270m: Any) -> None:
    """Same GGUF, both engines, greedy: identical tokens.

    The bound: of 32 greedy tokens per prompt, every prompt agrees on at least the first 8, and
    where a prompt's tokens part, it is at a near tie (transformers'
    logits for the two candidates within 0.5 of each other). The reason: llama.cpp rounds
    activations to 8 bits inside quantized matmuls and picks kernels by batch size, while
    transformers dequantizes the same weights to float32, so near-equal candidates can swap.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # The GGUF's tokenizer and weights as transformers reads them, saved once (conftest).
    tokenizer = AutoTokenizer.from_pretrained(str(reference_270m))
    model = AutoModelForCausalLM.from_pretrained(str(reference_270m), dtype=torch.float32).eval()
    splits: list[int | None] = []
    for prompt in PROMPTS:
        ids = tokenizer("<bos>" + prompt, add_special_tokens=False, return_tensors="pt").input_ids
        assert engine_270m.tokenize("<bos>" + prompt) == ids[0].tolist()
        with torch.inference_mode():
            reference = model.generate(ids, max_new_tokens=32, do_sample=False, top_k=None,
                                       top_p=None)[0, ids.shape[1]:].tolist()
        events = list(engine_270m.generate(completion(prompt, 32)))
        ours = engine_270m.last_tokens
        assert isinstance(events[-1], Finished) and len(ours) == 32
        split = next((i for i, (a, b) in enumerate(zip(ours, reference, strict=True)) if a != b), None)
        if split is not None:
            context = torch.tensor([ids[0].tolist() + reference[:split]])
            with torch.inference_mode():
                logits = model(context).logits[0, -1]
            gap = float(logits[reference[split]] - logits[ours[split]])
            assert split >= 8 and 0 <= gap < 0.5, (prompt, split, gap)
        splits.append(split)
    assert len(splits) == len(PROMPTS)


def test_streams_text_usage_and_timings(engine_270m: Any) -> None:
    events = list(engine_270m.generate(completion("The capital of France is", 6)))
    deltas = [e for e in events if isinstance(e, TextDelta)]
    final = events[-1]
    assert isinstance(final, Finished) and len(deltas) >= 3
    assert final.finish_reason == "length"
    assert final.usage.prompt_tokens == len(engine_270m.tokenize("<bos>The capital of France is"))
    assert final.usage.completion_tokens == 6
    assert 0 < final.timings.first_token_s <= final.timings.total_s
    prepared = engine_270m.prepare(completion("The capital of France is", 6))
    prepared.release()
    assert prepared.prompt_tokens == 6
    assert engine_270m.info.engine == "llamacpp" and engine_270m.info.quantization == "q4_k_m"


def test_repeated_prompt_reuses_the_cache(engine_270m: Any) -> None:
    request = completion("Pneumonia is an infection that", 4)
    first = list(engine_270m.generate(request))
    again = list(engine_270m.generate(request))
    prompt_tokens = first[-1].usage.prompt_tokens
    assert again[-1].extra["reused_prompt_tokens"] == prompt_tokens - 1
    assert [e.text for e in first[:-1]] == [e.text for e in again[:-1]]
    other = list(engine_270m.generate(completion("Pneumonia is an illness", 4)))
    assert other[-1].extra["reused_prompt_tokens"] < prompt_tokens - 1


def test_cancel_stops_generation(engine_270m: Any) -> None:
    cancel = threading.Event()
    events = []
    for event in engine_270m.generate(completion("Once upon a time", 200), cancel):
        events.append(event)
        if len(events) == 3:
            cancel.set()
    final = events[-1]
    assert isinstance(final, Finished) and final.finish_reason == "cancelled"
    assert final.usage.completion_tokens <= 5


def test_sampling_goes_through_llama_cpp_s_sampler_chain(engine_270m: Any) -> None:
    """Seeded draws repeat; different seeds part; top-p that keeps one token is greedy."""

    def tokens(settings: GenerationOptions) -> list[int]:
        request = Request((Message("user", (TextPart("Once upon a time"),)),), settings,
                          template="completion")
        list(engine_270m.generate(request))
        return list(engine_270m.last_tokens)

    greedy = tokens(GenerationOptions(max_new_tokens=12))
    hot = [tokens(GenerationOptions(max_new_tokens=12, temperature=1.5, seed=seed))
           for seed in (1, 1, 2, 3)]
    assert hot[0] == hot[1]
    assert len({tuple(run) for run in hot}) >= 2  # 3 seeds at temperature 1.5 do not all agree
    narrow = GenerationOptions(max_new_tokens=12, temperature=1.5, top_p=1e-6, seed=4)
    assert tokens(narrow) == greedy


def test_thinking_markers_come_out_as_text(engine_270m: Any) -> None:
    """Gemma's <unused94>/<unused95> are control tokens; llama.cpp drops those by default."""
    for marker in ("<unused94>", "<unused95>"):
        (token,) = engine_270m.tokenize(marker)
        assert engine_270m._piece(token) == marker.encode()
    (end_of_turn,) = engine_270m.tokenize("<end_of_turn>")
    assert engine_270m._piece(end_of_turn) == b""


def test_chat_template_is_shipped_when_the_gguf_has_none(engine_270m: Any) -> None:
    request = Request((Message("system", (TextPart("Be brief."),)),
                       Message("user", (TextPart("Hi"),))), GenerationOptions(max_new_tokens=2))
    assert engine_270m.render(request) == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n")


# --- converted tiny multimodal checkpoint -------------------------------------------------------


def test_image_answer_matches_transformers_greedy(tiny_vlm_checkpoint: Path, converted_vlm: Path) -> None:
    """`medgem convert --quant f16` of the float32 tiny checkpoint: transformers runs the float32
    weights, llama.cpp the same weights rounded to f16. The bound is strict: the prompt tokens
    match exactly (image soft tokens at the same positions, framed by blank lines as
    Gemma3Processor frames them) and all 16 greedy answer tokens are equal.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(str(tiny_vlm_checkpoint))
    model = AutoModelForImageTextToText.from_pretrained(str(tiny_vlm_checkpoint),
                                                        dtype=torch.float32).eval()
    image = noise_image(processor.image_processor.size["height"])
    messages = [{"role": "user", "content": [{"type": "image", "image": image},
                                             {"type": "text", "text": QUESTION}]}]
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                           return_dict=True, return_tensors="pt")
    with torch.inference_mode():
        reference = model.generate(**inputs, max_new_tokens=16, do_sample=False, top_k=None,
                                   top_p=None)[0, inputs["input_ids"].shape[1]:].tolist()
    # the clip, whatever "auto" measured here (an int8 PyTorch tower is not bit-close to float32)
    engine = load_engine("llamacpp", resolve_checkpoint(converted_vlm), LlamaCppOptions(vision="llamacpp"))
    try:
        events = list(engine.generate(image_question(image, 16)))
        image_id = processor.tokenizer.convert_tokens_to_ids("<image_soft_token>")
        expected_prompt = [-1 if t == image_id else t for t in inputs["input_ids"][0].tolist()]
        assert engine.last_prompt_tokens == expected_prompt
        assert engine.last_tokens == reference
        assert events[-1].extra["vision_s"] > 0
        assert engine.info.demo  # the random-weight label survives conversion
    finally:
        engine.close()


def test_follow_up_on_the_same_image_skips_the_vision_pass(converted_vlm: Path) -> None:
    engine = load_engine("llamacpp", resolve_checkpoint(converted_vlm), LlamaCppOptions())
    try:
        image = noise_image(64, seed=1)
        first = list(engine.generate(image_question(image, 4)))[-1]
        follow = list(engine.generate(image_question(image, 4, "Is it normal?")))[-1]
        assert isinstance(first, Finished) and isinstance(follow, Finished)
        assert first.extra["vision_s"] > 0
        assert follow.extra["vision_s"] == 0.0
        assert follow.extra["reused_prompt_tokens"] >= first.usage.prompt_tokens
        other = list(engine.generate(image_question(noise_image(64, seed=2), 4, "Is it normal?")))[-1]
        assert other.extra["vision_s"] > 0  # a different image is encoded again
    finally:
        engine.close()


def test_an_image_seen_before_is_not_encoded_again_in_another_conversation(converted_vlm: Path) -> None:
    """The embedding cache: a new question about the same pixels (a fresh conversation, its
    cache prefix gone) skips the vision tower and gives the answer a fresh engine gives."""
    engine = load_engine("llamacpp", resolve_checkpoint(converted_vlm), LlamaCppOptions())
    fresh = load_engine("llamacpp", resolve_checkpoint(converted_vlm), LlamaCppOptions())
    try:
        image = noise_image(64, seed=3)
        first = list(engine.generate(image_question(image, 4)))[-1]
        list(engine.generate(image_question(noise_image(64, seed=4), 4)))  # the KV prefix moves on
        system = Request((Message("system", (TextPart("You are a radiologist."),)),
                          *image_question(image, 6).messages), GenerationOptions(max_new_tokens=6))
        again = list(engine.generate(system))
        assert isinstance(first, Finished) and first.extra["images_cached"] == 0
        final = again[-1]
        assert isinstance(final, Finished) and final.extra["images_cached"] == 1
        assert final.extra["vision_s"] == 0.0 and final.extra["reused_prompt_tokens"] < 5
        reference = list(fresh.generate(system))
        assert [e for e in again if isinstance(e, TextDelta)] == [
            e for e in reference if isinstance(e, TextDelta)]
    finally:
        engine.close()
        fresh.close()


def test_the_embedding_cache_on_disk_serves_the_next_process(converted_vlm: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """embed_cache_dir (MEDGEM_EMBED_CACHE_DIR): an engine loaded later (as the next `medgem ask` would be) skips
    the tower for pixels an earlier one encoded and answers the same; another tower (PyTorch)
    keeps its own files."""
    monkeypatch.setenv("MEDGEM_EMBED_CACHE_DIR", str(tmp_path / "embeddings"))
    cache = {**load_settings().engine_fields("llamacpp"), "vision": "llamacpp"}  # not what auto measured
    image = noise_image(64, seed=5)
    answers = []
    for _ in range(2):
        engine = load_engine("llamacpp", resolve_checkpoint(converted_vlm), cache)
        try:
            events = list(engine.generate(image_question(image, 5)))
        finally:
            engine.close()
        answers.append(events)
    first, second = answers[0][-1], answers[1][-1]
    assert isinstance(first, Finished) and first.extra["images_cached"] == 0
    assert isinstance(second, Finished) and second.extra["images_cached"] == 1
    assert second.extra["vision_s"] == 0.0
    assert [e for e in answers[0] if isinstance(e, TextDelta)] == [
        e for e in answers[1] if isinstance(e, TextDelta)]
    stored = list((tmp_path / "embeddings").rglob("*.f32"))
    assert len(stored) == 1 and stored[0].stat().st_size > 0
    pytest.importorskip("torch")
    torch_engine = load_engine("llamacpp", resolve_checkpoint(converted_vlm), {**cache, "vision": "torch"})
    try:
        final = list(torch_engine.generate(image_question(image, 5)))[-1]
    finally:
        torch_engine.close()
    assert isinstance(final, Finished) and final.extra["images_cached"] == 0
    assert len(list((tmp_path / "embeddings").rglob("*.f32"))) == 2


def test_each_request_is_tokenized_once_and_freed(converted_vlm: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Through MedGemma: libmtmd tokenizes (and hashes the image) once for the context check
    and generation together; a prompt refused by the context check frees its chunks."""
    from medgem import MedGemma
    from medgem.errors import ContextLengthError

    model = MedGemma.load(converted_vlm, options={"n_ctx": 512})
    try:
        engine: Any = model.engine
        built: list[Any] = []
        real = engine._prompts.build

        def counting(request: Any) -> Any:
            built.append(real(request))
            return built[-1]

        monkeypatch.setattr(engine._prompts, "build", counting)
        answer = model.ask(QUESTION, images=[noise_image(64, seed=3)], max_new_tokens=3)
        assert answer.usage.completion_tokens == 3 and len(built) == 1
        assert built[0].chunks is None  # freed after generation
        with pytest.raises(ContextLengthError):
            model.ask("word " * 600, images=[noise_image(64, seed=4)], max_new_tokens=3)
        assert len(built) == 2 and built[1].chunks is None  # refused, and still freed
    finally:
        model.close()


# --- bad input ----------------------------------------------------------------------------------


def _write_llama_gguf(path: Path) -> Path:
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_uint32("llama.block_count", 1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_gguf_that_is_not_gemma3_is_refused(tmp_path: Path) -> None:
    path = _write_llama_gguf(tmp_path / "llama.gguf")
    with pytest.raises(NotACheckpointError, match="'llama' GGUF, not MedGemma"):
        load_engine("llamacpp", resolve_checkpoint(path), LlamaCppOptions())


def test_corrupt_and_truncated_files_are_refused(tmp_path: Path, converted_vlm: Path) -> None:
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a model at all" * 100)
    with pytest.raises(NotACheckpointError, match="not a readable GGUF"):
        load_engine("llamacpp", resolve_checkpoint(junk), LlamaCppOptions())
    truncated = tmp_path / "truncated.gguf"
    data = (converted_vlm / "model.gguf").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(NotACheckpointError, match="corrupt"):
        load_engine("llamacpp", resolve_checkpoint(truncated), LlamaCppOptions())
    header_only = tmp_path / "header.gguf"
    header_only.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 10**6, 5))
    with pytest.raises(NotACheckpointError, match="not a readable GGUF"):
        load_engine("llamacpp", resolve_checkpoint(header_only), LlamaCppOptions())


def test_an_mmproj_from_another_model_is_refused(converted_vlm: Path, tmp_path: Path) -> None:
    from medgem.demo.build import Shape, build_checkpoint
    from medgem.engines.gguf.convert import convert_checkpoint

    wider = build_checkpoint(tmp_path / "wider", shape=Shape(hidden=96, head_dim=48))
    other = convert_checkpoint(wider, "f16", tmp_path / "wider-gguf", verify=None)
    assert other.mmproj is not None
    checkpoint = resolve_checkpoint(converted_vlm / "model.gguf", mmproj=other.mmproj)
    with pytest.raises(NotACheckpointError, match="96-wide embeddings but the model's are 64-wide"):
        load_engine("llamacpp", checkpoint, LlamaCppOptions())
    as_projector = resolve_checkpoint(converted_vlm / "model.gguf", mmproj=converted_vlm / "model.gguf")
    with pytest.raises(NotACheckpointError, match="not a vision projector"):
        load_engine("llamacpp", as_projector, LlamaCppOptions())


def test_an_image_to_a_gguf_without_mmproj_is_refused(engine_270m: Any) -> None:
    with pytest.raises(UnsupportedInputError, match="--mmproj"):
        list(engine_270m.generate(image_question(noise_image(64), 2)))
    assert not engine_270m.capabilities.images


# --- the CLI, as users run it -------------------------------------------------------------------


def test_cli_asks_about_an_image_with_the_converted_pair(converted_vlm: Path, tmp_path: Path) -> None:
    image = tmp_path / "xray.png"
    noise_image(64).save(image)
    result = run_cli("ask", "--model", str(converted_vlm), "--image", str(image),
                     "--max-new-tokens", "5", "--json", QUESTION)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["model"]["engine"] == "llamacpp"
    assert answer["usage"]["completion_tokens"] == 5


def test_cli_image_question_on_avx2_only_kernels(converted_vlm: Path, tmp_path: Path) -> None:
    """What an AVX2-only CPU runs (the haswell backend, forced here), end to end: the same
    greedy answer as the best backend for this CPU on the f16 tiny model."""
    image = tmp_path / "xray.png"
    noise_image(64, seed=5).save(image)
    answers = []
    for variant in ("haswell", ""):
        result = run_cli("ask", "--model", str(converted_vlm), "--image", str(image),
                         "--max-new-tokens", "6", "--json", QUESTION,
                         env={"MEDGEM_LLAMA_CPU_VARIANT": variant})
        assert result.returncode == 0, result.stderr
        answers.append(json.loads(result.stdout))
    assert answers[0]["usage"] == answers[1]["usage"]
    assert answers[0]["answer"] == answers[1]["answer"]


def test_cli_reports_an_image_to_a_text_only_gguf_in_one_line(gguf_270m: Path, tmp_path: Path) -> None:
    image = tmp_path / "photo.png"
    noise_image(64).save(image)
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(gguf_270m, alone / "model.gguf")
    result = run_cli("ask", "--model", str(alone / "model.gguf"), "--image", str(image), "Hi")
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    # refused from the GGUF's own files before any weight loads: the one error line, nothing else
    # (no model answered, so there is no output to label)
    assert len(lines) == 1, lines
    assert lines[0].startswith("medgem: error:") and "text-only model" in lines[0]
    assert "image" in lines[0]
    assert "Traceback" not in result.stderr
