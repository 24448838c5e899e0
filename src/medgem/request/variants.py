"""The MedGemma family as data: what each variant takes, whether it thinks, its budgets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

InputKind = Literal["text", "image", "volume", "longitudinal"]


#: Gemma 3's context window (prompt + answer tokens): every MedGemma variant's, and the fallback
#: when a checkpoint or server does not say its own.
GEMMA3_CONTEXT = 131072


@dataclass(frozen=True)
class Variant:
    """One MedGemma checkpoint family member.

    Attributes:
        key: short name used on the command line ("4b-it").
        hf_id: the gated Hugging Face repository.
        multimodal: takes images (Gemma3ForConditionalGeneration) or text only (causal LM).
        instruction_tuned: chat model ("it") or pre-trained completion model ("pt").
        thinking: supports the silent-thinking instruction.
        thinks_unprompted: may emit a thought without being asked.
        params_b: parameters in billions (text + vision), for memory estimates.
        inputs: what it reads, for `medgem models`.
        context_length: the model's context window (Gemma 3: 128k tokens).
        max_output_tokens: the longest answer a backend should be sized for.
    """

    key: str
    hf_id: str
    multimodal: bool
    instruction_tuned: bool
    thinking: bool
    params_b: float
    inputs: str
    thinks_unprompted: bool = False
    context_length: int = GEMMA3_CONTEXT
    max_output_tokens: int = 8192


VARIANTS: tuple[Variant, ...] = (
    Variant("4b-it", "google/medgemma-4b-it", True, True, False, 4.3,  # card v1.0.1 fixed its
            "image + text (CXR, dermatology, ophthalmology, pathology)"),  # end-of-image token
    Variant("4b-pt", "google/medgemma-4b-pt", True, False, False, 4.3,
            "image + text (completion prompts, no chat)"),
    Variant("27b-text-it", "google/medgemma-27b-text-it", False, True, True, 27.0,
            "text only (clinical reasoning)"),
    Variant("27b-it", "google/medgemma-27b-it", True, True, True, 27.4, "image + text, EHR/FHIR"),
    Variant("1.5-4b-it", "google/medgemma-1.5-4b-it", True, True, True, 4.3,
            "image + text, CT/MR volumes, WSI, longitudinal CXR, boxes, documents",
            thinks_unprompted=True),
)

ALIASES: dict[str, str] = {
    "4b": "4b-it", "27b": "27b-text-it", "27b-text": "27b-text-it", "1.5": "1.5-4b-it",
    "1.5-4b": "1.5-4b-it",
}

# max_new_tokens defaults, from the official quick start (image 300/1300, text 500/1500) and
# the volume and longitudinal notebooks (2000, ~600).
_BUDGETS: dict[tuple[InputKind, bool], int] = {
    ("text", False): 500, ("text", True): 1500, ("image", False): 300, ("image", True): 1300,
    ("volume", False): 2000, ("volume", True): 2000, ("longitudinal", False): 600,
    ("longitudinal", True): 1600,
}


def find_variant(name_or_id: str) -> Variant | None:
    """Look a variant up by key, alias or exact Hugging Face id (case-insensitive)."""
    wanted = name_or_id.strip().lower()
    wanted = ALIASES.get(wanted, wanted)
    for variant in VARIANTS:
        if wanted in (variant.key, variant.hf_id.lower(), variant.hf_id.lower().split("/")[-1]):
            return variant
    return None


def default_budget(kind: InputKind, think: bool) -> int:
    """The default max_new_tokens for an input kind, with or without thinking."""
    return _BUDGETS[(kind, think)]
