"""`medgem eval TASK DATA --model ...` and `medgem eval compare RUN_A RUN_B`.

Runs a validation task over a local dataset, appending each item's result as it finishes, then
writes report.md / report.json / report.png into the run folder. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from medgem.cli.common import add_audit_flags, add_model_flags, whole_number


def add_parser(subparsers: Any) -> None:
    from medgem.evaluate.tasks import get_task, task_names

    parser = subparsers.add_parser(
        "eval", help="validate a model on a benchmark or your own data; compare runs",
        description="Measure a model on a local dataset and set the score beside the model card's.",
    )
    tasks = parser.add_subparsers(dest="eval_task", metavar="TASK")
    for name in task_names():
        task = get_task(name)
        sub = tasks.add_parser(name, help=task.description, description=task.description)
        sub.add_argument("data", type=Path, help="dataset file (.jsonl/.json/.csv/.parquet) or folder")
        add_model_flags(sub)
        add_audit_flags(sub)
        _add_eval_flags(sub)
        sub.set_defaults(func=_evaluate)
    compare = tasks.add_parser("compare", help="paired test between two runs of the same task")
    compare.add_argument("run_a", type=Path, help="first run folder")
    compare.add_argument("run_b", type=Path, help="second run folder")
    compare.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    compare.set_defaults(func=_compare)
    parser.set_defaults(func=run, eval_parser=parser)


def _add_eval_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("evaluation")
    group.add_argument("--out", type=Path, help="run folder (default: medgem-eval/<task>-<data>-<model>)")
    group.add_argument("--resume", action="store_true", help="continue the run in --out")
    group.add_argument("--limit", type=whole_number(1), help="evaluate this many items")
    group.add_argument("--seed", type=int, help="random subset for --limit; generation seed")
    group.add_argument("--concurrency", type=whole_number(1), default=1, help="questions in flight, decoded together by the engine (default 1)")
    group.add_argument("--max-new-tokens", type=whole_number(1), help="answer budget (default per variant)")
    group.add_argument("--think", choices=["auto", "on", "off"], default="auto",
                       help="thinking instruction: auto = the official prompt on thinking variants")
    group.add_argument("--benchmark", help="benchmark for the model-card lookup (detected from the format)")
    group.add_argument("--split", help="split to read from a datasets folder (e.g. test)")
    group.add_argument("--image-root", type=Path, help="folder image paths are relative to")
    group.add_argument("--uncertain", choices=["ignore", "positive", "negative"], default="ignore",
                       help="cxr-labels: how to read CheXpert's uncertain (-1) labels")
    group.add_argument("--language", default="en", help="vqa: SLAKE question language to keep")
    group.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """`medgem eval` with no task (each task and compare run their own function)."""
    args.eval_parser.print_help()
    return 2


def _evaluate(args: argparse.Namespace) -> int:
    from medgem.cli.common import load_model
    from medgem.evaluate import EvalConfig, TaskOptions, prepare, run_evaluation, write_report

    config = EvalConfig(
        task=args.eval_task, data=str(args.data), split=args.split, benchmark=args.benchmark,
        variant=args.variant, limit=args.limit, seed=args.seed, concurrency=args.concurrency,
        max_new_tokens=args.max_new_tokens, think=args.think,
        options=TaskOptions(image_root=args.image_root, uncertain=args.uncertain,
                            language=args.language),
    )
    prepared = prepare(config)  # bad data fails here, before minutes of model loading
    out = args.out or default_run_folder(args.eval_task, args.data, args.model)
    model = load_model(args)
    try:
        outcome = run_evaluation(model, prepared, out, resume=args.resume,
                                 progress=not args.no_progress)
    except KeyboardInterrupt:
        print(f"medgem: stopped; continue with the same command and --resume --out {out}",
              file=sys.stderr)
        raise
    finally:
        model.close()
    paths = write_report(out)
    report = json.loads(paths["json"].read_text())
    primary = report["primary_metric"]
    value = report["metrics"][primary]
    print(f"{args.eval_task}: {primary} {value['value']:.1f} "
          f"(95% CI {value['ci95'][0]:.1f}-{value['ci95'][1]:.1f}), "
          f"{report['n_scored']}/{report['n_total']} scored, {report['n_failed']} failed, "
          f"{report['n_unparseable']} unparseable")
    card = report["model_card"]
    if card and report["model_card_comparable"]:
        verdict = "within" if report["within_ci"] else "outside"
        print(f"model card ({card['variant']}, {card['benchmark']}): {card['value']:.1f}, "
              f"{verdict} the 95% CI")
    for note in report["notes"]:
        print(f"note: {note}")
    print(f"report: {paths['markdown']}")
    if outcome.failed:
        print(f"medgem: {outcome.failed} item(s) failed; see {paths['markdown']} "
              "(--resume retries them)", file=sys.stderr)
    return 0


def default_run_folder(task: str, data: Path, model: str) -> Path:
    """A stable folder name, so the same command with --resume finds its run."""
    def slug(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:60] or "x"

    return Path("medgem-eval") / f"{slug(task)}-{slug(Path(data).stem)}-{slug(Path(model).name)}"


def _compare(args: argparse.Namespace) -> int:
    from medgem.evaluate import compare_markdown, compare_runs

    result = compare_runs(args.run_a, args.run_b)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print(compare_markdown(result), end="")
    return 0
