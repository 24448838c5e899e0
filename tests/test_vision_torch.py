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
from medgem.engines.llamacpp.kernels import choose_vision  # noqa: E402
from medgem.engines.llamacpp.vision_measure import measure_vision  # noqa: E402
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
    cached = engine._vision._cache.get(key)
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


def test_choosing_the_vision_path(tmp_path: Path) -> None:
    assert choose_vision("llamacpp") == ("llamacpp", "asked for")
    assert choose_vision("torch") == ("torch", "asked for")
    with pytest.raises(InputError, match="unknown vision path 'gpu'"):
        choose_vision("gpu")
    # `medgem inspect` never measures: nothing kept means the clip
    store = tmp_path / "kernels.json"
    assert choose_vision("auto", path=store) == (
        "llamacpp", "llama.cpp's clip (the PyTorch tower is not measured here yet: "
                    "`medgem doctor --measure` measures both once)")
    assert not store.exists()


def test_auto_runs_the_vision_path_measured_here_once(converted_vlm: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """One layer of the 4B's tower at 896 px through the clip and through PyTorch (in the
    precision measured for it), kept in kernels.json; the engine under "auto" runs the kept
    choice, shown by an edited one."""
    import json

    from medgem.engines.llamacpp import kernels

    monkeypatch.setenv("MEDGEM_CACHE", str(tmp_path))
    path, why = measure_vision("auto")
    store = tmp_path / "kernels.json"
    data = json.loads(store.read_text())
    (key, entry), = [(k, v) for k, v in data.items() if k.startswith("vision|")]
    assert set(entry["times"]) == {"llamacpp", "torch"} and min(entry["times"].values()) > 0
    assert path == entry["choice"] == kernels.pick_vision(entry["times"])
    assert f"clip (f16) {entry['times']['llamacpp']:.2f} s" in why and f"({entry['torch_dtype']})" in why
    # on the way: the tower's precision and its attention at the real shape, kept as well
    assert any(k.startswith("tower-dtype|") for k in data)
    assert any(k.startswith("attention|4096x16x72|") for k in data)
    assert choose_vision("auto") == (path, why)  # read back, nothing measured
    other = "torch" if path == "llamacpp" else "llamacpp"
    data[key]["choice"] = other
    store.write_text(json.dumps(data))
    engine: Any = load_engine("llamacpp", resolve_checkpoint(converted_vlm), LlamaCppOptions())
    try:
        assert engine.vision[0] == other and "measured here once" in engine.vision[1]
        if other == "torch":
            assert engine._vision.tower.dtype == entry["torch_dtype"]
    finally:
        engine.close()


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
    from medgem.engines.llamacpp import kernels

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
    assert kernels.choose_attention(1, 1, 1, "float32", 1, path=store)[0] in names  # another shape: measured


# --- int8 (W8A8) tower, chosen by measuring it here ---------------------------------------------


def a_real_picture(size: int) -> Any:
    """A photograph, not noise: matplotlib's bundled sample (Grace Hopper's portrait, grey as
    an X-ray is), resized to the tower's input. The tower's weights stay random: this checks the
    int8 arithmetic on structured inputs, not the real MedGemma tower."""
    import matplotlib
    from PIL import Image

    sample = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    return Image.open(sample).convert("L").convert("RGB").resize((size, size))


def test_weights_pack_to_int8_per_channel_as_computed_by_hand() -> None:
    from medgem.engines.int8 import pack_int8

    packed = pack_int8(torch.tensor([[1.0, -2.0, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0], [0.1, 0.2, 0.3, 0.4]]))
    weight, bias = torch.ops.quantized.linear_unpack(packed)
    assert bias is None  # added after the rescaling, in float32
    assert weight.int_repr().tolist() == [[64, -127, 32, 0], [0, 0, 0, 0], [32, 64, 95, 127]]  # 63.5 -> 64
    assert weight.q_per_channel_scales()[0].item() == pytest.approx(2.0 / 127)


def test_int8_linear_scales_each_token_to_its_own_range() -> None:
    """Close to float32 (one rounding per operand), yet quantized; a token 1000x larger than
    the rest (one scale for the whole matrix would leave the others a few levels) costs the
    others nothing."""
    from medgem.engines.int8 import int8_linear, pack_int8

    generator = torch.Generator().manual_seed(0)
    x, w = torch.randn((64, 96), generator=generator), torch.randn((80, 96), generator=generator)
    bias = torch.randn(80, generator=generator)
    exact = x @ w.t() + bias
    ours = int8_linear(x, pack_int8(w), bias)
    error = ((ours - exact).norm() / exact.norm()).item()
    assert 1e-4 < error < 0.03, error
    x[0] *= 1000.0
    loud = int8_linear(x, pack_int8(w), bias)
    rest = ((loud[1:] - exact[1:]).norm() / exact[1:].norm()).item()
    assert rest < 0.03, rest
    first = x[:1] @ w.t() + bias
    assert ((loud[:1] - first).norm() / first.norm()).item() < 0.03


def agreement(ours: Any, reference: Any) -> tuple[float, float]:
    """(the lowest cosine similarity over soft tokens, relative L2 of the whole embedding)."""
    cosine = (ours * reference).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(reference, axis=1))
    return float(cosine.min()), float(np.linalg.norm(ours - reference) / np.linalg.norm(reference))


