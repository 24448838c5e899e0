"""API keys: named, stored as SHA-256 hashes, revocable without a restart.

The key file is JSON: ``{"keys": [{"name", "sha256", "created", "revoked"}]}``. Keys are 256-bit
random tokens, so a plain SHA-256 (not a slow password hash) is enough: nobody can guess one.
The plaintext is shown once, when the key is made.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from medgem.errors import InputError

KEY_PREFIX = "mg-"
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


ROLES = ("user", "auditor")  # a user sees its own records; an auditor sees every record


@dataclass(frozen=True)
class KeyEntry:
    name: str
    sha256: str
    created: str
    revoked: str | None = None
    role: str = "user"


class KeyStore:
    """The key file, re-read whenever it changes on disk (so ``keys revoke`` acts at once)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._mtime: float | None = None
        self._entries: list[KeyEntry] = []

    # --- reading -----------------------------------------------------------------------------

    def entries(self) -> list[KeyEntry]:
        """All keys, revoked ones included."""
        with self._lock:
            self._reload()
            return list(self._entries)

    def active(self) -> list[KeyEntry]:
        return [e for e in self.entries() if e.revoked is None]

    def entry(self, key: str) -> KeyEntry | None:
        """The active key matching ``key``, or None."""
        digest = hash_key(key)
        for entry in self.active():
            if hmac.compare_digest(entry.sha256, digest):
                return entry
        return None

    def _reload(self) -> None:
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            self._entries, self._mtime = [], None
            return
        if mtime == self._mtime:
            return
        try:
            data = json.loads(self.path.read_text("utf-8"))
            self._entries = [KeyEntry(**item) for item in data.get("keys", [])]
        except (OSError, ValueError, TypeError) as exc:
            raise InputError(
                f"the API key file '{self.path}' is unreadable ({exc})",
                "fix or remove it, then add keys with `medgem keys add NAME`",
            ) from exc
        self._mtime = mtime

    # --- writing -----------------------------------------------------------------------------

    def add(self, name: str, role: str = "user") -> str:
        """Make a key named ``name``; returns the plaintext, which is not stored anywhere.

        Raises:
            InputError: a bad name or role, or an active key with that name already exists.
        """
        if not _NAME.match(name):
            raise InputError(f"key name {name!r} is not allowed", "use letters, digits and . _ @ - (max 64)")
        if role not in ROLES:
            raise InputError(f"unknown role '{role}'", f"use one of: {', '.join(ROLES)}")
        with self._lock:
            self._reload()
            if any(e.name == name and e.revoked is None for e in self._entries):
                raise InputError(f"an active key named '{name}' exists", "revoke it first")
            key = KEY_PREFIX + secrets.token_urlsafe(32)
            self._entries.append(KeyEntry(name, hash_key(key), _now(), role=role))
            self._write()
        return key

    def revoke(self, name: str) -> None:
        """Revoke every active key named ``name``.

        Raises:
            InputError: no active key has that name.
        """
        with self._lock:
            self._reload()
            found = [e for e in self._entries if e.name == name and e.revoked is None]
            self._entries = [replace(e, revoked=_now()) if e in found else e for e in self._entries]
            if not found:
                raise InputError(f"no active key named '{name}'", "see `medgem keys list`")
            self._write()

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        payload = json.dumps({"keys": [asdict(e) for e in self._entries]}, indent=2)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)
        self._mtime = None


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer ...`` header."""
    scheme, _, token = (header or "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
