"""A CT volume larger than llama.cpp's default context (8,192 tokens; 85 slices of MedGemma 1.5
take ~22,500): `medgem ask` sizes a one-shot load's context to the question, and where the
context is set too small the refusal says which --n-ctx holds it.

A tiny random-weight Gemma 3 with MedGemma's own image geometry (896 px, 256 soft tokens a
slice) and a 32k window, through `medgem convert` as a user runs it, asked about a real CT
series of DICOM files: the real llama.cpp engine, the real prompt, the real token counts.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

import built_assets
from conftest import run_cli
from imaging_fixtures import write_ct_series

SLICES = 40  # 40 x ~264 tokens: past 8,192, far under the 32k window


@pytest.fixture(scope="module")
def long_window_gguf(gemma3_base: Path) -> Path:
    from medgem.demo.build import Shape, build_checkpoint

    shape = Shape(context=32768, image_size=896, patch_size=14, mm_tokens=256)
    checkpoint = built_assets.built(
        "long-window-vlm", built_assets.CHECKPOINT_SOURCES, repr(shape),
        lambda out: build_checkpoint(out / "vlm", shape=shape, model_id="medgem-test-long-window"),
    ) / "vlm"

    def convert(folder: Path) -> None:
        result = run_cli("convert", str(checkpoint), "--quant", "f16", "--out", str(folder / "gguf"))
        assert result.returncode == 0, result.stderr

    return built_assets.built("long-window-gguf", built_assets.GGUF_SOURCES, str(checkpoint),
                              convert) / "gguf" / "model.gguf"


@pytest.fixture(scope="module")
def ct_series(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ct") / "series"
    volume = np.random.default_rng(3).integers(-1000, 1200, size=(SLICES, 32, 32))
    write_ct_series(folder, volume, phi=False)
    return folder


def _ask(model: Path, series: Path, *extra: str) -> object:
    return run_cli("ask", "Describe the findings.", "--image", str(series), "--model", str(model),
                   "--no-audit", "--no-server", "--max-new-tokens", "2", *extra)


@pytest.mark.usefixtures("llamacpp_runs")
def test_a_volume_past_the_default_context_is_answered_with_a_context_sized_to_it(
    long_window_gguf: Path, ct_series: Path,
) -> None:
    result = _ask(long_window_gguf, ct_series, "--json")
    assert result.returncode == 0, result.stderr  # type: ignore[attr-defined]
    said = re.search(r"medgem: (\d+) images need about ([\d,]+) tokens with the answer: llama\.cpp's "
                     r"context is ([\d,]+) for this question, not 8,192 \(--n-ctx sets it\)",
                     result.stderr)  # type: ignore[attr-defined]
    assert said, result.stderr  # type: ignore[attr-defined]
    size = int(said.group(3).replace(",", ""))
    answer = json.loads(result.stdout)  # type: ignore[attr-defined]
    prompt = answer["usage"]["prompt_tokens"]
    assert int(said.group(1)) == SLICES
    assert 8192 < prompt < size <= 32768 and size % 1024 == 0  # what it took, and what it held
    assert size - prompt < 4096  # sized to the question, not to the model's whole window

    # the volume's prefill is kept as this model's long one, with the keys its timed tokens
    # attended at the positions they sat at (the few untimed text pieces between slices push
    # the later ones on: more than from position 0, less than the whole prompt's)
    from medgem.engines.llamacpp import speeds

    ident = f"{long_window_gguf.name}:{long_window_gguf.stat().st_size}|"
    kept = [found for key in speeds.measured_keys() if key.startswith(ident)
            and (found := speeds.lookup(key)) is not None and found.long_prefill is not None]
    assert len(kept) == 1, speeds.measured_keys()
    long = kept[0].long_prefill
    assert long is not None and long.window == 64
    assert SLICES * 256 <= long.tokens <= prompt  # every slice's soft tokens were timed
    assert long.seconds > 0
    assert speeds.attention_work(0, long.tokens, 64) <= long.work <= speeds.attention_work(0, prompt, 64)

    # `medgem inspect` says the same before anything loads, and its count is the prompt's
    looked = run_cli("inspect", str(ct_series), "--model", str(long_window_gguf), "--json")
    assert looked.returncode == 0, looked.stderr
    estimate = json.loads(looked.stdout)["first_token"]
    assert f"slower as the prompt grows, as a {long.tokens:,}-token prompt ran here" in estimate["text"]
    assert abs(estimate["prompt_tokens"] - prompt) <= 0.03 * prompt, (estimate, prompt)
    assert estimate["n_ctx"] >= prompt and estimate["n_ctx"] % 1024 == 0
    assert estimate["context_text"].endswith(
        f"past llama.cpp's default context of 8,192; `medgem ask` sizes it to the question, a server "
        f"or Python load needs --n-ctx {estimate['n_ctx']} (options={{'n_ctx': {estimate['n_ctx']}}})")


@pytest.mark.usefixtures("llamacpp_runs")
def test_a_context_set_too_small_is_refused_with_the_n_ctx_that_holds_the_volume(
    long_window_gguf: Path, ct_series: Path,
) -> None:
    result = _ask(long_window_gguf, ct_series, "--n-ctx", "8192")
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if "error:" in line]  # type: ignore[attr-defined]
    assert len(lines) == 1, result.stderr  # type: ignore[attr-defined]
    line = lines[0]
    assert "this engine holds a context of 8192" in line and "the model holds up to 32768" in line, line
    assert "llama.cpp's context is" not in result.stderr  # type: ignore[attr-defined]  # the flag stands
    size = int(re.search(r"--n-ctx (\d+) \(medgem ask, medgem serve\)", line).group(1))  # type: ignore[union-attr]
    assert f"options={{'n_ctx': {size}}} in Python" in line
    again = _ask(long_window_gguf, ct_series, "--n-ctx", str(size))  # the advice works
    assert again.returncode == 0, again.stderr  # type: ignore[attr-defined]


def test_series_without_an_image_or_study_is_refused_not_ignored(long_window_gguf: Path,
                                                                 ct_series: Path) -> None:
    """`--series FOLDER` alone used to answer the question with no image at all."""
    result = run_cli("ask", "Describe the findings.", "--series", str(ct_series), "--model",
                     str(long_window_gguf), "--no-audit", "--no-server")
    assert result.returncode != 0
    lines = [line for line in result.stderr.strip().splitlines() if "error:" in line]
    assert len(lines) == 1, result.stderr
    assert "--series" in lines[0] and f"give the folder as --image {ct_series}" in lines[0], lines[0]
