"""One writer of audit records for every surface: the Python API, the CLI, the server, eval.

``MedGemma`` holds an :class:`AuditTrail` and writes the record of each answer before the
answer is handed back (the server before its last byte), and of each failure inside
generation. A surface adds what only it knows (who asked, through which endpoint, the
digests of the inputs as sent) as ``context``. Records hold hashes of the inputs, never the
prompt text or the pixels, unless a surface opts in (the server's ``--log-prompts``).
"""

from __future__ import annotations

import getpass
from collections.abc import Mapping
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from medgem.audit.records import AuditRecord, AuditStore, redacted_error, sha256_hex
from medgem.errors import error_body
from medgem.request import ImagePart, Part, Request

if TYPE_CHECKING:
    from medgem.answer import Answer
    from medgem.engines.base import ModelInfo

# Context keys a surface may give; others are refused so a typo cannot hide a field.
# ``file_names`` (the names a client gave its uploads) are never stored: they are redacted
# from a failure's error text.
# ``accepted`` is the id of the request's accept record: the outcome's parent.
CONTEXT_KEYS = frozenset({"record_id", "user", "endpoint", "inputs", "served_as", "prompt",
                          "queue_s", "file_names", "accepted"})


def model_fields(info: ModelInfo) -> dict[str, Any]:
    """The model facts a record keeps (enough to reproduce the run; no local paths)."""
    return {key: value for key, value in asdict(info).items() if key != "path"}


def settings_fields(request: Request) -> dict[str, Any]:
    """The generation options the request carried, and its shape."""
    options = request.options
    return {"max_new_tokens": options.max_new_tokens, "temperature": options.temperature,
            "top_p": options.top_p, "seed": options.seed, "stop": list(options.stop),
            "think": options.think, "template": request.template, "images": len(request.images),
            "constraint": options.constraint.record() if options.constraint is not None else None}


def answer_fields(answer: Answer, queue_s: float) -> dict[str, Any]:
    return {
        "output": answer.text, "thinking": answer.thinking, "finish_reason": answer.finish_reason,
        "usage": asdict(answer.usage),
        "timings": {"queue_s": round(queue_s, 4),
                    "first_token_s": round(answer.timings.first_token_s, 4),
                    "total_s": round(answer.timings.total_s, 4)},
        "caveat": answer.caveat, "label": answer.label,
    } | ({"served_by": answer.served_by} if answer.served_by else {}) | (
        {"parsed": answer.parsed, "structured_error": answer.structured_error}
        if answer.parsed is not None or answer.structured_error is not None else {})


def request_digests(request: Request) -> list[dict[str, Any]]:
    """sha256 of each text part and of each image's pixels, turn by turn (no content kept)."""
    def digest(part: Part) -> dict[str, Any]:
        if isinstance(part, ImagePart):
            return {"type": "image", "sha256": sha256_hex(part.image.tobytes()),
                    "size": list(part.image.size)}
        return {"type": "text", "sha256": sha256_hex(part.text)}

    return [{"role": m.role, "parts": [digest(p) for p in m.parts]} for m in request.messages]


class AuditTrail:
    """Appends answer and failure records to one store.

    Args:
        store: where records go (append-only, hash-chained).
        surface: the default endpoint name ("python", "cli:ask", ...), when the context has none.
    """

    def __init__(self, store: AuditStore, surface: str = "python") -> None:
        self.store = store
        self.surface = surface

    def request_fields(self, request: Request, info: ModelInfo,
                       context: Mapping[str, Any]) -> dict[str, Any]:
        """What every record of a request says of it: who asked, where, the model, the
        settings and the inputs' digests (and what else of ``context`` a record keeps)."""
        unknown = set(context) - CONTEXT_KEYS
        if unknown:
            raise ValueError(f"unknown audit context keys: {sorted(unknown)}")
        body: dict[str, Any] = {
            "user": context.get("user") or local_user(),
            "endpoint": context.get("endpoint") or self.surface, "model": model_fields(info),
            "settings": settings_fields(request),
            "inputs": context["inputs"] if "inputs" in context else request_digests(request),
        }
        return body | {key: context[key] for key in ("served_as", "prompt") if key in context}

    def answer(self, request: Request, answer: Answer, info: ModelInfo,
               context: Mapping[str, Any]) -> str:
        """Record an answer durably; returns the record id."""
        body = self.request_fields(request, info, context) | answer_fields(
            answer, float(context.get("queue_s", 0.0)))
        return self.store.append("answer", body, record_id=context.get("record_id"),
                                 parent=context.get("accepted")).id

    def failure(self, request: Request, error: BaseException, info: ModelInfo,
                context: Mapping[str, Any]) -> str:
        """Record a request that failed inside generation: "rejected" for 4xx-kind errors
        (bad input, context too long), "error" otherwise; the error as the server answers it."""
        status, detail = error_body(error)
        error_json = redacted_error(detail["error"], context.get("file_names") or ())
        body = self.request_fields(request, info, context) | {"status": status, "error": error_json}
        kind = "rejected" if status < 500 else "error"
        return self.store.append(kind, body, record_id=context.get("record_id"),
                                 parent=context.get("accepted")).id


def unfinished_requests(store: AuditStore) -> list[AuditRecord]:
    """The "accepted" records no outcome (answer, rejected, error, interrupted) followed."""
    finder = getattr(store, "unfinished", None)
    if callable(finder):
        return list(finder())
    return [record for record in store.records(kind="accepted") if not store.children(record.id)]


def local_user() -> str:
    """Who asked, for a record made outside the server: "local:<login name>", or "local"."""
    try:
        return f"local:{getpass.getuser()}"
    except (KeyError, OSError):
        return "local"
