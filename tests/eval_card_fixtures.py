"""Small datasets for the MedGemma 1.5 card's eval tasks, built from real files in tmp dirs:
DICOM CT/MR series (imaging_fixtures), a pyramidal slide and PDFs (wsi_fixtures), PNG X-rays,
FHIR bundles; plus the CLI call and the scripted-run helpers every task test shares."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydicom.uid import generate_uid

from conftest import run_cli
from imaging_fixtures import mr_slice, write_ct_series
from medgem.request import Request, TextPart
from medgem.structured import Constraint


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_ct(folder: Path, slices: int = 4) -> Path:
    """A real CT series: ``slices`` 16x16 slices, bone in the middle, scrambled file names."""
    volume = np.zeros((slices, 16, 16), dtype=np.int16)
    volume[:, 4:12, 4:12] = 1000
    write_ct_series(folder, volume)
    return folder


def write_mr(folder: Path, slices: int = 3) -> Path:
    """A real MR series of ``slices`` 16x16 slices."""
    folder.mkdir(parents=True, exist_ok=True)
    series, study = generate_uid(), generate_uid()
    for index in range(slices):
        values = np.full((16, 16), 100 * (index + 1), dtype=np.uint16)
        ds = mr_slice(values, instance=index + 1, series_uid=series, study_uid=study)
        ds.save_as(folder / f"MR{index:03d}.dcm", enforce_file_format=True)
    return folder


def write_png(path: Path, shade: int, size: tuple[int, int] = (64, 48)) -> Path:
    """A grey picture of one shade (the shade tells the scripted engine which image it got)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (shade, shade, shade)).save(path)
    return path


def question_of(request: Request) -> str:
    """The question: the last text part of the user turn (after any images or slices)."""
    texts = [p.text for p in request.messages[-1].parts if isinstance(p, TextPart)]
    return texts[-1] if texts else request.messages[-1].text


def eval_cli(task: str, data: Path, checkpoint: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """`medgem eval TASK DATA` on the real transformers engine, as a user runs it."""
    return run_cli("eval", task, str(data), "--model", str(checkpoint), "--engine", "hf",
                   "--device", "cpu", "--max-new-tokens", "4", "--out", str(out), "--no-progress",
                   "--no-audit", *extra)


def check_run_report(out: Path, items: int, concurrency: int = 1,
                     schema: Constraint | None = None) -> dict[str, Any]:
    """The report of a finished CLI run: every item scored, how it ran recorded (the task's
    built-in ``schema`` as the constraint when the engine constrained to it, else "none" and the
    reason), compare works (a run against itself: no difference). Returns report.json."""
    report = json.loads((out / "report.json").read_text())
    assert report["n_total"] == items and report["n_scored"] == items and report["n_failed"] == 0
    run = report["run"]
    assert run["engine"] == "hf" and run["concurrency"] == concurrency
    assert run["wall_seconds"] > 0 and run["items_per_minute"] == round(60 * items / run["wall_seconds"], 2)
    markdown = (out / "report.md").read_text()
    assert "How it ran: wall time" in markdown
    check_constraint(report, markdown, schema)
    compared = run_cli("eval", "compare", str(out), str(out), "--json")
    assert compared.returncode == 0, compared.stderr
    assert json.loads(compared.stdout)["p_value"] == 1.0
    return report


def check_constraint(report: dict[str, Any], markdown: str, schema: Constraint | None) -> None:
    """The run's constraint in report.json and report.md: ``schema`` (name, kind, digest and the
    schema itself) when decoding was constrained to it, "none" with the reason when the task has
    a schema the engine could not constrain to, plain "none" for a task without one."""
    run = report["run"]
    if schema is None:
        assert run["constraint"] == "none" and run["constraint_note"] is None
        assert "constraint `none`" in markdown
    elif run["constraint"] == "none":
        assert f"cannot constrain to the {schema.name} schema" in run["constraint_note"]
        assert "constraint `none`" in markdown and run["constraint_note"] in markdown
    else:
        assert run["constraint"] == schema.record() and run["constraint_note"] is None
        assert f"constraint `{schema.name}` (json_schema, sha256 {schema.digest[:12]})" in markdown


def results(folder: Path) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in map(json.loads, (folder / "results.jsonl").read_text().splitlines())}
