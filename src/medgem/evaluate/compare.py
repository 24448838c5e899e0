"""Compare two runs of the same task on the same items (bf16 vs 4-bit, transformers vs llama.cpp).

Items are paired by id; only items both runs scored count. Right/wrong tasks use the exact
McNemar test; continuous per-item scores (F1, ROUGE-L) a paired bootstrap of the mean difference.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medgem.errors import InputError
from medgem.evaluate.metrics import mcnemar_exact, paired_bootstrap
from medgem.evaluate.report import DEMO_NOTE, load_run, model_label, percent, summarize_run
from medgem.evaluate.tasks import get_task


def compare_runs(run_a: str | Path, run_b: str | Path) -> dict[str, Any]:
    """Paired comparison of two run folders: both runs' headline metrics, the paired item count,
    the test used, the difference B - A (points) and its p-value.

    Raises:
        InputError: different tasks or datasets, or no items in common.
    """
    manifest_a, results_a = load_run(run_a)
    manifest_b, results_b = load_run(run_b)
    if manifest_a["task"] != manifest_b["task"]:
        raise InputError(f"the runs are of different tasks ({manifest_a['task']} vs "
                         f"{manifest_b['task']})", "compare runs of the same task")
    if manifest_a.get("data_fingerprint") != manifest_b.get("data_fingerprint"):
        raise InputError("the runs used different datasets", "compare runs on the same data")
    ok_a = {r["id"]: r for r in results_a if r.get("status") == "ok"}
    ok_b = {r["id"]: r for r in results_b if r.get("status") == "ok"}
    common = [i for i in ok_a if i in ok_b]
    if not common:
        raise InputError("the runs have no scored items in common",
                         "run both on the same items (same --limit and --seed)")
    _, summary_a = summarize_run(run_a)
    _, summary_b = summarize_run(run_b)
    task = manifest_a["task"]
    result: dict[str, Any] = {
        "task": task,
        "primary_metric": summary_a.primary,
        "a": {"run": str(run_a), "model": manifest_a.get("model"),
              "value": percent(summary_a.primary, summary_a.headline.value)},
        "b": {"run": str(run_b), "model": manifest_b.get("model"),
              "value": percent(summary_b.primary, summary_b.headline.value)},
        "paired_items": len(common),
    }
    if get_task(task).right_or_wrong:
        a = [bool(ok_a[i]["correct"]) for i in common]
        b = [bool(ok_b[i]["correct"]) for i in common]
        only_a, only_b, p = mcnemar_exact(a, b)
        result |= {"test": "exact McNemar", "only_a_correct": only_a, "only_b_correct": only_b,
                   "difference": 100 * (sum(b) - sum(a)) / len(common), "p_value": p}
    else:
        scores_a = [float(ok_a[i]["score"]) for i in common]
        scores_b = [float(ok_b[i]["score"]) for i in common]
        diff, low, high, p = paired_bootstrap(scores_a, scores_b)
        result |= {"test": "paired bootstrap (mean per-item score)", "difference": 100 * diff,
                   "ci95": [100 * low, 100 * high], "p_value": p}
    result["significant"] = result["p_value"] < 0.05
    return result


def compare_markdown(result: dict[str, Any]) -> str:
    """The comparison as a short Markdown table and verdict."""
    def label(side: dict[str, Any]) -> str:
        model = side.get("model") or {}
        adapter = f" + {model['adapter']}" if model.get("adapter") else ""
        return (f"{model.get('id')}{adapter} ({model.get('engine')}, "
                f"{model.get('quantization') or model.get('dtype')})")

    lines = [
        f"# medgem eval compare: {result['task']}",
        "",
        f"| run | model | {result['primary_metric']} |",
        "|---|---|---:|",
        f"| A `{result['a']['run']}` | {label(result['a'])} | {result['a']['value']:.1f} |",
        f"| B `{result['b']['run']}` | {label(result['b'])} | {result['b']['value']:.1f} |",
        "",
        f"- Paired items: {result['paired_items']}; test: {result['test']}",
        f"- Difference B − A on paired items: {result['difference']:+.1f} points, "
        f"p = {result['p_value']:.3g}",
    ]
    if "only_a_correct" in result:
        lines.append(f"- Only A right: {result['only_a_correct']}; only B right: "
                     f"{result['only_b_correct']}")
    lines.append("- " + ("The difference is significant at 5%." if result["significant"]
                         else "No significant difference at 5%."))
    for side in ("a", "b"):
        manifest = {"model": result[side].get("model") or {}}
        if manifest["model"].get("demo"):
            lines.append(f"- **{DEMO_NOTE}** (run {side.upper()}: {model_label(manifest)})")
    return "\n".join(lines) + "\n"
