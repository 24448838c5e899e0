"""Speeds measured on this machine, recorded by the llama.cpp engine and read back to estimate a
volume's time to first token before anything runs (`medgem inspect --model`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from medgem.engines.llamacpp import speeds


def test_figures_are_the_median_of_the_last_runs(tmp_path: Path) -> None:
    store = tmp_path / "speeds.json"
    for value in (10.0, 1.0, 2.0, 3.0, 4.0, 5.0):  # the first falls out (five kept)
        speeds.record("k", vision_s_per_image=value, path=store)
    speeds.record("k", prefill_tokens_per_s=80.0, path=store)
    measured = speeds.lookup("k", store)
    assert measured is not None
    assert measured.vision_s_per_image == 3.0
    assert measured.prefill_tokens_per_s == 80.0
    assert speeds.lookup("other", store) is None
    # 85 slices of 256 soft tokens and 64 text tokens: 85 x 3 s in the tower, 21,824 tokens at 80/s
    assert measured.first_token_s(85, 256, 64) == pytest.approx(85 * 3.0 + (85 * 256 + 64) / 80.0)


def test_the_estimate_s_range_runs_from_the_fastest_kept_figures_to_the_slowest(tmp_path: Path) -> None:
    """One run gives no range (a point of a spread); from two on, low and high take the fastest
    tower with the fastest prefill and the slowest with the slowest."""
    store = tmp_path / "speeds.json"
    speeds.record("k", vision_s_per_image=3.0, prefill_tokens_per_s=100.0, path=store)
    single = speeds.lookup("k", store)
    assert single is not None and single.first_token_range(4, 256, 64) is None
    speeds.record("k", vision_s_per_image=2.0, prefill_tokens_per_s=80.0, path=store)
    speeds.record("k", vision_s_per_image=4.0, prefill_tokens_per_s=90.0, path=store)
    measured = speeds.lookup("k", store)
    assert measured is not None
    low, high = measured.first_token_range(4, 256, 64) or (0.0, 0.0)
    assert low == pytest.approx(4 * 2.0 + (4 * 256 + 64) / 100.0)
    assert high == pytest.approx(4 * 4.0 + (4 * 256 + 64) / 80.0)
    assert low < (measured.first_token_s(4, 256, 64) or 0.0) < high


def test_attention_work_counts_the_keys_each_position_attends() -> None:
    """A global layer (one in six) attends every earlier position, a local one the last
    ``window``: the closed form against the sum it stands for."""
    window = 7

    def keys(p: int) -> float:
        return p * speeds.GLOBAL_LAYER_SHARE + min(p, window) * (1 - speeds.GLOBAL_LAYER_SHARE)

    for start, end in ((0, 5), (0, 7), (0, 40), (3, 9), (12, 50)):
        assert speeds.attention_work(start, end, window) == pytest.approx(sum(keys(p) for p in range(start, end)))
    # an 85-slice volume's prompt attends ~20x more keys per token than a question's
    volume, question = 22_470, 300
    ratio = (speeds.attention_work(0, volume, 1024) / volume) / (speeds.attention_work(0, question, 1024) / question)
    assert 15 < ratio < 25


def test_a_long_prefill_kept_here_carries_its_slowdown_into_long_estimates(tmp_path: Path) -> None:
    """Short questions give the rate; one long prompt (a volume), slower per token because each
    token attends more keys, gives what a key costs. The estimate then reproduces the long run,
    and a short question's estimate barely moves."""
    store = tmp_path / "speeds.json"
    for rate in (40.0, 42.0, 41.0):
        speeds.record("k", vision_s_per_image=14.0, prefill_tokens_per_s=rate, path=store)
    short = speeds.lookup("k", store)
    assert short is not None and short.long_prefill is None
    assert short.prefill_s(22_000) == pytest.approx(22_000 / 41.0)  # nothing long measured: the rate alone
    tokens, window = 22_000, 1024
    work = speeds.attention_work(0, tokens, window)
    seconds = 1.4 * tokens / 41.0  # the volume ran 1.4x slower per token than the questions
    speeds.record("k", vision_s_per_image=14.5, prefill_tokens_per_s=tokens / seconds, path=store,
                  prefill=speeds.LongPrefill(tokens, work, seconds, window))
    measured = speeds.lookup("k", store)
    assert measured is not None and measured.long_prefill is not None
    assert measured.prefill_tokens_per_s == pytest.approx(40.5)  # the median of four rates
    assert measured.prefill_s(tokens, 41.0) == pytest.approx(seconds, rel=1e-3)
    assert measured.prefill_s(300, 41.0) == pytest.approx(300 / 41.0, rel=0.05)
    slices = 85
    assert (measured.first_token_s(slices, 256, 64) or 0.0) > (short.first_token_s(slices, 256, 64) or 0.0)
    low, high = measured.first_token_range(slices, 256, 64) or (0.0, 0.0)
    assert low < (measured.first_token_s(slices, 256, 64) or 0.0) < high


