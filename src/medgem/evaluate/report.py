"""Reports from a run folder: report.md for people, report.json for tools, report.png for slides.

Everything is recomputed from run.json and results.jsonl, so a report can be rebuilt at any time
(and a resumed run's report covers every item exactly once).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from medgem.errors import InputError, require
from medgem.evaluate.results import (
    MANIFEST_FILE,
    RESULTS_FILE,
    Summary,
    read_manifest,
    read_results,
    summarize,
)
from medgem.evaluate.tasks import get_task

#: What a report of a demo or test model's run says beside its numbers.
DEMO_NOTE = "Demo/test model: these numbers say nothing about MedGemma."
# Metrics already on a 0-100 scale; the rest are fractions shown as percentages.
HUNDRED_SCALE = frozenset({"bleu"})


def load_run(folder: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A run folder's manifest and its results (latest line per item).

    Raises:
        InputError: not a run folder, or its run.json is unreadable.
    """
    path = Path(folder)
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.is_file():
        raise InputError(f"{path} is not an evaluation run (no {MANIFEST_FILE})",
                         "point at the --out folder of `medgem eval`")
    manifest = read_manifest(manifest_path)
    return manifest, list(read_results(path / RESULTS_FILE).values())


def summarize_run(folder: str | Path) -> tuple[dict[str, Any], Summary]:
    """Load a run and compute its summary."""
    manifest, results = load_run(folder)
    task = get_task(manifest["task"])
    summary = summarize(task, results, n_total=max(int(manifest.get("items", 0)), len(results)),
                        variant=manifest.get("variant"), benchmark=manifest.get("benchmark"))
    return manifest, summary


def percent(metric: str, value: float) -> float:
    """A metric value on the 0-100 scale used in reports and model cards."""
    return value if metric in HUNDRED_SCALE else 100 * value


def summary_json(manifest: dict[str, Any], summary: Summary) -> dict[str, Any]:
    """The report as plain data (report.json)."""
    return {
        "task": manifest["task"], "benchmark": manifest.get("benchmark"),
        "model": manifest.get("model"), "variant": manifest.get("variant"),
        "settings": manifest.get("settings"), "primary_metric": summary.primary,
        "metrics": {k: {"value": percent(k, v.value), "ci95": [percent(k, v.low), percent(k, v.high)]}
                    for k, v in summary.metrics.items()},
        "categories": [{"category": c.category, "n": c.n,
                        "value": percent(summary.primary, c.value.value),
                        "ci95": [percent(summary.primary, c.value.low),
                                 percent(summary.primary, c.value.high)]}
                       for c in summary.categories],
        "n_total": summary.n_total, "n_scored": summary.n_scored, "n_failed": summary.n_failed,
        "n_unparseable": len(summary.unparseable), "unparseable": summary.unparseable,
        "failed": summary.failed, "model_card": asdict(summary.card) if summary.card else None,
        "model_card_comparable": summary.card_comparable, "within_ci": summary.within_interval,
        "scale": "percent (BLEU 0-100)", "run": run_stats(manifest),
        "notes": [*summary.notes, *([DEMO_NOTE + f" ({model_label(manifest)})"]
                                    if (manifest.get("model") or {}).get("demo") else [])],
    }


def run_stats(manifest: dict[str, Any]) -> dict[str, Any]:
    """How the run went: wall time (summed over resumed sessions), items per minute, engine,
    concurrency and the decoding constraint."""
    seconds = manifest.get("wall_seconds")
    timed = manifest.get("items_timed", 0)
    rate = round(60 * timed / seconds, 2) if seconds and timed else None
    return {"wall_seconds": seconds, "items_per_minute": rate,
            "engine": (manifest.get("model") or {}).get("engine"),
            "concurrency": manifest.get("concurrency"), "constraint": manifest.get("constraint", "none"),
            "constraint_note": manifest.get("constraint_note") or None}


def constraint_text(constraint: Any) -> str:
    """The constraint as report.md shows it: `none`, or the schema's name, kind and digest."""
    if not isinstance(constraint, dict):
        return f"`{constraint}`"
    return f"`{constraint.get('name')}` ({constraint.get('kind')}, sha256 {str(constraint.get('sha256'))[:12]})"


