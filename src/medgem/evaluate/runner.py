"""Run a task over a dataset with a loaded model: resumable, concurrent, with a progress bar.

A run lives in one folder: ``run.json`` (what was run: task, data fingerprint, model id,
revision, engine, quantization, generation settings) and ``results.jsonl`` (one line per item,
fsynced as it finishes). ``resume=True`` continues a killed run, skipping items already done and
retrying failed ones; the settings must match, so a resumed run is the same experiment.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from medgem import __version__
from medgem.errors import DatasetError, InputError, MedgemError
from medgem.evaluate.datasets import read_records
from medgem.evaluate.results import (
    MANIFEST_FILE,
    RESULTS_FILE,
    ResultLog,
    read_manifest,
    read_results,
    write_json,
)
from medgem.evaluate.tasks import EvalItem, LoadedData, Task, TaskOptions, get_task
from medgem.inputs import Upload, read_inputs
from medgem.request import GenerationOptions, Request
from medgem.structured import Constraint

if TYPE_CHECKING:
    from medgem.answer import Answer
    from medgem.api import MedGemma

MANIFEST_VERSION = 1
# Keys of run.json that must match for a resume to continue the same experiment.
_RESUME_KEYS = ("task", "benchmark", "data_fingerprint", "seed", "settings", "constraint")
_MODEL_KEYS = ("id", "revision", "engine", "quantization", "dtype", "adapter_sha256")


@dataclass(frozen=True)
class EvalConfig:
    """One evaluation, as the CLI (or a script) describes it.

    Attributes:
        task: task name or alias ("mcq").
        data: the dataset file or folder.
        split: the split, for folders holding several.
        benchmark: the benchmark name for the model-card lookup; None to detect it from the format.
        variant: the MedGemma variant for the card lookup when the model does not say (remote).
        limit: evaluate only this many items (a seeded random subset when ``seed`` is given).
        seed: subset seed, also passed to generation.
        concurrency: questions in flight at once (batched on the engine; see ``--parallel``).
        max_new_tokens: answer budget; None for the variant family's default.
        think: "auto" (the task's official prompt, thinking variants only), "on" or "off".
        options: task options (image root, uncertain-label policy, language).
    """

    task: str
    data: str
    split: str | None = None
    benchmark: str | None = None
    variant: str | None = None
    limit: int | None = None
    seed: int | None = None
    concurrency: int = 1
    max_new_tokens: int | None = None
    think: str = "auto"
    options: TaskOptions = field(default_factory=TaskOptions)


@dataclass(frozen=True)
class PreparedRun:
    """A task with its items loaded and checked, before any model is touched."""

    config: EvalConfig
    task: Task
    loaded: LoadedData
    items: list[EvalItem]
    fingerprint: str

    @property
    def benchmark(self) -> str | None:
        return self.config.benchmark or self.loaded.benchmark


def prepare(config: EvalConfig) -> PreparedRun:
    """Read and check the data, and choose the items (``limit``/``seed``).

    Raises:
        DatasetError: unreadable data, a bad row, or no items (names the file and row).
        InputError: an unknown task or a bad setting.
    """
    task = get_task(config.task)
    if config.concurrency < 1:
        raise InputError(f"--concurrency must be at least 1, got {config.concurrency}")
    if config.limit is not None and config.limit < 1:
        raise InputError(f"--limit must be at least 1, got {config.limit}")
    records = read_records(config.data, config.split)
    loaded = task.load(records, config.options)
    if not loaded.items:
        skipped = ", ".join(f"{n} {why}" for why, n in loaded.skipped.items())
        raise DatasetError(
            f"{config.data}: no {task.name} items" + (f" (skipped: {skipped})" if skipped else ""),
            "check that the file is in the task's format",
        )
    items = list(loaded.items)
    if config.limit is not None and config.limit < len(items):
        if config.seed is not None:
            picked = sorted(random.Random(config.seed).sample(range(len(items)), config.limit))
            items = [items[i] for i in picked]
        else:
            items = items[: config.limit]
    return PreparedRun(config, task, loaded, items, _fingerprint(loaded.items))


def _fingerprint(items: list[EvalItem]) -> str:
    """A digest of the whole dataset's questions and answers (independent of --limit)."""
    digest = hashlib.sha256()
    for item in items:
        digest.update(json.dumps([item.id, item.question, item.reference], sort_keys=True,
                                 default=str).encode())
    return digest.hexdigest()[:16]


def choose_think(mg: MedGemma, task: Task, wanted: str) -> tuple[bool, str]:
    """Whether to ask for thinking, and a note for the manifest when it had to be dropped.

    The official MedQA prompt uses the thinking instruction; models not trained to think fall
    back to no thinking and the run records that.
    """
    if wanted == "off" or (wanted == "auto" and not task.think):
        return False, ""
    if wanted == "auto" and mg.variant is None:
        # "auto" is the official prompt of thinking variants: a model not known as one (the
        # demo model, a fine-tune without --variant) gets the prompt without the instruction.
        return False, ("thinking not used: this model is not a MedGemma thinking variant "
                       "(--think on sends the instruction anyway)")
    if not mg.can_think:
        who = f"medgemma-{mg.variant.key}" if mg.variant else "this model"
        return False, f"thinking not used: {who} does not support thinking mode"
    return True, ""


def choose_constraint(mg: MedGemma, task: Task) -> tuple[Constraint | None, str]:
    """The schema to constrain decoding to, and a note for the manifest when it had to be dropped.

    A task with a built-in schema (boxes, lab-extraction) is constrained to it when the engine
    can constrain decoding; otherwise the reply is free text, read as before, and the run says so.
    """
    if task.schema is None:
        return None, ""
    if not mg.engine.capabilities.constrained:
        return None, (f"decoding not constrained: the {mg.engine.info.engine} engine cannot constrain "
                      f"to the {task.schema.name} schema, so replies were read from free text")
    return task.schema, ""


def manifest_for(prepared: PreparedRun, mg: MedGemma, think: bool, think_note: str,
                 constraint: Constraint | None = None, constraint_note: str = "") -> dict[str, Any]:
    """What run.json records: enough to reproduce the numbers."""
    info = mg.engine.info
    variant = prepared.config.variant or (mg.variant.key if mg.variant else info.variant)
    return {
        "manifest_version": MANIFEST_VERSION,
        "task": prepared.task.name,
        "benchmark": prepared.benchmark,
        "data": str(Path(prepared.config.data).resolve()),
        "split": prepared.config.split,
        "data_fingerprint": prepared.fingerprint,
        "dataset_items": len(prepared.loaded.items),
        "items": len(prepared.items),
        "skipped": prepared.loaded.skipped,
        "data_notes": prepared.loaded.notes,
        "limit": prepared.config.limit,
        "seed": prepared.config.seed,
        "concurrency": prepared.config.concurrency,
        # "none", or the constraint's kind, name, strictness, sha256 and schema
        "constraint": "none" if constraint is None else constraint.record(),
        "constraint_note": constraint_note,
        "variant": variant,
        "model": asdict(info),
        "settings": {
            "temperature": 0.0,
            "max_new_tokens": prepared.config.max_new_tokens,
            "think": think,
            "think_requested": prepared.config.think,
            "think_note": think_note,
            "uncertain_labels": prepared.config.options.uncertain,
        },
        "medgem_version": __version__,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def check_resumable(old: dict[str, Any], new: dict[str, Any], folder: Path) -> None:
    """Refuse to continue a run with different data, model or settings."""
    diffs = [k for k in _RESUME_KEYS if old.get(k) != new.get(k)]
    diffs += [f"model.{k}" for k in _MODEL_KEYS
              if old.get("model", {}).get(k) != new.get("model", {}).get(k)]
    if diffs:
        raise InputError(
            f"{folder} holds a run with different {', '.join(diffs)}",
            "resume with the same data, model and settings, or choose another --out",
        )


def _failed(item: EvalItem, error: BaseException) -> dict[str, Any]:
    what = str(error) if isinstance(error, MedgemError) else f"{type(error).__name__}: {error}"
    return _base(item) | {"status": "failed", "error": f"{item.source} row {item.row}: {what}"}


def _base(item: EvalItem) -> dict[str, Any]:
    return {"id": item.id, "source": item.source, "row": item.row, "category": item.category,
            "reference": item.reference}


def _scored(task: Task, item: EvalItem, answer: Answer, seconds: float) -> dict[str, Any]:
    reply = answer.text or answer.raw
    return _base(item) | {"status": "ok"} | asdict(task.score(item, reply)) | {
        "reply": reply,
        "thinking_chars": len(answer.thinking),
        "finish_reason": answer.finish_reason,
        "prompt_tokens": answer.usage.prompt_tokens,
        "completion_tokens": answer.usage.completion_tokens,
        "seconds": round(seconds, 3),
    } | ({"structured_error": answer.structured_error} if answer.structured_error else {})


def _open_image(ref: str | bytes) -> Any:
    if isinstance(ref, bytes):
        return read_inputs([Upload(ref, name="dataset-image")]).images[0]
    return Path(ref)


@dataclass(frozen=True)
class RunOutcome:
    folder: Path
    ran: int
    skipped_done: int
    failed: int


def run_evaluation(
    mg: MedGemma,
    prepared: PreparedRun,
    folder: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> RunOutcome:
    """Run the prepared items, appending each result as it finishes.

    Args:
        mg: the loaded model.
        prepared: from :func:`prepare`.
        folder: the run folder (created).
        resume: continue the run already in ``folder``.
        progress: show a progress bar with ETA on stderr.
        on_result: called with each result after it is written (tests stop runs here).

    Raises:
        InputError: results already in ``folder`` without ``resume``, or a resume whose data,
            model or settings differ.
    """
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    log = ResultLog(out / RESULTS_FILE)
    think, think_note = choose_think(mg, prepared.task, prepared.config.think)
    constraint, constraint_note = choose_constraint(mg, prepared.task)
    manifest = manifest_for(prepared, mg, think, think_note, constraint, constraint_note)
    manifest_path = out / MANIFEST_FILE
    if (log.path.exists() and log.path.stat().st_size > 0) or manifest_path.exists():
        if not resume:
            raise InputError(f"{out} already holds a run",
                             "add --resume to continue it, or choose another --out")
        old = read_manifest(manifest_path) if manifest_path.exists() else manifest
        check_resumable(old, manifest, out)
        manifest["started"] = old.get("started", manifest["started"])
        manifest["wall_seconds"] = old.get("wall_seconds", 0.0)
        manifest["items_timed"] = old.get("items_timed", 0)
        manifest["resumed"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_json(manifest_path, manifest)
    log.repair()
    done = {i for i, r in read_results(log.path).items() if r.get("status") == "ok"}
    todo = [item for item in prepared.items if item.id not in done]
    failed = 0
    bar = tqdm(total=len(prepared.items), initial=len(prepared.items) - len(todo),
               desc=f"eval {prepared.task.name}", unit="item", file=sys.stderr,
               disable=not progress, dynamic_ncols=True)
    started, finished = time.perf_counter(), 0
    try:
        # greedy, as the model card evaluates
        options = GenerationOptions(max_new_tokens=prepared.config.max_new_tokens, temperature=0.0,
                                    seed=prepared.config.seed, think=think, constraint=constraint)
        for result in _results(mg, prepared, todo, options):
            log.append(result)
            finished += 1
            failed += result["status"] != "ok"
            bar.update(1)
            if failed:
                bar.set_postfix(failed=failed)
            if on_result is not None:
                on_result(result)
    finally:
        bar.close()
        # How the run went, summed over its sessions (a resumed run adds its own time).
        manifest["wall_seconds"] = round(manifest.get("wall_seconds", 0.0)
                                         + time.perf_counter() - started, 3)
        manifest["items_timed"] = manifest.get("items_timed", 0) + finished
        write_json(manifest_path, manifest)
    return RunOutcome(out, len(todo), len(prepared.items) - len(todo), failed)


def _results(mg: MedGemma, prepared: PreparedRun, todo: list[EvalItem], options: GenerationOptions) -> Any:
    """Results in completion order, ``concurrency`` questions in flight through
    ``MedGemma.ask_many`` (batched on the engine); an item that fails is a failed result with
    the reason, and the run goes on."""
    task, config = prepared.task, prepared.config
    asked: list[tuple[EvalItem, float]] = []
    unreadable: list[dict[str, Any]] = []

    def requests() -> Iterator[Request]:
        for item in todo:
            try:
                images = [_open_image(ref) for ref in item.images]
                request = mg.request(item.question, images=images, system=item.system,
                                     options=options)
            except Exception as exc:  # a bad image on one item must not end a long run
                unreadable.append(_failed(item, exc))
                continue
            asked.append((item, time.perf_counter()))
            yield request

    for index, outcome in mg.ask_many(requests(), concurrency=config.concurrency):
        yield from _drain(unreadable)
        item, start = asked[index]
        if isinstance(outcome, Exception):
            yield _failed(item, outcome)
        else:
            yield _scored(task, item, outcome, time.perf_counter() - start)
    yield from _drain(unreadable)


def _drain(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    while items:
        yield items.pop(0)
