"""The FastAPI app: a thin router over :class:`Serving` and :class:`PageHandlers`.

``create_app(config, model)`` wires the audit store, API keys, metrics and the engine queue;
shutting the app down drains the queue (uvicorn first lets in-flight requests finish).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources

from fastapi import FastAPI
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request as HttpRequest
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from medgem import __version__
from medgem.api import MedGemma
from medgem.audit import AuditStore, open_store
from medgem.errors import InputError, MedgemError
from medgem.server.auth import KeyStore
from medgem.server.config import ServerConfig
from medgem.server.errors import error_response
from medgem.server.metrics import Metrics
from medgem.server.openapi import openapi_document
from medgem.server.page import PageHandlers
from medgem.server.serving import Serving

log = logging.getLogger("medgem.server")
_PAGE_HEADERS = {  # SecurityHeaders adds nosniff and no-referrer
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; "
    "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'",
}


def create_app(config: ServerConfig, model: MedGemma, *, store: AuditStore | None = None,
               keys: KeyStore | None = None) -> FastAPI:
    """Build the app.

    Args:
        config: server settings.
        model: the loaded model; the app does not close it.
        store: an audit store (default: ``open_store(config.audit_path)``).
        keys: an API key store (default: from ``config.api_key_file``).

    Raises:
        InputError: binding beyond loopback without any active API key.
    """
    if keys is None and config.api_key_file is not None:
        keys = KeyStore(config.api_key_file)
    if not config.loopback and (keys is None or not keys.active()):
        raise InputError(
            f"binding to {config.host} exposes the model to the network, which needs API keys",
            "make one with `medgem keys add NAME` and pass --api-key-file, or bind to 127.0.0.1",
        )
    store = store if store is not None else open_store(config.audit_path or ":memory:")
    serving = Serving(config, model, store, keys, Metrics())
    page = PageHandlers(serving)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        log.info("draining the engine queue")
        if not serving.queue.close(timeout=config.drain_timeout_s):
            log.warning("requests were still running after %.0f s", config.drain_timeout_s)

    app = FastAPI(title="medgem", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.serving = serving

    async def on_error(request: HttpRequest, exc: Exception) -> Response:
        return error_response(exc)

    app.add_exception_handler(MedgemError, on_error)
    app.add_exception_handler(Exception, on_error)  # Starlette routes this one to its 500 layer

    app.add_api_route("/v1/chat/completions", serving.chat_completions, methods=["POST"])
    app.add_api_route("/api/ask", page.ask, methods=["POST"])
    async def preview(request: HttpRequest) -> Response:
        # Previews decode whole uploads beside the engine: a bounded pool, 429 beyond it.
        try:
            serving.authenticate(request)
            with serving.previews.admit():
                return await page.preview(request)
        except MedgemError as exc:
            serving.metrics.count_request("/api/preview", exc.status)
            return error_response(exc)

    app.add_api_route("/api/preview", preview, methods=["POST"])
    app.add_api_route("/api/reviews", page.review, methods=["POST"])
    app.add_api_route("/api/records/{record_id}", page.record, methods=["GET"])
    app.add_api_route("/api/info", page.info, methods=["GET"])

    @app.get("/v1/models")
    async def models(request: HttpRequest) -> Response:
        try:
            serving.authenticate(request)
        except MedgemError as exc:
            return error_response(exc)
        card = serving.model_card()
        return JSONResponse({"object": "list", "data": [card.model_dump()]})

    document = openapi_document("medgem", __version__)

    @app.get("/openapi.json")
    async def openapi() -> Response:
        return JSONResponse(document)

    @app.get("/healthz")
    async def healthz() -> Response:
        queue = serving.queue
        status = "draining" if queue.draining else "ok"
        body = {"status": status, "model": serving.served_name, "waiting": queue.waiting,
                "busy": queue.running > 0, "running": queue.running}
        backends = getattr(serving.model.engine, "backends", None)  # a remote front's servers
        if backends is not None:
            body["backends"] = backends
        return JSONResponse(body, status_code=503 if queue.draining else 200)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(serving.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    static = resources.files("medgem.server") / "static"

    @app.get("/")
    async def index() -> Response:
        return FileResponse(str(static / "index.html"), headers=_PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
    async def not_found(path: str) -> Response:
        return JSONResponse({"error": {"message": f"no route /{path}", "type": "not_found_error",
                                       "param": None, "code": "not_found"}}, status_code=404)

    if config.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins),
                           allow_methods=["GET", "POST"], allow_headers=["authorization", "content-type"])
    app.add_middleware(SecurityHeaders)
    return app


class SecurityHeaders:
    """Adds nosniff and no-referrer to every response (pure ASGI: streaming stays untouched)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {name.lower() for name, _ in headers}
                for name, value in (("x-content-type-options", "nosniff"), ("referrer-policy", "no-referrer")):
                    if name.encode() not in names:
                        headers.append((name.encode(), value.encode()))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)
