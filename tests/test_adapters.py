"""medgem.adapters: a finished adapter is sealed with its content hash; unfinished runs,
intermediate checkpoints and edited files are refused with a clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medgem.adapters import MARKER, content_digest, find_adapter, write_marker
from medgem.errors import AdapterError


def peft_folder(path: Path, weights: bytes = b"weights") -> Path:
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({
        "r": 4, "lora_alpha": 8, "base_model_name_or_path": "base", "modules_to_save": None}))
    (path / "adapter_model.safetensors").write_bytes(weights)
    return path


def test_sealed_adapter_is_found_from_the_run_folder_with_its_hash(tmp_path: Path) -> None:
    adapter = peft_folder(tmp_path / "run" / "adapter")
    digest = write_marker(adapter, "cxr-v1", {"base_model": {"id": "medgem-test-text"}})
    found = find_adapter(tmp_path / "run")
    assert found.path == adapter and found.name == "cxr-v1" and found.sha256 == digest
    assert found.base_model == "medgem-test-text" and found.label == f"cxr-v1@{digest[:12]}"
    assert json.loads((adapter / MARKER).read_text())["sha256"] == digest


def test_digest_covers_names_and_contents_but_not_the_marker(tmp_path: Path) -> None:
    one = peft_folder(tmp_path / "one")
    two = peft_folder(tmp_path / "two", weights=b"weightz")
    assert content_digest(one) != content_digest(two)
    before = content_digest(one)
    write_marker(one, "x", {})
    assert content_digest(one) == before
    (one / "adapter_model.safetensors").rename(one / "other.safetensors")
    assert content_digest(one) != before


def test_files_changed_after_training_are_refused(tmp_path: Path) -> None:
    adapter = peft_folder(tmp_path / "adapter")
    write_marker(adapter, "x", {})
    (adapter / "adapter_model.safetensors").write_bytes(b"tampered")
    with pytest.raises(AdapterError, match="changed after training"):
        find_adapter(adapter)


def test_an_interrupted_run_never_looks_like_an_adapter(tmp_path: Path) -> None:
    run = tmp_path / "run"
    peft_folder(run / "checkpoints" / "checkpoint-20")
    peft_folder(run / "adapter.partial")  # a crash while sealing
    with pytest.raises(AdapterError, match="unfinished training run"):
        find_adapter(run)
    with pytest.raises(AdapterError, match="intermediate checkpoint"):
        find_adapter(run / "checkpoints" / "checkpoint-20")
    with pytest.raises(AdapterError, match="intermediate checkpoint"):
        find_adapter(run / "adapter.partial")
    with pytest.raises(AdapterError, match="no adapter at"):
        find_adapter(tmp_path / "nowhere")


def test_a_peft_adapter_trained_elsewhere_is_hashed_when_loaded(tmp_path: Path) -> None:
    adapter = peft_folder(tmp_path / "notebook-adapter")
    found = find_adapter(adapter)
    assert found.name == "notebook-adapter" and found.marker == {}
    assert found.sha256 == content_digest(adapter) and found.base_model == "base"
