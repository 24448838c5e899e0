"""What the server writes to the audit store for each request.

By default only hashes of the inputs: sha256 of each text and of each image's bytes as sent.
With ``--log-prompts`` the texts and the inputs themselves are kept too (inputs in the store's
content-addressed blob table), DICOM de-identified first.
"""

from __future__ import annotations

import logging
from typing import Any

from medgem.audit import AuditStore, sha256_hex
from medgem.inputs import deidentify_upload, try_data_url

log = logging.getLogger("medgem.server")


def digest_inputs(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per text or image part: role, kind, sha256, size. Never the content."""
    entries: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        for part in _parts(message.get("content")):
            if part.get("type") == "text":
                text = part.get("text") or ""
                entries.append({"role": role, "kind": "text", "sha256": sha256_hex(text), "chars": len(text)})
            elif part.get("type") == "image_url":
                url = (part.get("image_url") or {}).get("url", "")
                decoded = try_data_url(url)
                if decoded is None:
                    entries.append({"role": role, "kind": "image_ref", "sha256": sha256_hex(url)})
                else:
                    data, mime = decoded
                    entries.append({"role": role, "kind": "image", "mime": mime,
                                    "sha256": sha256_hex(data), "bytes": len(data)})
    return entries


def _parts(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [part for part in content or [] if isinstance(part, dict)]


def capture_inputs(store: AuditStore, messages: list[dict[str, Any]], deid_key: bytes
                   ) -> list[dict[str, Any]]:
    """The opted-in copy: texts as they are, images as blobs (DICOM de-identified first)."""
    captured: list[dict[str, Any]] = []
    for message in messages:
        kept: list[dict[str, Any]] = []
        for part in _parts(message.get("content")):
            if part.get("type") == "text":
                kept.append({"type": "text", "text": part.get("text") or ""})
                continue
            decoded = try_data_url((part.get("image_url") or {}).get("url", ""))
            if decoded is None:
                kept.append({"type": "image_ref"})
                continue
            data, mime = decoded
            safe, safe_mime = deidentify_upload(data, mime, deid_key)
            if safe is None:
                kept.append({"type": "image", "blob": None, "note": "not kept: could not de-identify"})
            else:
                kept.append({"type": "image", "blob": store.put_blob(safe, safe_mime), "mime": safe_mime})
        captured.append({"role": message.get("role"), "content": kept})
    return captured
