"""What the server writes to the audit store for each request.

By default only hashes of the inputs: sha256 of each text and of each image's bytes as sent.
With ``--log-prompts`` the texts and the inputs themselves are kept too (inputs in the store's
content-addressed blob table), DICOM de-identified first.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import zipfile
from typing import Any

from medgem.audit import AuditStore, sha256_hex

log = logging.getLogger("medgem.server")


def split_data_url(url: str) -> tuple[bytes, str] | None:
    """(bytes, mime) of a base64 data URL, None when it is not one (errors come later)."""
    if not url.startswith("data:") or "," not in url:
        return None
    header, payload = url[5:].split(",", 1)
    mime = header.removesuffix(";base64") or "application/octet-stream"
    try:
        return base64.b64decode(payload, validate=True), mime
    except (binascii.Error, ValueError):
        return None


def digest_inputs(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per text or image part: role, kind, sha256, size. Never the content."""
    entries: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        content = message.get("content")
        for part in _parts(content):
            if part.get("type") == "text":
                text = part.get("text") or ""
                entries.append({"role": role, "kind": "text", "sha256": sha256_hex(text), "chars": len(text)})
            elif part.get("type") == "image_url":
                url = (part.get("image_url") or {}).get("url", "")
                decoded = split_data_url(url)
                if decoded is None:
                    entries.append({"role": role, "kind": "image_ref", "sha256": sha256_hex(url)})
                else:
                    data, mime = decoded
                    entries.append({
                        "role": role, "kind": "image", "mime": mime,
                        "sha256": sha256_hex(data), "bytes": len(data),
                    })
    return entries


def _parts(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [part for part in content or [] if isinstance(part, dict)]


def capture_inputs(
    store: AuditStore, messages: list[dict[str, Any]], deid_key: bytes
) -> list[dict[str, Any]]:
    """The opted-in copy: texts as they are, images as blobs (DICOM de-identified first)."""
    captured: list[dict[str, Any]] = []
    for message in messages:
        content = message.get("content")
        kept: list[dict[str, Any]] = []
        for part in _parts(content):
            if part.get("type") == "text":
                kept.append({"type": "text", "text": part.get("text") or ""})
                continue
            decoded = split_data_url((part.get("image_url") or {}).get("url", ""))
            if decoded is None:
                kept.append({"type": "image_ref"})
                continue
            data, mime = decoded
            safe, safe_mime = deidentify_bytes(data, mime, deid_key)
            if safe is None:
                kept.append({"type": "image", "blob": None, "note": "not kept: could not de-identify"})
            else:
                kept.append({"type": "image", "blob": store.put_blob(safe, safe_mime), "mime": safe_mime})
        captured.append({"role": message.get("role"), "content": kept})
    return captured


def deidentify_bytes(data: bytes, mime: str, key: bytes) -> tuple[bytes | None, str]:
    """Photos as they are; DICOM (and each DICOM in a zip) through medgem.imaging.deid.

    Returns (None, mime) when a DICOM cannot be de-identified: it is then not stored at all.
    """
    from medgem.inputs import is_dicom_bytes

    is_zip = data[:4] == b"PK\x03\x04"
    if not (is_zip or is_dicom_bytes(data) or mime == "application/dicom"):
        return data, mime
    try:
        if is_zip:
            return _deidentify_zip(data, key), "application/zip"
        return _deidentify_dicom(data, key), "application/dicom"
    except Exception:  # never store what could not be cleaned
        log.warning("a DICOM input could not be de-identified; it is not kept")
        return None, mime


def _deidentify_dicom(data: bytes, key: bytes) -> bytes:
    import pydicom

    from medgem.imaging.deid import deidentify

    dataset = pydicom.dcmread(io.BytesIO(data), force=True)
    cleaned = deidentify(dataset, key) or dataset
    out = io.BytesIO()
    cleaned.save_as(out)
    return out.getvalue()


def _deidentify_zip(data: bytes, key: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        for number, info in enumerate(source.infolist()):
            if info.is_dir():
                continue
            # File names in series exports may carry patient names: number them instead.
            target.writestr(f"{number:05d}.dcm", _deidentify_dicom(source.read(info), key))
    return out.getvalue()