def test_int8_tower_agrees_with_float32_on_a_picture(converted_vlm: Path) -> None:
    """The stated bound: per soft token cosine >= 0.99 and relative L2 <= 0.05 against the
    float32 tower, on the test checkpoint's tower (1 layer, width 32: random weights, so this
    is the arithmetic's agreement, not a measurement of the real MedGemma tower)."""
    mmproj = converted_vlm / "mmproj.gguf"
    reference = TorchTower(mmproj, dtype="float32", attention="sdpa")
    tower = TorchTower(mmproj, dtype="int8", attention="sdpa")
    assert tower.dtype == "int8" and tower.compute_dtype == "float32"
    assert tower.int8_layers == 6  # q, k, v, out, fc1, fc2 of its one layer
    for image in (a_real_picture(reference.image_size), picture(1)):
        ours, theirs = tower.embed(image), reference.embed(image)
        assert ours.dtype == np.float32 and ours.shape == theirs.shape
        cosine, relative = agreement(ours, theirs)
        assert cosine >= 0.99 and relative <= 0.05, (cosine, relative)
        assert relative > 1e-5  # the int8 layers ran


def test_int8_tower_agrees_at_the_real_tower_s_width(tmp_path: Path) -> None:
    """The same bound at MedGemma's width (1152, MLP 4304, 16 heads; 2 random layers, 224 px to
    stay quick): int8 error grows with the sum length, so the tiny tower alone would not show it."""
    from medgem.engines.gguf.write import write_random_mmproj

    mmproj = write_random_mmproj(tmp_path / "mmproj.gguf", layers=2, image_size=224)
    reference = TorchTower(mmproj, dtype="float32", attention="sdpa")
    tower = TorchTower(mmproj, dtype="int8", attention="sdpa")
    assert tower.int8_layers == 12
    ours, theirs = tower.embed(a_real_picture(224)), reference.embed(a_real_picture(224))
    cosine, relative = agreement(ours, theirs)
    assert cosine >= 0.99 and relative <= 0.05, (cosine, relative)


def test_an_unknown_vision_dtype_is_refused(converted_vlm: Path) -> None:
    with pytest.raises(InputError, match="unknown vision dtype 'int4'") as caught:
        TorchTower(converted_vlm / "mmproj.gguf", dtype="int4")
    assert "float32, bfloat16, int8" in str(caught.value.hint)


def test_the_engine_answers_with_the_int8_tower(converted_vlm: Path) -> None:
    engine: Any = load_engine("llamacpp", resolve_checkpoint(converted_vlm),
                              LlamaCppOptions(vision="torch", vision_dtype="int8"))
    try:
        assert engine._vision.tower.dtype == "int8"
        events = list(engine.generate(question(picture(1))))
        final = events[-1]
        assert isinstance(final, Finished) and final.extra["vision_s"] > 0
        assert "".join(e.text for e in events if isinstance(e, TextDelta))
    finally:
        engine.close()


def test_the_tower_s_precision_is_measured_once_and_kept(converted_vlm: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """No dtype given: the tower runs what ``choose_tower_dtype`` measured at the tower's linear
    shape (int8 against float32 here, bfloat16 too where native) and kept in kernels.json."""
    import json

    from medgem.engines.llamacpp import kernels
    from medgem.hardware import cpu_has_native_bf16

    monkeypatch.setenv("MEDGEM_CACHE", str(tmp_path))
    tower = TorchTower(converted_vlm / "mmproj.gguf")
    expected = {"float32", "int8", *(["bfloat16"] if cpu_has_native_bf16() else [])}
    assert set(tower.dtype_times) == expected
    assert tower.dtype == kernels.pick_tower_dtype(tower.dtype_times)
    store = tmp_path / "kernels.json"
    data = json.loads(store.read_text())
    key = next(k for k in data if k.startswith("tower-dtype|"))
    assert data[key]["choice"] == tower.dtype
    data[key]["choice"] = "float32" if tower.dtype == "int8" else "int8"  # edited in: read back
    store.write_text(json.dumps(data))
    again = TorchTower(converted_vlm / "mmproj.gguf")
    assert again.dtype == data[key]["choice"] and again.int8_layers == (6 if again.dtype == "int8" else 0)
