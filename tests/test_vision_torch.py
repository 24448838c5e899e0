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
from medgem.engines.llamacpp.vision_torch import TorchTower, choose_vision  # noqa: E402
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
