"""Small synthetic fine-tuning tasks that a random-weight base model cannot do.

``write_cue_mcq``: four-option questions whose answer is fixed by a planted cue word (red -> A,
green -> B, blue -> C, gold -> D); the base model is at or below chance, a LoRA learns it.
``write_colour_vqa``: solid-colour pictures asked "what colour", for the image path.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

CUES = {"red": "A", "green": "B", "blue": "C", "gold": "D"}
OPTIONS = {"A": "alpha", "B": "bravo", "C": "charlie", "D": "delta"}
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}


def write_cue_mcq(path: Path, rows: int = 100, seed: int = 0) -> Path:
    """MCQ JSONL (the eval harness's MedQA-style format), the cue repeated so it stands out."""
    rng = random.Random(seed)
    with path.open("w") as handle:
        for number in range(rows):
            cue = rng.choice(list(CUES))
            handle.write(json.dumps({"id": f"q{number}", "question": " ".join([cue] * 8),
                                     "options": OPTIONS, "answer": CUES[cue]}) + "\n")
    return path


def write_colour_vqa(folder: Path, rows: int = 6, seed: int = 0) -> Path:
    """VQA JSONL with PNGs beside it: the image is one colour, the answer its name."""
    from PIL import Image

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for number in range(rows):
        name = rng.choice(list(COLOURS))
        image = folder / f"img{number}.png"
        Image.new("RGB", (64, 64), COLOURS[name]).save(image)
        lines.append(json.dumps({"qid": f"v{number}", "image_name": image.name,
                                 "question": "What colour is this picture?", "answer": name,
                                 "answer_type": "OPEN"}))
    path = folder / "vqa.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path