def test_only_a_long_enough_prefill_replaces_the_kept_one(tmp_path: Path) -> None:
    store = tmp_path / "speeds.json"

    def kept() -> speeds.LongPrefill | None:
        found = speeds.lookup("k", store)
        return found.long_prefill if found else None

    def run(tokens: int, seconds: float) -> None:
        speeds.record("k", prefill_tokens_per_s=40.0, path=store,
                      prefill=speeds.LongPrefill(tokens, speeds.attention_work(0, tokens, 64), seconds, 64))

    run(200, 5.0)  # under four windows: a question, not a long prompt
    assert kept() is None
    run(10_000, 300.0)
    assert kept() == speeds.LongPrefill(10_000, round(speeds.attention_work(0, 10_000, 64)), 300.0, 64)
    run(3_000, 80.0)  # long, but under half the kept one: the longer stays
    assert (kept() or speeds.LongPrefill(0, 0, 0, 0)).tokens == 10_000
    run(6_000, 170.0)  # newer, and of its size: it replaces the older figure
    assert (kept() or speeds.LongPrefill(0, 0, 0, 0)).tokens == 6_000


def test_a_malformed_long_prefill_in_the_store_is_ignored(tmp_path: Path) -> None:
    import json

    store = tmp_path / "speeds.json"
    store.write_text(json.dumps({"k": {"vision": [2.0], "prefill": [50.0], "long_prefill": ["x", 3]}}))
    measured = speeds.lookup("k", store)
    assert measured is not None and measured.long_prefill is None
    assert measured.first_token_s(2, 256, 64) == pytest.approx(2 * 2.0 + (2 * 256 + 64) / 50.0)


def test_a_range_is_written_once_where_both_ends_share_a_unit() -> None:
    from medgem.cli.inspect import _duration_range

    assert _duration_range(15.2, 16.1) == "15-16 s"
    assert _duration_range(50.0, 130.0) == "50 s-2 min"
    assert _duration_range(6000.0, 9000.0) == "1.7-2.5 h"


def test_without_a_prefill_rate_there_is_no_estimate(tmp_path: Path) -> None:
    store = tmp_path / "speeds.json"
    speeds.record("k", vision_s_per_image=2.0, path=store)
    measured = speeds.lookup("k", store)
    assert measured is not None and measured.first_token_s(3, 256, 64) is None


def test_a_broken_store_reads_as_empty_and_is_rewritten(tmp_path: Path) -> None:
    store = tmp_path / "speeds.json"
    store.write_text("{not json")
    assert speeds.lookup("k", store) is None
    speeds.record("k", prefill_tokens_per_s=50.0, path=store)
    assert speeds.lookup("k", store) is not None


