"""The harness's own logic with a scripted engine: prompts, scoring, resume, failures, reports."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from medgem.api import MedGemma
from medgem.engines.base import (
    Capabilities,
    Finished,
    ModelInfo,
    Prepared,
    TextDelta,
    Timings,
    Usage,
    as_prepared,
)
from medgem.errors import InputError
from medgem.evaluate import (
    EvalConfig,
    TaskOptions,
    compare_markdown,
    compare_runs,
    prepare,
    run_evaluation,
    summarize_run,
    write_report,
)
from medgem.evaluate.metrics import corpus_bleu, rouge_l
from medgem.request import Request
from medgem.request.thinking import THINK_INSTRUCTION
from medgem.request.variants import find_variant

DATA = Path(__file__).parent / "data" / "eval"


class ScriptedEngine:
    """An Engine whose reply is a function of the request (the user text, or the first image)."""

    name = "scripted"
    capabilities = Capabilities(images=True)

    def __init__(self, reply: Callable[[Request], str], variant: str = "4b-it",
                 model_id: str = "scripted-model", delay: float = 0.0, constrained: bool = False) -> None:
        self.reply = reply
        self.delay = delay
        # says it constrains decoding (the harness's choice is tested; the reply stays scripted)
        self.capabilities = Capabilities(images=True, constrained=constrained)
        self.info = ModelInfo(id=model_id, revision="rev1", variant=variant, engine="scripted",
                              dtype="float32")
        self.requests: list[Request] = []
        self._lock = threading.Lock()

    def generate(self, request: Request | Prepared,
                 cancel: threading.Event | None = None) -> Iterator[Any]:
        request = as_prepared(self, request).request
        with self._lock:
            self.requests.append(request)
        time.sleep(self.delay)
        text = self.reply(request)
        yield TextDelta(text)
        yield Finished("stop", Usage(12, 4), Timings(0.01, 0.02, 4))

    def prepare(self, request: Request) -> Prepared:
        return Prepared(request, 12)

    def close(self) -> None:
        pass


def model(reply: Callable[[Request], str], variant: str = "4b-it", **kwargs: Any) -> tuple[
    MedGemma, ScriptedEngine
]:
    engine = ScriptedEngine(reply, variant, **kwargs)
    return MedGemma(engine, variant=find_variant(variant)), engine


def user_text(request: Request) -> str:
    return request.messages[-1].text


# Replies for medqa.jsonl: 4 right (in different formats), 1 wrong, 1 unparseable.
MEDQA_REPLIES = {
    "resting heart rate": "<unused94>thought\nBradycardia in athletes...<unused95>The answer is (B).",
    "scurvy": "**C**",
    "insulin": "Pancreas",
    "peaked T waves": "A. Hyperkalemia",
    "urinary tract": "The answer is (B).",  # wrong: A is right
    "aorta": "I cannot answer medical questions.",  # unparseable
}


def medqa_reply(request: Request) -> str:
    text = user_text(request)
    return next(reply for key, reply in MEDQA_REPLIES.items() if key in text)


def lines(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (folder / "results.jsonl").read_text().splitlines()]


def test_mcq_run_on_a_thinking_variant(tmp_path: Path) -> None:
    mg, engine = model(medqa_reply, variant="27b-text-it")
    prepared = prepare(EvalConfig(task="mcq", data=str(DATA / "medqa.jsonl")))
    outcome = run_evaluation(mg, prepared, tmp_path / "run", progress=False)
    assert outcome.ran == 6 and outcome.failed == 0
    # The official MedQA prompt: the thinking instruction as the system turn, temperature 0.
    first = engine.requests[0]
    assert first.messages[0].role == "system" and first.messages[0].text == THINK_INSTRUCTION
    assert first.options.temperature == 0.0
    results = {r["id"]: r for r in lines(tmp_path / "run")}
    assert results["medqa-row-1"]["thinking_chars"] > 0
    assert results["medqa-row-1"]["reply"] == "The answer is (B)."
    manifest = json.loads((tmp_path / "run" / "run.json").read_text())
    assert manifest["model"]["revision"] == "rev1" and manifest["model"]["engine"] == "scripted"
    assert manifest["settings"]["think"] is True and manifest["benchmark"] == "medqa"

    paths = write_report(tmp_path / "run")
    report = json.loads(paths["json"].read_text())
    assert report["metrics"]["accuracy"]["value"] == pytest.approx(400 / 6)
    assert report["n_unparseable"] == 1 and report["unparseable"][0]["id"] == "medqa-row-6"
    assert report["model_card"]["value"] == 87.7
    low, high = report["metrics"]["accuracy"]["ci95"]
    assert report["within_ci"] == (low <= 87.7 <= high)
    steps = {c["category"]: c for c in report["categories"]}
    assert steps["step1"]["n"] == 3 and steps["step1"]["value"] == pytest.approx(200 / 3)
    assert steps["step2&3"]["value"] == pytest.approx(200 / 3)
    md = paths["markdown"].read_text()
    assert "Unparseable replies" in md and "medqa-row-6" in md and "87.7" in md
    assert paths["chart"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_non_thinking_variant_falls_back_and_records_it(tmp_path: Path) -> None:
    mg, engine = model(medqa_reply, variant="4b-it")
    prepared = prepare(EvalConfig(task="mcq", data=str(DATA / "medqa.jsonl"), limit=2))
    run_evaluation(mg, prepared, tmp_path, progress=False)
    settings = json.loads((tmp_path / "run.json").read_text())["settings"]
    assert settings["think"] is False
    assert "does not support thinking" in settings["think_note"]
    assert all(m.role == "user" for m in engine.requests[0].messages)
    summary = summarize_run(tmp_path)[1]
    assert summary.card is not None and summary.card.value == 64.4


class Stop(Exception):
    pass


def test_resume_continues_without_double_counting(tmp_path: Path) -> None:
    prepared = prepare(EvalConfig(task="mcq", data=str(DATA / "medqa.jsonl")))
    mg, _engine = model(medqa_reply)
    seen: list[str] = []

    def stop_after_three(result: dict[str, Any]) -> None:
        seen.append(result["id"])
        if len(seen) == 3:
            raise Stop  # as if the process was killed right after the third write

    with pytest.raises(Stop):
        run_evaluation(mg, prepared, tmp_path, progress=False, on_result=stop_after_three)
    assert len(lines(tmp_path)) == 3
    with pytest.raises(InputError, match="already holds a run"):
        run_evaluation(mg, prepared, tmp_path, progress=False)

    mg2, engine2 = model(medqa_reply)
    outcome = run_evaluation(mg2, prepared, tmp_path, resume=True, progress=False)
    assert outcome.skipped_done == 3 and outcome.ran == 3
    assert len(engine2.requests) == 3
    ids = [r["id"] for r in lines(tmp_path)]
    assert len(ids) == 6 and len(set(ids)) == 6
    manifest, summary = summarize_run(tmp_path)
    assert summary.n_scored == 6 and summary.headline.value == pytest.approx(4 / 6)
    assert "resumed" in manifest


def test_resume_repairs_a_torn_last_line(tmp_path: Path) -> None:
    prepared = prepare(EvalConfig(task="mcq", data=str(DATA / "medqa.jsonl"), limit=3))
    mg, _ = model(medqa_reply)
    run_evaluation(mg, prepared, tmp_path, progress=False)
    with (tmp_path / "results.jsonl").open("a") as handle:
        handle.write('{"id": "medqa-row-4", "status": "o')  # killed mid-write
    bigger = prepare(EvalConfig(task="mcq", data=str(DATA / "medqa.jsonl")))
    mg2, engine2 = model(medqa_reply)
    run_evaluation(mg2, bigger, tmp_path, resume=True, progress=False)
    assert len(engine2.requests) == 3
    assert [r["id"] for r in lines(tmp_path)] == [f"medqa-row-{n}" for n in range(1, 7)]


def test_resume_refuses_another_model(tmp_path: Path) -> None:
    prepared = prepare(EvalConfig(task="mcq", data=str(DATA / "medqa.jsonl"), limit=2))
    run_evaluation(model(medqa_reply)[0], prepared, tmp_path, progress=False)
    other, _ = model(medqa_reply, model_id="another-model")
    with pytest.raises(InputError, match=r"different model\.id"):
        run_evaluation(other, prepared, tmp_path, resume=True, progress=False)


VQA_REPLIES = {
    "pneumothorax": "No, there is none.",
    "effusion": "left side",
    "MRI": "Yes",
    "organ": "brain",
    "liver": "no",
    "free air": "no",
}


def test_vqa_scores_and_failed_images(tmp_path: Path) -> None:
    def reply(request: Request) -> str:
        return next(r for k, r in VQA_REPLIES.items() if k in user_text(request))

    mg, engine = model(reply)
    prepared = prepare(EvalConfig(task="vqa", data=str(DATA / "vqa_rad.json")))
    outcome = run_evaluation(mg, prepared, tmp_path, progress=False)
    assert outcome.failed == 2 and len(engine.requests) == 4
    failed = {r["id"]: r["error"] for r in lines(tmp_path) if r["status"] == "failed"}
    assert "vqa_rad.json row 5" in failed["5"] and "missing.png" in failed["5"]
    assert "vqa_rad.json row 6" in failed["6"]
    report = json.loads(write_report(tmp_path)["json"].read_text())
    metrics = report["metrics"]
    # F1: 1 (no), 2/3 ("left side" vs "left"), 1 (yes), 1 ("brain" vs "the brain").
    assert metrics["tokenized_f1"]["value"] == pytest.approx(100 * (3 + 2 / 3) / 4)
    assert metrics["accuracy"]["value"] == pytest.approx(75.0)
    assert metrics["closed_accuracy"]["value"] == pytest.approx(100.0)
    assert metrics["open_tokenized_f1"]["value"] == pytest.approx(100 * (5 / 3) / 2)
    assert report["n_failed"] == 2 and report["model_card"]["value"] == 49.9
    assert "Failed items" in (tmp_path / "report.md").read_text()
    # Resume retries only the failed items.
    mg2, engine2 = model(reply)
    outcome = run_evaluation(mg2, prepared, tmp_path, resume=True, progress=False)
    assert outcome.ran == 2 and len(engine2.requests) == 0


CXR_REPLIES = {  # keyed by the fixture image's corner grey level
    200: "Atelectasis and a pleural effusion.",
    90: "Cardiomegaly. Mild edema.",
    160: "None",
    60: "Cardiomegaly and consolidation.",
}


def test_cxr_labels_macro_f1(tmp_path: Path) -> None:
    def reply(request: Request) -> str:
        return CXR_REPLIES[request.images[0].image.getpixel((0, 0))[0]]

    mg, engine = model(reply)
    prepared = prepare(EvalConfig(task="cxr-labels", data=str(DATA / "chexpert.csv")))
    run_evaluation(mg, prepared, tmp_path, progress=False)
    assert engine.requests[0].messages[0].text == "You are an expert radiologist."
    report = json.loads(write_report(tmp_path)["json"].read_text())
    # Per finding: atelectasis 1, cardiomegaly 1, consolidation 1, edema 0, effusion 2/3.
    assert report["metrics"]["macro_f1"]["value"] == pytest.approx(100 * (3 + 2 / 3) / 5)
    assert report["metrics"]["f1_edema"]["value"] == 0.0
    assert report["benchmark"] == "chexpert" and report["model_card"]["value"] == 48.1


def test_pubmedqa_per_label_breakdown(tmp_path: Path) -> None:
    mg, _ = model(lambda request: "Yes.")
    prepared = prepare(EvalConfig(task="pubmedqa", data=str(DATA / "pubmedqa.json")))
    run_evaluation(mg, prepared, tmp_path, progress=False)
    report = json.loads(write_report(tmp_path)["json"].read_text())
    assert report["metrics"]["accuracy"]["value"] == pytest.approx(50.0)
    by_label = {c["category"]: c["value"] for c in report["categories"]}
    assert by_label == {"maybe": 0.0, "no": 0.0, "yes": 100.0}


def test_report_task_rouge_and_bleu(tmp_path: Path) -> None:
    reply_text = "The lungs are clear. No pleural effusion."
    mg, _ = model(lambda request: reply_text)
    prepared = prepare(EvalConfig(task="report", data=str(DATA / "reports.jsonl"),
                               benchmark="mimic-cxr-report"))
    run_evaluation(mg, prepared, tmp_path, progress=False)
    report = json.loads(write_report(tmp_path)["json"].read_text())
    references = [json.loads(x)["findings"] for x in (DATA / "reports.jsonl").read_text().splitlines()]
    expected = sum(rouge_l(reply_text, r) for r in references) / 3
    assert report["metrics"]["rouge_l"]["value"] == pytest.approx(100 * expected)
    assert report["metrics"]["bleu"]["value"] == pytest.approx(
        corpus_bleu([reply_text] * 3, references))
    assert report["model_card_comparable"] is False
    assert "Not comparable" in (tmp_path / "report.md").read_text()


def test_concurrency_writes_every_item_once(tmp_path: Path) -> None:
    mg, _engine = model(medqa_reply, delay=0.05)
    prepared = prepare(EvalConfig(task="mcq", data=str(DATA / "medqa.jsonl"), concurrency=4))
    start = time.perf_counter()
    run_evaluation(mg, prepared, tmp_path, progress=False)
    assert time.perf_counter() - start < 6 * 0.05  # overlapped, not one after another
    ids = [r["id"] for r in lines(tmp_path)]
    assert sorted(ids) == sorted(f"medqa-row-{n}" for n in range(1, 7))


def test_limit_with_seed_is_a_reproducible_subset() -> None:
    config = EvalConfig(task="mcq", data=str(DATA / "medqa.jsonl"), limit=3, seed=7)
    first = [i.id for i in prepare(config).items]
    assert first == [i.id for i in prepare(config).items]
    assert len(first) == 3
    assert [i.id for i in prepare(EvalConfig(task="mcq", data=str(DATA / "medqa.jsonl"),
                                             limit=2)).items] == ["medqa-row-1", "medqa-row-2"]


def test_bad_settings_and_empty_selection() -> None:
    with pytest.raises(InputError, match="--concurrency"):
        prepare(EvalConfig(task="mcq", data=str(DATA / "medqa.jsonl"), concurrency=0))
    with pytest.raises(InputError, match="unknown evaluation task"):
        prepare(EvalConfig(task="nope", data=str(DATA / "medqa.jsonl")))
    with pytest.raises(InputError, match="no vqa items"):
        prepare(EvalConfig(task="vqa", data=str(DATA / "slake.json"),
                           options=TaskOptions(language="fr")))


def test_compare_two_runs(tmp_path: Path) -> None:
    prepared = prepare(EvalConfig(task="mcq", data=str(DATA / "medqa.jsonl")))
    run_evaluation(model(medqa_reply)[0], prepared, tmp_path / "a", progress=False)
    answers = {"resting": "B", "scurvy": "C", "insulin": "B", "peaked": "A", "urinary": "A",
               "aorta": "D"}

    def perfect(request: Request) -> str:
        return next(v for k, v in answers.items() if k in user_text(request))

    run_evaluation(model(perfect, model_id="other")[0], prepared, tmp_path / "b", progress=False)
    result = compare_runs(tmp_path / "a", tmp_path / "b")
    assert result["paired_items"] == 6
    assert (result["only_a_correct"], result["only_b_correct"]) == (0, 2)
    assert result["p_value"] == pytest.approx(0.5)  # 2 * (1/2)^2
    assert result["difference"] == pytest.approx(100 * 2 / 6)
    assert "exact McNemar" in compare_markdown(result)
    other = prepare(EvalConfig(task="pubmedqa", data=str(DATA / "pubmedqa.json")))
    run_evaluation(model(lambda r: "yes")[0], other, tmp_path / "c", progress=False)
    with pytest.raises(InputError, match="different tasks"):
        compare_runs(tmp_path / "a", tmp_path / "c")


def test_run_stats_add_up_over_a_resumed_run(tmp_path: Path) -> None:
    mg, _ = model(medqa_reply, variant="27b-text-it", delay=0.05)
    out = tmp_path / "run"
    run_evaluation(mg, prepare(EvalConfig(task="mcq", data=str(DATA / "medqa.jsonl"), limit=2)), out,
                   progress=False)
    first = json.loads((out / "run.json").read_text())
    assert first["items_timed"] == 2 and first["wall_seconds"] >= 0.1
    assert first["constraint"] == "none" and first["concurrency"] == 1
    run_evaluation(mg, prepare(EvalConfig(task="mcq", data=str(DATA / "medqa.jsonl"))), out,
                   resume=True, progress=False)
    second = json.loads((out / "run.json").read_text())
    assert second["items_timed"] == 6 and second["wall_seconds"] >= first["wall_seconds"] + 0.2
    stats = json.loads(write_report(out)["json"].read_text())["run"]
    assert stats == {"wall_seconds": second["wall_seconds"], "engine": "scripted", "concurrency": 1,
                     "constraint": "none", "constraint_note": None,
                     "items_per_minute": round(60 * 6 / second["wall_seconds"], 2)}


def test_compare_of_demo_model_runs_says_so(tmp_path: Path) -> None:
    """`medgem eval compare` (and `medgem tune`'s closing table) on demo/test-model runs carried
    no demo label: its numbers read as if they were a model's."""
    prepared = prepare(EvalConfig(task="mcq", data=str(DATA / "medqa.jsonl")))
    mg, engine = model(medqa_reply)
    engine.info = dataclasses.replace(engine.info, id="medgem-test-scripted", demo=True)
    run_evaluation(mg, prepared, tmp_path / "a", progress=False)
    run_evaluation(model(medqa_reply)[0], prepared, tmp_path / "b", progress=False)
    text = compare_markdown(compare_runs(tmp_path / "a", tmp_path / "b"))
    assert "Demo/test model: these numbers say nothing about MedGemma" in text
    assert "TEST MODEL" in text
    real = compare_markdown(compare_runs(tmp_path / "b", tmp_path / "b"))
    assert "Demo/test model" not in real


def test_unreadable_run_json_is_one_input_error(tmp_path: Path) -> None:
    """A run.json cut short or hand-edited into something else was a JSONDecodeError (or a
    TypeError) from `medgem eval compare` and from `--resume`."""
    prepared = prepare(EvalConfig(task="mcq", data=str(DATA / "medqa.jsonl"), limit=2))
    mg = model(medqa_reply)[0]
    run_evaluation(mg, prepared, tmp_path / "a", progress=False)
    for text in ('{"task": "mcq", "data_fi', "[]"):
        (tmp_path / "a" / "run.json").write_text(text)
        with pytest.raises(InputError, match=r"run\.json is not a readable run manifest"):
            compare_runs(tmp_path / "a", tmp_path / "a")
        with pytest.raises(InputError, match=r"run\.json is not a readable run manifest"):
            run_evaluation(mg, prepared, tmp_path / "a", resume=True, progress=False)
