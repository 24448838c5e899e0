"""`medgem backend-command`: the vllm serve line for each variant, parsed back."""

from __future__ import annotations

import json
import shlex

from conftest import run_cli


def _flags(line: str) -> dict[str, str]:
    words = shlex.split(line)
    assert words[:3] == ["vllm", "serve", words[2]] and words[2].startswith("google/medgemma")
    return dict(zip(words[3::2], words[4::2], strict=True))


def test_slides_and_volumes_fit_the_1_5_backend() -> None:
    result = run_cli("backend-command", "1.5-4b-it", "--gpus", "2")
    assert result.returncode == 0, result.stderr
    flags = _flags(result.stdout.splitlines()[0])
    images = json.loads(flags["--limit-mm-per-prompt"])["image"]
    assert images >= 125  # a slide's patches (and a CT volume's 85 slices)
    assert int(flags["--max-model-len"]) >= 125 * 256 + 8192  # the patches and an answer
    assert flags["--tensor-parallel-size"] == "2" and flags["--dtype"] == "bfloat16"
    assert "medgem serve --model medgemma-1.5-4b-it --backend" in result.stdout


def test_text_model_has_no_image_limit_and_one_gpu_no_tensor_parallelism() -> None:
    result = run_cli("backend-command", "27b-text-it")
    flags = _flags(result.stdout.splitlines()[0])
    assert "--limit-mm-per-prompt" not in flags and "--tensor-parallel-size" not in flags
    assert flags["--served-model-name"] == "medgemma-27b-text-it"


def test_unknown_variant_is_one_line() -> None:
    result = run_cli("backend-command", "medgemma-9b")
    assert result.returncode == 1 and "unknown variant 'medgemma-9b'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