@pytest.mark.usefixtures("llamacpp_runs")
def test_an_image_question_records_what_inspect_estimates_from(
        converted_vlm: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    from medgem.engines import LlamaCppOptions, load_engine
    from medgem.request import GenerationOptions, ImagePart, Message, Request, TextPart
    from medgem.resolve import resolve_checkpoint

    monkeypatch.setenv("MEDGEM_CACHE", str(tmp_path))
    checkpoint = resolve_checkpoint(converted_vlm)
    assert speeds.estimate_first_token(checkpoint.path, checkpoint.mmproj, 85) == (None, None)
    engine: Any = load_engine("llamacpp", checkpoint, LlamaCppOptions(vision="llamacpp", threads=2))
    try:
        image = Image.fromarray(np.random.default_rng(3).integers(0, 255, (64, 64, 3), dtype=np.uint8))
        text = "Describe this X-ray in detail, " * 12  # a text batch long enough to time
        request = Request((Message("user", (ImagePart(image), TextPart(text))),),
                          GenerationOptions(max_new_tokens=2))
        list(engine.generate(request))
    finally:
        engine.close()
    estimate, measured = speeds.estimate_first_token(checkpoint.path, checkpoint.mmproj, 85, threads=2,
                                                     vision="llamacpp")
    assert measured is not None and measured.runs == 1
    assert measured.vision_s_per_image is not None and measured.vision_s_per_image > 0
    assert measured.prefill_tokens_per_s is not None and measured.prefill_tokens_per_s > 0
    assert estimate is not None and estimate > 85 * measured.vision_s_per_image
    # another thread count, another vision path: not the same measurement
    assert speeds.estimate_first_token(checkpoint.path, checkpoint.mmproj, 85, threads=1,
                                       vision="llamacpp") == (None, None)


@pytest.mark.usefixtures("llamacpp_runs")
def test_pytorch_tower_figures_are_kept_per_precision(converted_vlm: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """An int8 tower and a float32 one run at different speeds: the figures of one never
    estimate the other."""
    from PIL import Image

    from medgem.engines import LlamaCppOptions, load_engine
    from medgem.request import GenerationOptions, ImagePart, Message, Request, TextPart
    from medgem.resolve import resolve_checkpoint

    monkeypatch.setenv("MEDGEM_CACHE", str(tmp_path))
    checkpoint = resolve_checkpoint(converted_vlm)
    engine: Any = load_engine("llamacpp", checkpoint, LlamaCppOptions(vision="torch", vision_dtype="float32",
                                                                      threads=2))
    try:
        image = Image.fromarray(np.random.default_rng(4).integers(0, 255, (64, 64, 3), dtype=np.uint8))
        request = Request((Message("user", (ImagePart(image), TextPart("Describe this X-ray."))),),
                          GenerationOptions(max_new_tokens=2))
        list(engine.generate(request))
    finally:
        engine.close()
    assert any("|torch-float32|" in key for key in speeds.measured_keys())
    found = speeds.estimate_first_token(checkpoint.path, checkpoint.mmproj, 4, threads=2, vision="torch",
                                        vision_dtype="float32")
    assert found[1] is not None and found[1].vision_s_per_image is not None
    assert speeds.estimate_first_token(checkpoint.path, checkpoint.mmproj, 4, threads=2, vision="torch",
                                       vision_dtype="int8") == (None, None)


@pytest.mark.usefixtures("llamacpp_runs")
def test_inspect_estimates_a_volume_s_first_token_from_what_was_measured_here(
        converted_vlm: Path, tmp_path: Path) -> None:
    from conftest import run_cli
    from imaging_fixtures import hu_phantom, write_ct_series

    env = {"MEDGEM_CACHE": str(tmp_path / "cache")}
    series = tmp_path / "ct"
    write_ct_series(series, np.stack([hu_phantom()] * 6))
    before = run_cli("inspect", str(series), "--model", str(converted_vlm), env=env)
    assert before.returncode == 0, before.stderr
    assert "first token:        not measured with model.gguf on this machine yet" in before.stdout
    photo = tmp_path / "photo.png"
    from PIL import Image

    Image.fromarray(np.random.default_rng(7).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(photo)
    asked = run_cli("ask", "Describe this image in detail, please, " * 8, "--model", str(converted_vlm),
                    "--image", str(photo), "--max-new-tokens", "2", env=env)
    assert asked.returncode == 0, asked.stderr
    after = run_cli("inspect", str(series), "--model", str(converted_vlm), "--json", env=env)
    assert after.returncode == 0, after.stderr
    import json

    estimate = json.loads(after.stdout)["first_token"]
    assert estimate["seconds"] > 6 * estimate["vision_s_per_image"] > 0  # six slices, then prefill
    assert "6 image(s) x" in estimate["text"] and "measured here with model.gguf, 1 run(s)" in estimate["text"]
    assert estimate["range_seconds"] is None and "one run: each question asked here narrows it" in estimate["text"]
