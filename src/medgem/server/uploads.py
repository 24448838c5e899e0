"""What the web page sends: one upload (photo, DICOM, zipped series, PDF) as a data URL.

:func:`read_upload` is the one call that reads an upload, within the server's reading limits
(``ServerConfig.imaging``). ``/api/ask`` takes volumes too, which chat messages cannot carry.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from typing import Any

from medgem.api import MedGemma, imaging_options
from medgem.errors import ImageInputError
from medgem.inputs import ImagingOptions, Inputs, Upload, decode_data_url, read_inputs
from medgem.inputs.limits import check_declared_pictures
from medgem.request import Request
from medgem.request.compose import request_for_inputs
from medgem.server import protocol as p
from medgem.server.server_config import ServerConfig
from medgem.structured import Constraint

PREVIEW_SIDE = 448  # px; the model sees 896, the page shows half
PREVIEW_MAX = 6  # images shown for a series
_UPLOAD_TYPES = frozenset({"application/dicom", "application/zip", "application/x-zip-compressed",
                           "application/octet-stream", "application/pdf"})


def read_upload(url: str, name: str | None, options: ImagingOptions) -> Inputs:
    """The upload's images; messages name the file as the user knows it (``name``)."""
    data, mime = decode_data_url(url, "image")
    shown = name or "the upload"
    if mime and not (mime.startswith("image/") or mime in _UPLOAD_TYPES):
        raise ImageInputError(f"{shown} is a '{mime}' file: that type is not supported",
                              "attach a PNG, JPEG, DICOM or a zipped DICOM series")
    check_declared_pictures([(shown, data)], options)  # the header's size, before any pixel
    loaded = read_inputs([Upload(data, mime, name or "upload")], options)
    if not loaded.images:
        raise ImageInputError(f"{shown} holds no image", "attach a PNG, JPEG, DICOM or a zipped DICOM series")
    return loaded


def ask_request(body: p.AskRequest, model: MedGemma, config: ServerConfig,
                cancelled: Callable[[], bool], constraint: Constraint | None = None) -> Request:
    """The Request for the page's question about its upload (if any), its answer constrained
    to ``constraint`` when given."""
    options = body.generation_options(constraint)  # a bad stop string is refused before any reading
    reading = imaging_options(config.imaging, cancelled=cancelled)
    loaded = read_upload(body.image, body.name, reading) if body.image is not None else Inputs()
    alone = loaded.layout != "images"  # a volume or a slide is one input, however many images
    if not alone and len(loaded.images) > config.max_images:
        raise ImageInputError(f"{len(loaded.images)} images sent, the limit is {config.max_images}")
    return request_for_inputs(body.question, loaded, system=body.system, chat=model.chat_model,
                              variant=model.variant, options=options)


def preview(body: p.PreviewRequest, config: ServerConfig) -> p.Preview:
    """The preprocessed images (as PNG data URLs) the model will see for an upload."""
    loaded = read_upload(body.image, body.name, config.imaging)
    count = len(loaded.images)
    step = max(1, count / PREVIEW_MAX)
    picked = sorted({min(count - 1, int(i * step + step / 2)) for i in range(min(count, PREVIEW_MAX))}) if count > 1 else [0]
    images = []
    for index in picked:
        image = loaded.images[index].copy()
        image.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        images.append(p.PreviewImage(url="data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"),
                                     index=index + 1, width=loaded.images[index].width,
                                     height=loaded.images[index].height))
    modalities = sorted({m for m in loaded.modalities if m})
    return p.Preview(images=images, count=count, volume=loaded.volume_modality, modalities=modalities)


def ask_messages(body: p.AskRequest) -> list[dict[str, Any]]:
    """The page's question as one OpenAI user message (what the record's digests read)."""
    content: list[dict[str, Any]] = []
    if body.image:
        content.append({"type": "image_url", "image_url": {"url": body.image}})
    content.append({"type": "text", "text": body.question})
    return [{"role": "user", "content": content}]
