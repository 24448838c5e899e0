"""The FastAPI app: :mod:`routes` on the model's :class:`Serving`.

``create_app(config, model)`` wires the API keys, metrics and the engine queue; start-up warms
the engine before the server says it serves; shutting down drains the queue (uvicorn first lets
in-flight requests finish).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware

from medgem import __version__
from medgem.api import MedGemma
from medgem.errors import InputError, MedgemError
from medgem.server.auth import KeyStore
from medgem.server.metrics import Metrics
from medgem.server.middleware import BodyLimit, SecurityHeaders
from medgem.server.ollama import router as ollama_router
from medgem.server.routes import router
from medgem.server.server_config import ServerConfig
from medgem.server.serving import Serving

log = logging.getLogger("medgem.server")


def create_app(config: ServerConfig, model: MedGemma, *, keys: KeyStore | None = None) -> FastAPI:
    """Build the app.

    Args:
        config: server settings.
        model: the loaded model, with its audit trail (every answer's record goes to its
            store); the app does not close it.
        keys: an API key store (default: from ``config.api_key_file``).

    Raises:
        InputError: binding beyond loopback without any active API key, or a model without an audit trail.
    """
    if keys is None and config.api_key_file is not None:
        keys = KeyStore(config.api_key_file)
    if not config.loopback and (keys is None or not keys.active()):
        raise InputError(
            f"binding to {config.host} exposes the model to the network, which needs API keys",
            "make one with `medgem keys add NAME` and pass --api-key-file, or bind to 127.0.0.1",
        )
    serving = Serving(config, model, keys, Metrics())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(serving.mark_interrupted)
        loop = asyncio.get_running_loop()
        _on_shutdown_signal(lambda: loop.call_soon_threadsafe(serving.begin_drain))
        await asyncio.to_thread(serving.warm_up)
        yield
        log.info("draining the engine queue")
        if not serving.queue.close(timeout=config.drain_timeout_s):
            log.warning("requests were still running after %.0f s", config.drain_timeout_s)

    app = FastAPI(title="medgem", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="medgem's OpenAI-compatible API and its web page's endpoints. "
                              "Every refusal is an OpenAI-style error body.")
    app.state.serving = serving
    app.include_router(ollama_router)  # before routes.py's catch-all 404
    app.include_router(router)
    app.openapi = lambda: _without_422(app)  # type: ignore[method-assign]
    for kind in (RequestValidationError, HTTPException, MedgemError):
        app.add_exception_handler(kind, serving.refuse)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, serving.refuse)  # Starlette routes this one to its 500 layer
    app.add_middleware(BodyLimit, limit=config.max_body_bytes)
    if config.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins),
                           allow_methods=["GET", "POST"], allow_headers=["authorization", "content-type"])
    app.add_middleware(SecurityHeaders)
    return app


def _on_shutdown_signal(hook: Callable[[], object]) -> None:
    """Call ``hook`` first when SIGTERM or SIGINT arrives, then the handler the ASGI server
    installed (uvicorn's, which starts its graceful shutdown and restores the old handlers
    when it ends). Only the main thread can take signals: elsewhere (a server in a thread)
    this does nothing and the queue drains at shutdown as before."""
    if threading.current_thread() is not threading.main_thread():
        return
    for number in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(number)
        if not callable(previous):
            continue

        def handler(signum: int, frame: object, previous: Callable[..., object] = previous) -> None:
            hook()
            previous(signum, frame)

        signal.signal(number, handler)


def _without_422(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, less the 422 it adds to every operation: refusals here are 400s
    (the exception handler), each documented on its route."""
    if app.openapi_schema is None:
        document = FastAPI.openapi(app)
        for operations in document["paths"].values():
            for operation in operations.values():
                operation["responses"].pop("422", None)
        for name in ("HTTPValidationError", "ValidationError"):
            document["components"]["schemas"].pop(name, None)
    return app.openapi_schema or {}
