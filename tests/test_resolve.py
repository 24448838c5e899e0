from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from medgem.errors import ModelNotFoundError, NotACheckpointError
from medgem.resolve import resolve_checkpoint


def test_local_multimodal_and_text_checkpoints(tiny_vlm_checkpoint: Path, tiny_text_checkpoint: Path) -> None:
    vlm = resolve_checkpoint(tiny_vlm_checkpoint)
    assert vlm.format == "hf" and vlm.multimodal and vlm.chat_template and vlm.demo
    assert vlm.model_id == "medgem-test-vlm" and vlm.revision.startswith("local-")
    text = resolve_checkpoint(str(tiny_text_checkpoint))
    assert not text.multimodal and text.chat_template


def test_missing_path_and_non_checkpoint_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="no model at"):
        resolve_checkpoint(str(tmp_path / "nope"))
    with pytest.raises(NotACheckpointError, match="holds no model"):
        resolve_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(NotACheckpointError, match="'llama' model, not MedGemma"):
        resolve_checkpoint(tmp_path)


def test_config_without_weights_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gemma3"}))
    with pytest.raises(NotACheckpointError, match="no weight files"):
        resolve_checkpoint(tmp_path)


def test_variant_from_a_fine_tunes_model_card(tiny_vlm_checkpoint: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(tiny_vlm_checkpoint, tmp_path / "my-finetune")
    (copy / "README.md").write_text("---\nbase_model: google/medgemma-1.5-4b-it\nlicense: other\n---\n")
    checkpoint = resolve_checkpoint(copy)
    assert checkpoint.variant is not None and checkpoint.variant.key == "1.5-4b-it"


def make_hf_cache(cache: Path, source: Path, repo_id: str, commit: str = "a" * 40) -> Path:
    """The layout huggingface_hub writes: models--org--name/{refs/main, snapshots/<commit>/...}."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    shutil.copytree(source, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def test_hub_id_and_variant_key_found_in_the_local_cache(
    tiny_vlm_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "hub"
    make_hf_cache(cache, tiny_vlm_checkpoint, "google/medgemma-4b-it")
    by_id = resolve_checkpoint("google/medgemma-4b-it", cache_dir=str(cache), offline=True)
    assert by_id.model_id == "google/medgemma-4b-it" and by_id.revision == "a" * 40
    assert by_id.variant is not None and by_id.variant.key == "4b-it"
    by_key = resolve_checkpoint("4b-it", cache_dir=str(cache), offline=True)
    assert by_key.path == by_id.path


def test_uncached_hub_id_offline_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="not in the local Hugging Face cache"):
        resolve_checkpoint("google/medgemma-27b-text-it", cache_dir=str(tmp_path), offline=True)


class _GatedHub(BaseHTTPRequestHandler):
    """Answers every request the way the hub answers a gated repo without access."""

    def do_GET(self) -> None:
        self._refuse()

    def do_HEAD(self) -> None:
        self._refuse()

    def _refuse(self) -> None:
        body = b'{"error": "Access to model google/medgemma-4b-it is restricted."}'
        self.send_response(403)
        self.send_header("X-Error-Code", "GatedRepo")
        self.send_header("X-Error-Message", "Access to model google/medgemma-4b-it is restricted.")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command == "GET":
            self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_gated_403_from_a_hub_says_accept_the_terms_and_set_hf_token(tmp_path: Path) -> None:
    server = HTTPServer(("127.0.0.1", 0), _GatedHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        env = {
            "HF_ENDPOINT": f"http://127.0.0.1:{server.server_port}",
            "HF_HUB_OFFLINE": "0",
            "HF_HUB_CACHE": str(tmp_path / "cache"),
            "HF_TOKEN": "hf_test_token_without_access",
            "PATH": "/usr/bin:/bin",
        }
        code = (
            "from medgem.resolve import resolve_checkpoint\n"
            "from medgem.errors import GatedModelError\n"
            "try:\n    resolve_checkpoint('google/medgemma-4b-it')\n"
            "except GatedModelError as e:\n    print('GATED', e)\n"
        )
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                env=env, timeout=120)
    finally:
        server.shutdown()
    assert "GATED" in result.stdout, result.stderr[-2000:]
    assert "Health AI Developer Foundations" in result.stdout and "HF_TOKEN" in result.stdout


def test_a_checkpoints_chat_template_in_each_form_it_ships(tmp_path: Path) -> None:
    """chat_template.jinja first; else chat_template.json or tokenizer_config.json, whose
    template may be one string or the named list (the "default" entry is the chat template)."""
    from medgem.resolve import checkpoint_chat_template

    assert checkpoint_chat_template(tmp_path) is None
    named = [{"name": "tool_use", "template": "{{ tools }}"}, {"name": "default", "template": "{{ m }}"}]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": named}))
    assert checkpoint_chat_template(tmp_path) == "{{ m }}"
    (tmp_path / "chat_template.json").write_text(json.dumps({"chat_template": "{{ json }}"}))
    assert checkpoint_chat_template(tmp_path) == "{{ json }}"
    (tmp_path / "chat_template.jinja").write_text("{{ jinja }}")
    assert checkpoint_chat_template(tmp_path) == "{{ jinja }}"
    (tmp_path / "chat_template.json").write_text(json.dumps({"chat_template": ""}))
    (tmp_path / "chat_template.jinja").unlink()
    assert checkpoint_chat_template(tmp_path) == "{{ m }}"  # an empty one is no template