def model_label(manifest: dict[str, Any]) -> str:
    """The demo/test-model label the run's answers carried ("" for a real model)."""
    from dataclasses import fields

    from medgem.answer import label_for
    from medgem.engines.base import ModelInfo

    model = manifest.get("model") or {}
    if not model.get("demo"):
        return ""
    known = {f.name for f in fields(ModelInfo)}
    return label_for(ModelInfo(**{k: v for k, v in model.items() if k in known}))


def _card_lines(manifest: dict[str, Any], summary: Summary) -> list[str]:
    card = summary.card
    if card is None:
        variant = manifest.get("variant")
        benchmark = manifest.get("benchmark")
        if variant is None:
            return ["- Model card: none to compare with (this model is not a MedGemma variant; "
                    "--variant names one for a fine-tune)."]
        on = f" on benchmark `{benchmark}`" if benchmark else " on this data"
        return [f"- Model card: no published number for variant `{variant}`{on}."]
    head = f"- Model card ({card.variant}, {card.benchmark}): {card.value:.1f} ({card.metric})"
    if card.note:
        head += f", {card.note}"
    if not summary.card_comparable:
        return [head, "- Not comparable: this task does not compute the card's metric."]
    if summary.within_interval is None:
        return [head]
    own = summary.metrics[card.metric]
    diff = percent(card.metric, own.value) - card.value
    verdict = "within" if summary.within_interval else "outside"
    return [head, f"- This run: {percent(card.metric, own.value):.1f} ({diff:+.1f} points); "
            f"the card's number is **{verdict}** this run's 95% CI."]


def markdown(manifest: dict[str, Any], summary: Summary) -> str:
    """The human-readable report."""
    model = manifest.get("model", {})
    settings = manifest.get("settings", {})
    head = summary.headline
    lines = [
        f"# medgem eval: {manifest['task']} on {manifest.get('benchmark') or Path(manifest['data']).name}",
        "",
        f"**{summary.primary}: {percent(summary.primary, head.value):.1f}** "
        f"(95% CI {percent(summary.primary, head.low):.1f}–{percent(summary.primary, head.high):.1f}), "
        f"{summary.n_scored} of {summary.n_total} items scored, {summary.n_failed} failed, "
        f"{len(summary.unparseable)} unparseable (counted wrong).",
        "",
        *_card_lines(manifest, summary),
        "",
        "## Run",
        f"- Model: `{model.get('id')}`"
        + (f" revision `{model['revision']}`" if model.get("revision") else "")
        + f", engine `{model.get('engine')}`, dtype `{model.get('dtype')}`, "
        + (f"quantization `{model['quantization']}`" if model.get("quantization")
           else "unquantized"),
        f"- Data: `{manifest.get('data')}` (fingerprint `{manifest.get('data_fingerprint')}`, "
        f"{manifest.get('dataset_items')} items, limit {manifest.get('limit') or 'none'}, "
        f"seed {manifest.get('seed') if manifest.get('seed') is not None else 'none'})",
        f"- Settings: temperature {settings.get('temperature')}, think {settings.get('think')}, "
        f"max_new_tokens {settings.get('max_new_tokens') or 'default'}",
    ]
    stats = run_stats(manifest)
    wall = f"{stats['wall_seconds']:.1f} s" if stats["wall_seconds"] is not None else "not recorded"
    rate = f"{stats['items_per_minute']:.1f}" if stats["items_per_minute"] is not None else "n/a"
    lines.append(f"- How it ran: wall time {wall}, {rate} items/min, engine `{stats['engine']}`, "
                 f"concurrency {stats['concurrency']}, constraint {constraint_text(stats['constraint'])}")
    if stats["constraint_note"]:
        lines.append(f"- Note: {stats['constraint_note']}")
    if settings.get("think_note"):
        lines.append(f"- Note: {settings['think_note']}")
    lines += [f"- Note: {note}" for note in summary.notes]
    if model.get("demo"):
        lines.append(f"- **{DEMO_NOTE}** ({model_label(manifest)})")
    lines += ["", "## Metrics", "", "| metric | value | 95% CI |", "|---|---:|---|"]
    for name, value in summary.metrics.items():
        lines.append(f"| {name} | {percent(name, value.value):.1f} | "
                     f"{percent(name, value.low):.1f}–{percent(name, value.high):.1f} |")
    lines += ["", f"## By category ({summary.primary})", "", "| category | n | value | 95% CI |",
              "|---|---:|---:|---|"]
    for c in summary.categories:
        p = summary.primary
        lines.append(f"| {c.category} | {c.n} | {percent(p, c.value.value):.1f} | "
                     f"{percent(p, c.value.low):.1f}–{percent(p, c.value.high):.1f} |")
    if summary.unparseable:
        lines += ["", "## Unparseable replies (counted wrong)", ""]
        lines += [f"- `{u['id']}` (row {u['row']}): {json.dumps(u['reply'])}" for u in summary.unparseable]
    if summary.failed:
        lines += ["", "## Failed items (not scored)", ""]
        lines += [f"- `{f['id']}`: {f['error']}" for f in summary.failed]
    return "\n".join(lines) + "\n"


