"""Batches for supervised fine-tuning, by the official notebook's rules plus prompt masking.

The notebook's collate function applies the chat template, runs the processor (images
included), pads on the right, and sets the labels to -100 on padding and image tokens. Here the
labels are also -100 on every prompt token: the loss covers only what the model must learn to
write, each assistant turn's text and its ``<end_of_turn>`` (so it learns to stop). The chat
template already writes ``<bos>``, so the processor adds no special tokens (the notebook's
collate gets two BOS tokens).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medgem.tune.data import Example, Turn

IGNORE_INDEX = -100  # torch's cross-entropy skips these labels
ANSWER_START = "<start_of_turn>model\n"
TURN_END = "<end_of_turn>"
IMAGE_TOKENS = ("<start_of_image>", "<end_of_image>", "<image_soft_token>")


def load_image(ref: bytes | Path | str) -> Any:
    """An image reference as the evaluation harness reads it: through medgem's one inputs door
    (DICOM windowing, orientation, pixel limits), bytes like files.

    Raises:
        DatasetError: a series or volume (several images) where one image is expected.
        ImageInputError: an unreadable image.
    """
    from medgem.errors import DatasetError
    from medgem.inputs import Upload, read_inputs

    loaded = read_inputs([Upload(ref, name="dataset-image") if isinstance(ref, bytes) else Path(ref)])
    if loaded.volume_modality is not None or len(loaded.images) != 1:
        raise DatasetError(f"'{ref if isinstance(ref, Path) else 'an image'}' holds "
                           f"{len(loaded.images)} images (a series or volume)",
                           "train on single images; CT/MR volumes are not supported by tune yet")
    return loaded.images[0]


def hf_messages(turns: Sequence[Turn]) -> list[dict[str, Any]]:
    """Turns -> the chat-template messages transformers renders (images loaded)."""
    messages = []
    for turn in turns:
        content: list[dict[str, Any]] = []
        for part in turn.parts:
            if isinstance(part, str):
                content.append({"type": "text", "text": part})
            else:
                content.append({"type": "image", "image": load_image(part)})
        messages.append({"role": turn.role, "content": content})
    return messages


class ChatCollator:
    """Examples -> a padded batch with labels, for transformers' Trainer.

    Args:
        processor: the checkpoint's processor (multimodal) or tokenizer (text-only).
        multimodal: whether ``processor`` takes images.
        pixel_dtype: the vision tower's dtype (pixel values are cast to it), or None.
    """

    def __init__(self, processor: Any, *, multimodal: bool, pixel_dtype: Any = None) -> None:
        self.processor = processor
        self.tokenizer = processor.tokenizer if multimodal else processor
        self.tokenizer.padding_side = "right"  # the notebook trains right-padded
        self.multimodal = multimodal
        self.pixel_dtype = pixel_dtype
        encode = self.tokenizer.convert_tokens_to_ids
        self._answer_start = self.tokenizer(ANSWER_START, add_special_tokens=False).input_ids
        self._turn_end = int(encode(TURN_END))
        self._image_ids = {int(i) for i in (encode(t) for t in IMAGE_TOKENS)
                           if isinstance(i, int) and i != self.tokenizer.unk_token_id}

    def render(self, example: Example) -> tuple[str, list[Any]]:
        """The conversation as chat-template text, and its images in order."""
        messages = hf_messages(example.turns)
        text = self.processor.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=False)
        images = [p["image"] for m in messages for p in m["content"] if p["type"] == "image"]
        return text.rstrip(), images

    def __call__(self, examples: Sequence[Example]) -> dict[str, Any]:
        rendered = [self.render(e) for e in examples]
        texts = [text for text, _ in rendered]
        if self.multimodal and any(images for _, images in rendered):
            batch = self.processor(text=texts, images=[images for _, images in rendered],
                                   padding=True, add_special_tokens=False, return_tensors="pt")
            if self.pixel_dtype is not None:
                batch["pixel_values"] = batch["pixel_values"].to(self.pixel_dtype)
        else:
            batch = self.tokenizer(texts, padding=True, add_special_tokens=False,
                                   return_tensors="pt")
            if self.multimodal:  # Gemma 3 asks for token types when training, images or not
                batch["token_type_ids"] = batch["input_ids"].new_zeros(batch["input_ids"].shape)
        batch["labels"] = self.labels(batch["input_ids"], batch["attention_mask"])
        return dict(batch)

    def labels(self, input_ids: Any, attention_mask: Any) -> Any:
        """-100 everywhere except the assistant turns' tokens (their ``<end_of_turn>`` included).

        Shapes: input_ids, attention_mask [batch, seq] -> labels [batch, seq].
        """
        labels = input_ids.new_full(input_ids.shape, IGNORE_INDEX)
        start = self._answer_start
        for row, ids in enumerate(input_ids.tolist()):
            position = 0
            while position <= len(ids) - len(start):
                if ids[position : position + len(start)] != start:
                    position += 1
                    continue
                first = position + len(start)
                last = first
                while last < len(ids) and ids[last] != self._turn_end:
                    last += 1
                end = min(last + 1, len(ids))  # <end_of_turn> is learned too
                labels[row, first:end] = input_ids[row, first:end]
                position = end
        labels[attention_mask == 0] = IGNORE_INDEX
        for token in self._image_ids:
            labels[input_ids == token] = IGNORE_INDEX
        return labels

    def count_tokens(self, example: Example) -> int:
        """Tokens one example takes (images expanded), for length checks and estimates."""
        text, images = self.render(example)
        if self.multimodal and images:
            batch = self.processor(text=[text], images=[images], add_special_tokens=False)
        else:
            batch = self.tokenizer([text], add_special_tokens=False)
        return len(batch["input_ids"][0])
