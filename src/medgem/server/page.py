"""The web page's own endpoints: ask about one upload, preview it, review answers.

``/api/ask`` takes what a clinician attaches (photo, DICOM, zipped series: volumes too, which
chat messages cannot carry) and streams the answer in the chat-completion chunk format.
"""

from __future__ import annotations

import asyncio
import base64
import io
import threading
from dataclasses import replace
from typing import Any

from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, Response

from medgem.audit import add_review
from medgem.errors import ApiError, ImageInputError, InputCancelled, MedgemError
from medgem.inputs import ImagingOptions, LoadedImages, decode_data_url, images_from_bytes
from medgem.request import Request
from medgem.request.compose import request_for_inputs
from medgem.server import protocol as p
from medgem.server.errors import error_response
from medgem.server.records import digest_inputs
from medgem.server.serving import Serving, check_present, watch_client

PREVIEW_SIDE = 448  # px; the model sees 896, the page shows half
PREVIEW_MAX = 6  # images shown for a series
_UPLOAD_TYPES = frozenset({"application/dicom", "application/zip", "application/x-zip-compressed",
                           "application/octet-stream", "application/pdf"})


class PageHandlers:
    """Handlers behind the web page; they share the chat endpoint's queue and audit store."""

    def __init__(self, serving: Serving) -> None:
        self.serving = serving

    async def info(self, http: HttpRequest) -> Response:
        """What the page shows before any question: model, label, caveat, limits."""
        s = self.serving
        try:
            s.authenticate(http)
        except MedgemError:  # with keys on, the page learns only that it must ask for one
            return JSONResponse({"auth_required": True}, status_code=401)
        card = s.model_card()
        return JSONResponse({
            "model": s.served_name, "label": card.medgem["label"], "caveat": card.medgem["caveat"],
            "images": card.medgem["images"], "thinking": card.medgem["thinking"],
            "engine": s.info.engine, "revision": s.info.revision, "auth_required": s.keys is not None,
            "limits": {"max_body_bytes": s.config.max_body_bytes, "max_new_tokens": s.config.max_new_tokens},
        })

    async def ask(self, http: HttpRequest) -> Response:
        s = self.serving
        endpoint = "/api/ask"
        try:
            user = s.authenticate(http)
        except MedgemError as exc:
            s.metrics.count_request(endpoint, exc.status)
            return error_response(exc)
        inputs: list[dict[str, Any]] | None = None
        try:
            body = await s.read_body(http, p.AskRequest)
            content: list[dict[str, Any]] = []
            if body.image:
                content.append({"type": "image_url", "image_url": {"url": body.image}})
            content.append({"type": "text", "text": body.question})
            messages = [{"role": "user", "content": content}]
            inputs = digest_inputs(messages)
            s.check_budget(body.max_tokens)
        except MedgemError as exc:
            return await s.reject(user, endpoint, exc, inputs)
        # A client that leaves while its upload is decoded stops the reading (and is a 499).
        async with watch_client(http) as gone:
            try:
                request = await asyncio.to_thread(self._request, body, gone)
            except MedgemError as exc:
                return await s.reject(user, endpoint, exc, inputs)
            return await s.run(http, request, user=user, endpoint=endpoint, inputs=inputs,
                               messages=messages, stream=True, include_usage=True, cancel=gone)

    def _request(self, body: p.AskRequest, gone: threading.Event) -> Request:
        s = self.serving
        model = s.model
        options = body.generation_options()
        try:
            loaded = (_load(body.image, body.name, replace(s.config.imaging, cancelled=gone.is_set))
                      if body.image is not None else LoadedImages())
        except InputCancelled:
            check_present(gone, "while its inputs were read")
            raise
        alone = loaded.volume_modality is not None or loaded.layout is not None
        if not alone and len(loaded.images) > s.config.max_images:
            raise ImageInputError(f"{len(loaded.images)} images sent, the limit is {s.config.max_images}")
        return request_for_inputs(body.question, loaded, system=body.system, chat=model.chat_model,
                                  variant=model.variant, options=options)

    async def preview(self, http: HttpRequest) -> Response:
        """The preprocessed images (as PNG data URLs) the model will see for an upload."""
        s = self.serving
        try:
            s.authenticate(http)
            body = await s.read_body(http, p.PreviewRequest)
            result = await asyncio.to_thread(_preview, body.image, body.name, s.config.imaging)
        except MedgemError as exc:
            s.metrics.count_request("/api/preview", exc.status)
            return error_response(exc)
        s.metrics.count_request("/api/preview", 200)
        return JSONResponse(result)

    async def review(self, http: HttpRequest) -> Response:
        """Append a review (accept / correct / reject) linked to an answer record."""
        s = self.serving
        try:
            user = s.authenticate(http)
            body = await s.read_body(http, p.ReviewRequest)
            answer = await asyncio.to_thread(s.store.get, body.record_id)
            if answer is None or answer.kind != "answer" or not s.may_read(user, answer):
                raise ApiError(404, f"no answer record '{body.record_id}'", code="record_not_found", param="record_id")
            # With keys, the reviewer is the key: a name typed in the form cannot stand for another.
            reviewer = user if s.keys is not None else (body.reviewer or user)
            record = await asyncio.to_thread(
                add_review, s.store, body.record_id, body.verdict, correction=body.correction,
                note=body.note, reviewer=reviewer, user=user)
        except MedgemError as exc:
            s.metrics.count_request("/api/reviews", exc.status)
            return error_response(exc)
        s.metrics.count_request("/api/reviews", 201)
        return JSONResponse(record.to_dict(), status_code=201)

    async def record(self, http: HttpRequest) -> Response:
        """One audit record with its reviews."""
        s = self.serving
        try:
            user = s.authenticate(http)
            record_id = http.path_params["record_id"]
            record = await asyncio.to_thread(s.store.get, record_id)
            if record is None or not s.may_read(user, record):  # 404 either way: ids leak nothing
                raise ApiError(404, f"no audit record '{record_id}'", code="record_not_found")
            reviews = await asyncio.to_thread(s.store.children, record_id)
        except MedgemError as exc:
            return error_response(exc)
        return JSONResponse(record.to_dict() | {"reviews": [r.to_dict() for r in reviews]})


