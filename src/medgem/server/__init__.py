"""The OpenAI-compatible HTTP server, its web page, API keys, metrics and engine queue.

``create_app(config, model)`` in :mod:`medgem.server.app` builds the ASGI app; ``medgem serve``
runs it with uvicorn.
"""
