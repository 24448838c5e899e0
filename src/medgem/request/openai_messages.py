"""OpenAI-style chat messages -> a Request (the Python ``chat`` API and the HTTP server)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from medgem.errors import ImageInputError, InputError
from medgem.inputs import ImagingOptions, InputItem, Inputs, read_inputs, try_data_url
from medgem.inputs.limits import check_declared_pictures
from medgem.request import GenerationOptions, ImagePart, Message, Part, Request, TextPart
from medgem.request.compose import (
    build_slide_request,
    build_volume_request,
    chat_request,
    check_think,
    resolve_options,
)
from medgem.request.variants import InputKind, Variant

MAX_IMAGES = 16
SYSTEM_SEPARATOR = "\n\n"  # what Gemma 3's template puts between the system text and the question


def request_from_openai(messages: Sequence[dict[str, Any]], *, variant: Variant | None = None,
                        chat: bool = True, options: GenerationOptions | None = None,
                        allowed_dirs: Sequence[Path] | None = None,
                        max_images: int = MAX_IMAGES, imaging: ImagingOptions | None = None,
                        allowed_pacs: Sequence[str] | None = None,
                        fetched: list[Any] | None = None) -> Request:
    """Convert OpenAI chat messages (text, ``image_url`` data URLs, local images) to a Request.

    Args:
        messages: [{"role": "system"|"user"|"assistant", "content": str | list of parts}].
            Parts: {"type": "text"}, {"type": "image_url", "image_url": {"url": data URL or
            file path}}, {"type": "image", "image": PIL image or path}.
        options: how to generate; ``think`` adds the thinking instruction to the system turn.
        allowed_dirs: folders from which file paths may be read; None allows any (local use),
            an empty list forbids all (the server's default).
        max_images: refuse more images than this. A whole-slide image counts as one: it must be
            the only image, in a single user turn, and is laid out as the pathology notebook does
            (a system message, if any, replaces the instructor framing).
        imaging: how images are read (limits; ``cancelled`` stops reading when the client left).
        allowed_pacs: DICOMweb roots and ``dimse://AE@host:port`` peers that ``image_dicom``
            parts ({"type": "image_dicom", "image_dicom": {"dicom_source": URI or [URI, ...],
            "access_credential": bearer token}}, Google's serving container's shape) may name;
            None allows any (local use), empty forbids all (the server's default). Every part
            is checked before anything is fetched; a series of CT/MR slices must be the only
            image, in one user turn, and gets the volume layout.
        fetched: a list that receives what each ``image_dicom`` part fetched
            (``medgem.inputs.pacs.FetchedStudy``), for the caller's audit trail.

    Raises:
        InputError / ImageInputError: malformed messages or images.
    """
    if not messages:
        raise InputError("messages is empty", "send at least one user message")
    options = options or GenerationOptions()
    check_think(variant, options.think)
    check_declared_images(messages, max_images, imaging or ImagingOptions())
    system_parts: list[str] = []
    turns: list[Message] = []
    image_count = 0
    slides: list[Inputs] = []
    _check_pacs(messages, allowed_pacs)  # before any part is read: a refusal fetches nothing
    if chat:
        check_turns(messages)
    for index, raw in enumerate(messages):
        if not isinstance(raw, dict):
            raise InputError(f"messages[{index}] is not an object")
        role = raw.get("role")
        if role not in ("system", "developer", "user", "assistant"):
            raise InputError(f"messages[{index}].role must be system, user or assistant, got {role!r}")
        parts = list(_parts(raw.get("content"), index, allowed_dirs, slides, imaging, fetched))
        image_count += sum(isinstance(p, ImagePart) for p in parts)
        if role in ("system", "developer"):
            # parts joined as system turns are: by the blank line Gemma 3's template puts after one
            system_parts.append(SYSTEM_SEPARATOR.join(p.text for p in parts if isinstance(p, TextPart) and p.text))
            continue
        if role == "assistant" and any(isinstance(p, ImagePart) for p in parts):
            raise InputError(f"messages[{index}]: assistant messages cannot hold images")
        turns.append(Message(role, tuple(parts)))
    system = SYSTEM_SEPARATOR.join(s for s in system_parts if s) or None
    if slides:
        if len(slides) > 1 or image_count or len(turns) != 1:
            raise ImageInputError("a whole-slide image must be the only image, in one user message",
                                  "ask about the slide on its own, in a new conversation")
        if slides[0].layout == "volume":
            return build_volume_request(turns[0].text, slides[0].images, modality=slides[0].volume_modality,
                                        variant=variant, options=options)
        return build_slide_request(turns[0].text, slides[0].images, instruction=system,
                                   variant=variant, options=options)
    if image_count > max_images:
        raise ImageInputError(f"{image_count} images sent, the limit is {max_images}", "send fewer images")
    if not turns or turns[-1].role != "user":
        raise InputError("the last message must be the user's", "end messages with a user turn")
    if not turns[-1].text.strip() and not turns[-1].images:
        raise InputError("the last user message is empty", "type a question")
    kind: InputKind = "image" if image_count else "text"
    options = resolve_options(kind, options, variant)
    if not chat:
        return Request((turns[-1],), options, template="completion")
    return chat_request(system, turns, options)


_IMAGE_PARTS = ("image_url", "image")


def check_turns(messages: Sequence[Any]) -> None:
    """Refuse turns that do not alternate user, assistant, user, ... (system turns set aside), as
    Gemma 3's chat template requires: it raises on anything else, from inside the engine. Read
    before any part is, so a refusal fetches nothing; a malformed message is left to the reader.

    Raises:
        InputError: names the first turn out of place.
    """
    due = "user"
    for index, raw in enumerate(messages):
        role = raw.get("role") if isinstance(raw, dict) else None
        if role not in ("user", "assistant"):
            continue
        if role != due:
            article = "an" if role == "assistant" else "a"
            raise InputError(
                f"messages[{index}] is {article} {role} turn where the {due}'s was due: Gemma 3's "
                "turns alternate user/assistant, starting with the user",
                "merge consecutive turns of the same role into one", param=f"messages[{index}].role")
        due = "assistant" if role == "user" else "user"


def check_declared_images(messages: Sequence[dict[str, Any]], max_images: int, imaging: ImagingOptions) -> None:
    """What the messages declare, checked before any image is decoded: no image in a system
    turn, at most ``max_images`` image parts, then each data URL picture's header size (and
    their sum) against the reading limits. An archive that expands to more images is counted
    again once read.

    Raises:
        ImageInputError: an image in a system message, too many images, or too many pixels.
    """
    count = 0
    urls: list[tuple[str, str]] = []
    for index, raw in enumerate(messages):
        content = raw.get("content") if isinstance(raw, dict) else None
        if not isinstance(content, list):
            continue
        for number, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") not in _IMAGE_PARTS:
                continue
            where = f"messages[{index}].content[{number}]"
            if raw.get("role") in ("system", "developer"):
                raise ImageInputError(f"{where} is an image in a system message, which the model's template "
                                      "has no place for", "put the images in a user message")
            count += 1
            spec = part.get("image_url")
            url = spec.get("url") if isinstance(spec, dict) else spec
            if isinstance(url, str) and url.startswith("data:"):
                urls.append((where, url))
    if count > max_images:  # before even the base64 is decoded
        raise ImageInputError(f"{count} images sent, the limit is {max_images}", "send fewer images")
    pictures = [(where, decoded[0]) for where, url in urls if (decoded := try_data_url(url)) is not None]
    check_declared_pictures(pictures, imaging)


def _parts(content: Any, index: int, allowed_dirs: Sequence[Path] | None,
           slides: list[Inputs], imaging: ImagingOptions | None,
           fetched: list[Any] | None = None) -> Iterator[Part]:
    if isinstance(content, str):
        yield TextPart(content)
        return
    if content is None:
        return
    if not isinstance(content, list):
        raise InputError(f"messages[{index}].content must be a string or a list of parts")
    # The words asked beside a study choose its series, as `medgem ask --study` does with its
    # question: the same question about the same study reads the same series. The message's own
    # text, not the conversation's last turn, so a follow-up keeps the series the first answer saw.
    question = " ".join(piece["text"] for piece in content if isinstance(piece, dict)
                        and piece.get("type") == "text" and isinstance(piece.get("text"), str))
    for number, part in enumerate(content):
        where = f"messages[{index}].content[{number}]"
        if not isinstance(part, dict):
            raise InputError(f"{where} is not an object")
        kind = part.get("type")
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise InputError(f"{where}.text must be a string")
            yield TextPart(text)
        elif kind == "image_url":
            spec = part.get("image_url")
            url = spec.get("url") if isinstance(spec, dict) else spec
            if not isinstance(url, str):
                raise InputError(f"{where}.image_url.url must be a string")
            yield from _image_parts(url, where, slides, allowed_dirs, imaging)
        elif kind == "image":
            image = part.get("image")
            if not isinstance(image, (str, Path, Image.Image)):
                raise InputError("an image part must hold a PIL image or a file path")
            # a str here is a path, never a data URL
            path_or_image = Path(image) if isinstance(image, str) else image
            yield from _image_parts(path_or_image, where, slides, allowed_dirs, imaging)
        elif kind == "image_dicom":
            for reference in _dicom_references(part.get("image_dicom"), where):
                yield from _image_parts(reference, where, slides, allowed_dirs, imaging, fetched, question)
        else:
            raise InputError(f"{where}.type {kind!r} is not supported", "use text or image_url parts")


def _image_parts(item: InputItem, where: str, slides: list[Inputs],
                 allowed_dirs: Sequence[Path] | None, imaging: ImagingOptions | None,
                 fetched: list[Any] | None = None, question: str | None = None) -> Iterator[ImagePart]:
    from medgem.inputs.pacs import StudyReference

    loaded = read_inputs([item], imaging, allowed_dirs=allowed_dirs, question=question)
    if fetched is not None:
        fetched.extend(loaded.studies)
    if loaded.layout == "slide" or (loaded.layout == "volume" and isinstance(item, StudyReference)):
        slides.append(loaded)  # laid out once the whole request is read: it must be alone
        return
    if loaded.layout == "volume":
        raise ImageInputError(
            f"{where} is a CT/MR volume; volumes are not accepted inside chat messages",
            "use `medgem ask --image SERIES` or the web page for volumes",
        )
    for image, source in zip(loaded.images, loaded.sources, strict=True):
        yield ImagePart(image, source)


def _dicom_references(spec: Any, where: str) -> list[Any]:
    """An ``image_dicom`` part's URIs as study references carrying its bearer token."""
    from medgem.inputs.pacs import parse_study_reference

    if not isinstance(spec, dict) or not spec.get("dicom_source"):
        raise InputError(f"{where}.image_dicom must be an object with dicom_source",
                         'send {"dicom_source": "https://…/studies/…/series/…", "access_credential": "TOKEN"}')
    sources = spec["dicom_source"]
    sources = [sources] if isinstance(sources, str) else sources
    token = spec.get("access_credential")
    if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources) or (
            token is not None and not isinstance(token, str)):
        raise InputError(f"{where}.image_dicom.dicom_source must be a URI or a list of URIs, "
                         "access_credential a string")
    return [parse_study_reference(source).with_access(token) for source in sources]


def _check_pacs(messages: Sequence[Any], allowed: Sequence[str] | None) -> None:
    """Refuse, before anything is fetched, every ``image_dicom`` URI outside the allowlist.

    Raises:
        PacsForbiddenError: a URI the operator did not allow (403).
    """
    from medgem.errors import PacsForbiddenError
    from medgem.inputs.pacs import is_allowed

    if allowed is None:
        return
    for index, raw in enumerate(messages):
        content = raw.get("content") if isinstance(raw, dict) else None
        for number, part in enumerate(content if isinstance(content, list) else []):
            if not isinstance(part, dict) or part.get("type") != "image_dicom":
                continue
            for reference in _dicom_references(part.get("image_dicom"), f"messages[{index}].content[{number}]"):
                if not is_allowed(reference, list(allowed)):
                    raise PacsForbiddenError(
                        f"{reference.where} is not a PACS this server may fetch from",
                        "ask the operator to allow it (medgem serve --allow-pacs URL)")
