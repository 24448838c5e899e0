"""The vision tower in PyTorch for the llama.cpp engine, against llama.cpp's own clip.

Real files only: the tiny VLM converted with `medgem convert`, its mmproj read into transformers
modules, llama.cpp running the text model (and its clip for the comparison).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import run_cli

pytest.importorskip("llama_cpp")
torch = pytest.importorskip("torch")
pytestmark = pytest.mark.usefixtures("llamacpp_runs")

from medgem.engines import LlamaCppOptions, load_engine  # noqa: E402
from medgem.engines.base import Finished, TextDelta  # noqa: E402
from medgem.engines.llamacpp.speeds import choose_vision  # noqa: E402
from medgem.engines.llamacpp.vision_torch import TorchTower  # noqa: E402
from medgem.errors import InputError  # noqa: E402
from medgem.request import GenerationOptions, ImagePart, Message, Request, TextPart  # noqa: E402
from medgem.resolve import resolve_checkpoint  # noqa: E402


def picture(seed: int) -> Any:
    from PIL import Image

    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8))


def question(image: Any, tokens: int = 8) -> Request:
    return Request((Message("user", (ImagePart(image), TextPart("Describe this X-ray."))),),
                   GenerationOptions(max_new_tokens=tokens))


def clip_embeddings(engine: Any, image: Any) -> Any:
    """What llama.cpp's clip gives for ``image`` (read from the engine's embedding cache)."""
    prepared = engine.prepare(question(image, 1))
    key = next(str(u.key) for u in prepared.state.units if isinstance(u.key, str))
    list(engine.generate(prepared))
    cached = engine._embeddings.get(key)
    return np.ctypeslib.as_array(cached).reshape(-1, engine._embd).copy()


def test_torch_tower_gives_llama_cpp_s_embeddings(converted_vlm: Path) -> None:
    """float32 PyTorch against llama.cpp's f16 clip: within 1e-3 relative (f16 weights)."""
    tower = TorchTower(converted_vlm / "mmproj.gguf", dtype="float32")
    engine = load_engine("llamacpp", resolve_checkpoint(converted_vlm), LlamaCppOptions(vision="llamacpp"))
    try:
        for seed in (1, 2):
            ours = tower.embed(picture(seed))
            theirs = clip_embeddings(engine, picture(seed))
            assert ours.shape == theirs.shape == (tower.tokens, engine._embd)
            assert np.linalg.norm(ours - theirs) / np.linalg.norm(theirs) < 1e-3
        # different pictures give different soft tokens (the projection is not null)
        assert np.abs(tower.embed(picture(1)) - tower.embed(picture(2))).max() > 0.1
    finally:
        engine.close()


def test_greedy_answers_agree_between_the_two_vision_paths(converted_vlm: Path) -> None:
    checkpoint = resolve_checkpoint(converted_vlm)
    answers = {}
    for path in ("llamacpp", "torch"):
        engine = load_engine("llamacpp", checkpoint, LlamaCppOptions(vision=path))
        try:
            assert engine.vision[0] == path  # type: ignore[attr-defined]
            for seed in (1, 2, 3):
                events = list(engine.generate(question(picture(seed))))
                final = events[-1]
                assert isinstance(final, Finished) and final.extra["vision_s"] > 0
                answers[path, seed] = "".join(e.text for e in events if isinstance(e, TextDelta))
        finally:
            engine.close()
    assert all(answers["llamacpp", s] == answers["torch", s] for s in (1, 2, 3)), answers


def test_choosing_the_vision_path() -> None:
    assert choose_vision("llamacpp") == ("llamacpp", "asked for")
    assert choose_vision("torch") == ("torch", "asked for")
    path, why = choose_vision("auto")
    assert path == "llamacpp" and "clip" in why  # what bench_vision.py measured as fastest
    with pytest.raises(InputError, match="unknown vision path 'gpu'"):
        choose_vision("gpu")


def test_vision_flag_is_refused_under_transformers(tiny_vlm_checkpoint: Path) -> None:
    result = run_cli("ask", "hi", "--model", str(tiny_vlm_checkpoint), "--engine", "hf",
                     "--vision", "torch", "--no-audit")
    assert result.returncode == 1 and "--vision does not apply to the hf engine" in result.stderr


def test_cli_answers_with_the_torch_tower(converted_vlm: Path, tmp_path: Path) -> None:
    image = tmp_path / "x.png"
    picture(5).save(image)
    outs = [run_cli("ask", "Describe this X-ray.", "--model", str(converted_vlm), "--image", str(image),
                    "--vision", path, "--max-new-tokens", "6", "--no-audit", "--json")
            for path in ("llamacpp", "torch")]
    assert all(out.returncode == 0 for out in outs), [o.stderr for o in outs]
    import json

    first, second = (json.loads(out.stdout) for out in outs)
    assert first["answer"] == second["answer"]


# --- attention as blocked GEMMs, chosen by measuring it here --------------------------------