def chart(manifest: dict[str, Any], summary: Summary, path: Path) -> None:
    """A bar chart of the primary metric, overall and per category, with 95% CIs and the card."""
    matplotlib: Any = require("matplotlib", "eval", "report charts")
    matplotlib.use("Agg")
    pyplot: Any = require("matplotlib.pyplot", "eval", "report charts")
    p = summary.primary
    bars = [("overall", summary.headline)] + [(c.category, c.value) for c in summary.categories]
    names = [name for name, _ in bars]
    values = [percent(p, v.value) for _, v in bars]
    errors = [[max(0.0, percent(p, v.value - v.low)) for _, v in bars],
              [max(0.0, percent(p, v.high - v.value)) for _, v in bars]]
    figure, axes = pyplot.subplots(figsize=(max(4.0, 0.8 * len(bars) + 2), 3.5))
    axes.bar(names, values, yerr=errors, capsize=4, color=["#2b6cb0"] + ["#90cdf4"] * (len(bars) - 1))
    if summary.card is not None and summary.card_comparable:
        axes.axhline(summary.card.value, color="#c53030", linestyle="--",
                     label=f"model card {summary.card.value:.1f}")
        axes.legend(loc="lower right")
    axes.set_ylabel(f"{p} (%)" if p not in HUNDRED_SCALE else p)
    axes.set_ylim(0, 100 if p not in HUNDRED_SCALE else max([*values, 1.0]) * 1.2)
    axes.set_title(f"{manifest['task']}: {manifest.get('model', {}).get('id', '')}", fontsize=9)
    axes.tick_params(axis="x", labelrotation=30, labelsize=8)
    label = model_label(manifest)
    if label:  # the chart travels into slides without report.md: it says what it is itself
        import textwrap

        lines = textwrap.wrap(f"{label} These numbers say nothing about MedGemma.",
                              int(figure.get_figwidth() * 12))
        figure.set_figheight(figure.get_figheight() + 0.22 * len(lines))
        figure.text(0.5, 0.01, "\n".join(lines), ha="center", va="bottom", fontsize=7,
                    color="#c53030", weight="bold")
        figure.tight_layout(rect=(0, 0.05 * len(lines), 1, 1))
    else:
        figure.tight_layout()
    figure.savefig(path, dpi=100, metadata={"Description": label or "medgem eval report"})
    pyplot.close(figure)


def write_report(folder: str | Path) -> dict[str, Path]:
    """Write report.md, report.json and report.png into a run folder; returns kind -> path."""
    out = Path(folder)
    manifest, summary = summarize_run(out)
    paths = {"json": out / "report.json", "markdown": out / "report.md", "chart": out / "report.png"}
    paths["json"].write_text(json.dumps(summary_json(manifest, summary), indent=2, default=str) + "\n")
    paths["markdown"].write_text(markdown(manifest, summary))
    chart(manifest, summary, paths["chart"])
    return paths
