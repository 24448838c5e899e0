"""Pure ASGI middleware (streaming stays untouched): the body-size and nesting limits and
security headers."""

from __future__ import annotations

import re

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from medgem.server.http_errors import BodyTooDeep, BodyTooLarge

#: Deepest JSON nesting a body may have. An OpenAI body needs 5 levels (body, messages, a
#: message, its parts, an image_url); Python's json parser recurses once per level, so a body
#: 100,000 levels deep would end in a RecursionError after allocating every level.
MAX_JSON_DEPTH = 64
_STRUCTURE = re.compile(rb'[\[\]{}"\\]')


class JsonDepth:
    """How deep the JSON received so far nests, fed chunk by chunk before anything parses it.

    Only the bytes that can change the depth are visited (brackets, quotes, backslashes), so a
    base64 image costs one regex scan. Brackets inside strings do not count.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.depth = 0
        self._in_string = False
        self._escaped = False  # a backslash ended the last chunk, inside a string

    def feed(self, chunk: bytes) -> bool:
        """Scan the next chunk; True once the nesting went past ``limit``."""
        skip = 0
        if self._escaped and chunk:
            skip, self._escaped = 1, False
        for match in _STRUCTURE.finditer(chunk, skip):
            at = match.start()
            if at < skip:
                continue
            char = chunk[at]
            if self._in_string:
                if char == 0x5C:  # backslash: the next byte is escaped
                    skip = at + 2
                    self._escaped = skip > len(chunk)
                elif char == 0x22:
                    self._in_string = False
            elif char == 0x22:
                self._in_string = True
            elif char in (0x5B, 0x7B):
                self.depth += 1
                if self.depth > self.limit:
                    return True
            elif char in (0x5D, 0x7D):
                self.depth -= 1
        return False


class BodyLimit:
    """Refuses a body over ``limit`` bytes, or nested deeper than :data:`MAX_JSON_DEPTH`, before
    anything parses it: at once when the declared Content-Length is over it, else as soon as
    the received bytes pass either limit (the app's exception handler answers the
    :class:`BodyTooLarge` with an OpenAI-style 413, :class:`BodyTooDeep` with a 400)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        received = 0
        depth = JsonDepth(MAX_JSON_DEPTH)

        async def receive_within_limit() -> Message:
            nonlocal received
            if declared.isdigit() and int(declared) > self.limit:
                raise BodyTooLarge(self.limit)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self.limit)
                if depth.feed(message.get("body", b"")):
                    raise BodyTooDeep(MAX_JSON_DEPTH)
            return message

        await self.app(scope, receive_within_limit, send)


class SecurityHeaders:
    """Adds nosniff and no-referrer to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(raw=list(message.get("headers", [])))
                headers.setdefault("x-content-type-options", "nosniff")
                headers.setdefault("referrer-policy", "no-referrer")
                message["headers"] = headers.raw
            await send(message)

        await self.app(scope, receive, send_with_headers)