@pytest.mark.parametrize("choice", ["blocked-q32-kvall", "blocked-q7-kvall", "blocked-q16-kv40",
                                    "blocked-q64-kv1024"])
def test_blocked_attention_is_sdpa_in_float32(choice: str) -> None:
    """Uneven blocks (7 rows, 40 keys: the last block short) and the flash-style running max/sum
    give SDPA's result to float32 rounding (2e-5: a few ulps of the largest values)."""
    from medgem.engines.attention import run_attention, sdpa

    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn((1, 3, 100, 24), generator=generator) * 2 for _ in range(3))
    reference = sdpa(q, k, v, 24 ** -0.5)
    ours = run_attention(choice, q, k, v, 24 ** -0.5)
    assert ours.shape == reference.shape and ours.dtype == torch.float32
    assert (ours - reference).abs().max().item() < 2e-5  # values up to ~6, logits up to ~15
    # not the identity and not a copy of V: attention mixed the rows
    assert (ours - v).abs().max().item() > 0.5


def test_blocked_attention_in_bf16_is_as_close_to_float32_as_sdpa_is() -> None:
    """In bf16 neither kernel is exact; the stated bound: blocked's error against float32 attention
    is at most 1.5x SDPA's own (measured here: 1.04x; with bf16 scores it was 2.0x)."""
    from medgem.engines.attention import CANDIDATES, blocked_attention, sdpa

    generator = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn((1, 4, 256, 72), generator=generator) * 2 for _ in range(3))
    exact = sdpa(q, k, v, 72 ** -0.5)
    half = [t.to(torch.bfloat16) for t in (q, k, v)]
    sdpa_error = (sdpa(*half, 72 ** -0.5).float() - exact).norm() / exact.norm()
    for blocking in CANDIDATES:
        ours = blocked_attention(*half, 72 ** -0.5, blocking)
        assert ours.dtype == torch.bfloat16
        error = (ours.float() - exact).norm() / exact.norm()
        assert error < 1.5 * sdpa_error + 1e-4, (blocking, float(error), float(sdpa_error))


def test_tower_embeddings_match_the_sdpa_reference(converted_vlm: Path) -> None:
    """The whole tower + projector on the tiny real checkpoint: every blocked attention gives the
    SDPA tower's image embeddings within 1e-5 relative in float32; in bf16 within 1.5x of SDPA-bf16's
    own distance from float32 (plus 1e-3 relative)."""
    from medgem.engines.attention import CANDIDATES

    mmproj = converted_vlm / "mmproj.gguf"
    images = [picture(1), picture(2)]
    reference = TorchTower(mmproj, dtype="float32", attention="sdpa")
    exact = [reference.embed(image) for image in images]
    reference_bf16 = TorchTower(mmproj, dtype="bfloat16", attention="sdpa")
    for blocking in CANDIDATES:
        tower = TorchTower(mmproj, dtype="float32", attention=blocking.name)
        assert tower.attention == blocking.name
        for image, theirs in zip(images, exact, strict=True):
            ours = tower.embed(image)
            assert np.linalg.norm(ours - theirs) / np.linalg.norm(theirs) < 1e-5
        tower_bf16 = TorchTower(mmproj, dtype="bfloat16", attention=blocking.name)
        for image, theirs in zip(images, exact, strict=True):
            sdpa_error = np.linalg.norm(reference_bf16.embed(image) - theirs) / np.linalg.norm(theirs)
            ours_error = np.linalg.norm(tower_bf16.embed(image) - theirs) / np.linalg.norm(theirs)
            assert ours_error < 1.5 * sdpa_error + 1e-3, (blocking, ours_error, sdpa_error)


def test_the_tower_s_attention_is_measured_once_and_kept(
        converted_vlm: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medgem.engines.attention import CANDIDATES
    from medgem.engines.llamacpp import speeds

    monkeypatch.setenv("MEDGEM_CACHE", str(tmp_path))
    tower = TorchTower(converted_vlm / "mmproj.gguf", dtype="float32")
    names = {"sdpa", *(c.name for c in CANDIDATES)}
    assert set(tower.attention_times) == names  # every candidate timed at the tower's shape
    assert tower.attention == min(tower.attention_times, key=tower.attention_times.__getitem__)
    store = tmp_path / "kernels.json"
    import json

    data = json.loads(store.read_text())
    (key, entry), = data.items()
    assert key.startswith("attention|") and "float32" in key and entry["choice"] == tower.attention
    # the next tower reads the kept choice instead of measuring: shown by a choice edited in
    other = sorted(names - {tower.attention})[0]
    entry["choice"] = other
    store.write_text(json.dumps(data))
    again = TorchTower(converted_vlm / "mmproj.gguf", dtype="float32")
    assert again.attention == other
    assert speeds.choose_attention(1, 1, 1, "float32", 1, path=store)[0] in names  # another shape: measured
