"""Build the prompts MedGemma was trained on: system turn, thinking instruction, images, slices.

Pure functions from a question (and images) to a Request; no engine or model code here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from medgem.errors import InputError, UnsupportedInputError
from medgem.request import GenerationOptions, ImagePart, Message, Part, Request, TextPart
from medgem.request.thinking import THINK_INSTRUCTION
from medgem.request.variants import InputKind, Variant, default_budget

if TYPE_CHECKING:
    from PIL import Image

    from medgem.inputs import Inputs

RADIOLOGIST_SYSTEM = "You are an expert radiologist."
ASSISTANT_SYSTEM = "You are a helpful medical assistant."
IMAGE_TOKEN_MARK = "<start_of_image>"

# Default questions for `medgem describe`, by DICOM modality (None: a photo or unknown).
DESCRIBE_PROMPTS: dict[str | None, str] = {
    "CR": "Describe this X-ray", "DX": "Describe this X-ray",
    "CT": "Describe the findings in this CT scan.", "MR": "Describe the findings in this MRI.",
    "US": "Describe this ultrasound image.", "SM": "Describe this pathology image.",
    "DOC": "Summarise this document, listing any lab values with their units.",
    None: "Describe this medical image.",
}
_INSTRUCTOR = "You are an instructor teaching medical students."
#: What the model is told a sequence of images is, by modality: CT and MR as MedGemma 1.5 was
#: trained; the others say truthfully what the images are (a cine loop is frames in time, not
#: slices through the body).
VOLUME_INSTRUCTION = {
    "CT": f"{_INSTRUCTOR} You are analyzing a contiguous block "
    "of CT slices. Please review the slices provided below carefully.",
    "MR": f"{_INSTRUCTOR} You are analyzing a contiguous block "
    "of MRI slices. Please review the slices provided below carefully.",
    "US": f"{_INSTRUCTOR} You are analyzing frames of an ultrasound cine loop, in time order. "
    "Please review the frames provided below carefully.",
    "XA": f"{_INSTRUCTOR} You are analyzing frames of an X-ray angiography run, in time order. "
    "Please review the frames provided below carefully.",
    "RF": f"{_INSTRUCTOR} You are analyzing frames of a fluoroscopy run, in time order. "
    "Please review the frames provided below carefully.",
    "RTDOSE": f"{_INSTRUCTOR} You are analyzing planes of a radiotherapy dose grid, shown as "
    "grey images (brighter means a higher dose); they are not images of the patient. Please "
    "review the planes provided below carefully.",
    "SEG": f"{_INSTRUCTOR} You are analyzing frames of a segmentation mask (bright pixels are "
    "labelled regions); they are not images of the patient. Please review the frames provided "
    "below carefully.",
}
#: Modalities whose images are frames in time (or mask frames): each is followed by FRAME n.
FRAME_MODALITIES = frozenset({"US", "XA", "RF", "IVUS", "ES", "SEG"})


def volume_instruction(modality: str | None) -> str:
    """What the model is told before a sequence of images of ``modality`` (None: CT)."""
    key = (modality or "CT").upper()
    if key in VOLUME_INSTRUCTION:
        return VOLUME_INSTRUCTION[key]
    if key in FRAME_MODALITIES:
        return (f"{_INSTRUCTOR} You are analyzing a sequence of {key} frames, in order. Please "
                "review the frames provided below carefully.")
    return (f"{_INSTRUCTOR} You are analyzing a contiguous block of {key} slices. Please review "
            "the slices provided below carefully.")


def sequence_marker(modality: str | None) -> str:
    """The word after each image of a sequence: SLICE (CT, MR, other volumes) or FRAME."""
    return "FRAME" if (modality or "").upper() in FRAME_MODALITIES else "SLICE"


def shipped_chat_template() -> str:
    """The Gemma 3 chat template medgem ships for checkpoints (and GGUFs) that lack one."""
    from importlib import resources

    return resources.files("medgem.templates").joinpath("gemma3_chat_template.jinja").read_text()


def describe_prompt(modality: str | None) -> str:
    """The default question `medgem describe` asks for a modality."""
    return DESCRIBE_PROMPTS.get((modality or "").upper() or None, DESCRIBE_PROMPTS[None])


def chat_request(system: str | None, turns: Sequence[Message],
                 options: GenerationOptions) -> Request:
    """A chat Request: the system turn, with the thinking instruction in front when asked (the
    text kept as given, a trailing newline too: Gemma 3's template does not trim it), then
    ``turns``; no system turn when there is no text for one."""
    if options.think:
        system = f"{THINK_INSTRUCTION} {system.lstrip()}" if system else THINK_INSTRUCTION
    head = (Message("system", (TextPart(system),)),) if system else ()
    return Request((*head, *turns), options)


def check_think(variant: Variant | None, think: bool) -> None:
    """Refuse --think for a variant that was not trained to think (unknown models may try)."""
    if think and variant is not None and not variant.thinking:
        raise UnsupportedInputError(
            f"medgemma-{variant.key} does not support thinking mode",
            "drop --think, or use medgemma-27b-text-it, medgemma-27b-it or medgemma-1.5-4b-it",
        )


def check_question(question: str) -> str:
    if not isinstance(question, str):
        raise InputError(f"the question must be text, not {type(question).__name__}",
                         "pass the question as a string")
    text = question.strip()
    if not text:
        raise InputError("the question is empty", "write what you want to ask the model")
    return text


def resolve_options(kind: InputKind, options: GenerationOptions | None,
                    variant: Variant | None) -> GenerationOptions:
    """The options with the variant family's default budget for this input kind filled in.

    Raises:
        UnsupportedInputError: thinking asked of a variant that was not trained to think.
    """
    options = options or GenerationOptions()
    check_think(variant, options.think)
    if options.max_new_tokens is not None:
        return options
    return replace(options, max_new_tokens=default_budget(kind, options.think))


def build_request(question: str, *, images: Sequence[Image.Image] = (), sources: Sequence[str] = (),
                  system: str | None = None, chat: bool = True, variant: Variant | None = None,
                  history: Sequence[Message] = (),
                  options: GenerationOptions | None = None) -> Request:
    """One question, optionally with images, as the official quick start builds it.

    Args:
        question: the user's text.
        images: RGB images, in order (longitudinal studies: oldest first).
        sources: a display name per image (file names, never PHI).
        system: the system prompt; None for none.
        chat: False for pre-trained checkpoints: a completion prompt, no chat template.
        variant: the recognised variant, for checks and budgets.
        history: earlier turns of a chat (system turn excluded).
        options: how to generate; ``think`` prefixes the thinking instruction (thinking
            variants only); a missing budget becomes the variant family's default.

    Returns:
        The Request: [system], history, user(images..., question).
    """
    text = check_question(question)
    image_parts: list[Part] = [
        ImagePart(img, sources[i] if i < len(sources) else "") for i, img in enumerate(images)
    ]
    kind: InputKind = "text"
    if len(images) == 2:
        kind = "longitudinal"
    elif images:
        kind = "image"
    options = resolve_options(kind, options, variant)
    if not chat:
        # Pre-trained models continue text; each image is marked where it stands.
        parts: list[Part] = []
        for part in image_parts:
            parts += [part, TextPart(IMAGE_TOKEN_MARK)]
        parts.append(TextPart(text))
        return Request((Message("user", tuple(parts)),), options, template="completion")
    return chat_request(system, (*history, Message("user", (*image_parts, TextPart(text)))),
                        options)


def build_volume_request(question: str, slices: Sequence[Image.Image], *,
                         modality: str | None = "CT", instruction: str | None = None,
                         variant: Variant | None = None,
                         options: GenerationOptions | None = None) -> Request:
    """A CT/MR volume the way MedGemma 1.5 reads it (and other sequences in the same layout).

    One user turn, no system turn: the instruction, then each slice followed by ``SLICE n``
    (1-based), then the question last (asked first, CT answers read like X-ray reports). Other
    modalities get their own truthful instruction (``volume_instruction``); frames in time (an
    ultrasound cine loop) are followed by ``FRAME n`` instead.
    """
    text = check_question(question)
    options = resolve_options("volume", options, variant)
    if not slices:
        raise InputError("the volume has no slices", "check the series with `medgem inspect`")
    lead = instruction or volume_instruction(modality)
    if options.think:
        lead = f"{THINK_INSTRUCTION} {lead}"
    parts: list[Part] = [TextPart(lead)]
    marker = sequence_marker(modality)
    for number, image in enumerate(slices, start=1):
        parts += [ImagePart(image, f"{marker.lower()} {number}"), TextPart(f"{marker} {number}")]
    parts.append(TextPart(text))
    return Request((Message("user", tuple(parts)),), options, layout="volume")


def request_for_inputs(question: str, loaded: Inputs, *, system: str | None = None,
                       chat: bool = True, variant: Variant | None = None,
                       history: Sequence[Message] = (),
                       options: GenerationOptions | None = None) -> Request:
    """The Request for a question about what the inputs front door read, in the layout it
    carries: the pathology layout for a slide's patches, the volume layout for a CT/MR volume
    or cine loop, the image layout otherwise (one place for every surface). Text the inputs
    carry (a PDF's text layer) goes before the question."""
    check_question(question)  # before the text layer is put in front of it
    if loaded.layout == "slide":
        return build_slide_request(question, loaded.images, variant=variant, options=options)
    if loaded.text:
        question = f"{loaded.text}\n\n{question}"
    if loaded.layout == "volume":
        return build_volume_request(question, loaded.images, modality=loaded.volume_modality,
                                    variant=variant, options=options)
    return build_request(question, images=loaded.images, sources=loaded.sources, system=system,
                         chat=chat, variant=variant, history=history, options=options)


#: The pathology notebook's framing: an instructor describing patches taken from one slide.
PATHOLOGY_INSTRUCTION = (
    "You are an instructor teaching medical students. You are analyzing a set of pathology "
    "patches extracted from a pathology slide. Please review the patches provided below carefully."
)


def build_slide_request(question: str, patches: Sequence[Image.Image], *,
                        instruction: str | None = None, variant: Variant | None = None,
                        options: GenerationOptions | None = None) -> Request:
    """A whole-slide image the way the official pathology notebook lays it out.

    One user turn, no system turn: the text first (the instructor framing, then the question),
    then every patch in reading order (``patch n`` as its display name, no text between them).
    The answer budget is the volume one (many images, a long description).
    """
    text = check_question(question)
    options = resolve_options("volume", options, variant)
    if not patches:
        raise InputError("the slide has no patches", "check it with `medgem inspect`")
    lead = instruction or PATHOLOGY_INSTRUCTION
    if options.think:
        lead = f"{THINK_INSTRUCTION} {lead}"
    parts: list[Part] = [TextPart(f"{lead}\n\n{text}")]
    parts += [ImagePart(image, f"patch {n}") for n, image in enumerate(patches, start=1)]
    return Request((Message("user", tuple(parts)),), options, layout="slide")