def _load(url: str, name: str | None = None, options: ImagingOptions | None = None) -> LoadedImages:
    """The upload's images; messages name the file as the user knows it (``name``)."""
    data, mime = decode_data_url(url)
    shown = name or "the upload"
    if mime and not (mime.startswith("image/") or mime in _UPLOAD_TYPES):
        raise ImageInputError(f"{shown} is a '{mime}' file: that type is not supported",
                              "attach a PNG, JPEG, DICOM or a zipped DICOM series")
    loaded = images_from_bytes(data, mime, name=name or "upload", options=options)
    if not loaded.images:
        raise ImageInputError(f"{shown} holds no image", "attach a PNG, JPEG, DICOM or a zipped DICOM series")
    return loaded


def _preview(url: str, name: str | None = None, options: ImagingOptions | None = None) -> dict[str, Any]:
    loaded = _load(url, name, options)
    count = len(loaded.images)
    step = max(1, count / PREVIEW_MAX)
    picked = sorted({min(count - 1, int(i * step + step / 2)) for i in range(min(count, PREVIEW_MAX))}) if count > 1 else [0]
    images = []
    for index in picked:
        image = loaded.images[index].copy()
        image.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        images.append({"url": "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"),
                       "index": index + 1, "width": loaded.images[index].width,
                       "height": loaded.images[index].height})
    modalities = sorted({m for m in loaded.modalities if m})
    return {"images": images, "count": count, "volume": loaded.volume_modality, "modalities": modalities}
