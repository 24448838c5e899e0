"""Read evaluation data in the public formats it ships in; nothing is downloaded.

Readers by file kind, one visible table: JSONL, JSON (a list of rows, or an object keyed by id as
PubMedQA ships it), CSV, parquet, and a ``datasets`` folder written by ``save_to_disk`` (its Arrow
files are read directly with pyarrow; the ``datasets`` package is not needed). Every row comes back
with its file and row number, so any later error can name both.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medgem.errors import DatasetError, require


@dataclass(frozen=True)
class Record:
    """One row of a dataset file.

    Attributes:
        row: its 1-based position in ``source`` (for CSV: the data row, header excluded).
    """

    data: dict[str, Any]
    source: Path
    row: int

    @property
    def where(self) -> str:
        """"file.jsonl row 3", for error messages."""
        return f"{self.source} row {self.row}"


def row_error(record: Record, problem: str, hint: str | None = None) -> DatasetError:
    """A DatasetError naming the record's file and row."""
    return DatasetError(f"{record.where}: {problem}", hint)


def _read_jsonl(path: Path) -> Iterator[Record]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(
                    f"{path} row {number}: not valid JSON ({exc.msg} at column {exc.colno})",
                    "each line of a .jsonl file must be one JSON object",
                ) from exc
            if not isinstance(value, dict):
                raise DatasetError(
                    f"{path} row {number}: expected a JSON object, got {type(value).__name__}"
                )
            yield Record(value, path, number)


def _read_json(path: Path) -> Iterator[Record]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DatasetError(
            f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})",
            "if it holds one object per line, name it .jsonl",
        ) from exc
    if isinstance(value, dict) and isinstance(value.get("data"), list):
        value = value["data"]
    if isinstance(value, dict):
        # PubMedQA style: {"<pmid>": {...}, ...}: the key becomes the id.
        for number, (key, row) in enumerate(value.items(), start=1):
            if not isinstance(row, dict):
                raise DatasetError(
                    f"{path} row {number}: expected an object under key '{key}'",
                    "a JSON dataset is a list of objects or an object of objects keyed by id",
                )
            yield Record({"id": str(key), **row}, path, number)
        return
    if not isinstance(value, list):
        raise DatasetError(f"{path}: expected a JSON list or object, got {type(value).__name__}")
    for number, row in enumerate(value, start=1):
        if not isinstance(row, dict):
            raise DatasetError(f"{path} row {number}: expected a JSON object")
        yield Record(row, path, number)


def _read_csv(path: Path) -> Iterator[Record]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames:
            return
        for number, row in enumerate(reader, start=1):
            if None in row:
                raise DatasetError(
                    f"{path} row {number}: more values than the header has columns",
                    "check for unquoted commas",
                )
            yield Record({k: v for k, v in row.items() if k is not None}, path, number)


def _arrow_rows(table: Any, path: Path) -> Iterator[Record]:
    for number, row in enumerate(table.to_pylist(), start=1):
        yield Record(row, path, number)


def _read_parquet(path: Path) -> Iterator[Record]:
    parquet: Any = require("pyarrow.parquet", "eval", "reading parquet datasets", "pyarrow")
    try:
        table = parquet.read_table(path)
    except Exception as exc:  # pyarrow raises several unrelated types for bad files
        raise DatasetError(f"{path}: not a readable parquet file ({exc})") from exc
    yield from _arrow_rows(table, path)


def _read_saved_dataset(folder: Path) -> Iterator[Record]:
    """A ``datasets`` save_to_disk folder: Arrow IPC stream files, in state.json's order."""
    ipc: Any = require("pyarrow.ipc", "eval", "reading datasets folders", "pyarrow")
    state = folder / "state.json"
    if state.is_file():
        try:
            names = [f["filename"] for f in json.loads(state.read_text())["_data_files"]]
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise DatasetError(f"{state}: not a datasets state file") from exc
        files = [folder / name for name in names]
    else:
        files = sorted(folder.glob("*.arrow"))
    for file in files:
        try:
            with file.open("rb") as handle:
                table = ipc.open_stream(handle).read_all()
        except Exception as exc:
            raise DatasetError(f"{file}: not a readable Arrow file ({exc})") from exc
        yield from _arrow_rows(table, file)


READERS: dict[str, Callable[[Path], Iterator[Record]]] = {
    ".jsonl": _read_jsonl, ".ndjson": _read_jsonl, ".json": _read_json, ".csv": _read_csv,
    ".parquet": _read_parquet,
}


def _folder_files(folder: Path, split: str | None) -> list[Path]:
    """The data files in a folder: a saved dataset, a split sub-folder, or loose files."""
    if split:
        candidates = [p for p in folder.iterdir() if p.name == split or p.stem == split
                      or p.stem.startswith(f"{split}-")]
        if not candidates:
            raise DatasetError(f"{folder}: no split named '{split}'")
        return sorted(candidates)
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in READERS)


def read_records(path: str | Path, split: str | None = None) -> list[Record]:
    """Read every row of a dataset file or folder.

    Args:
        path: a .jsonl/.json/.csv/.parquet file, a folder of them, or a ``save_to_disk`` folder
            (a DatasetDict folder needs ``split``).
        split: for folders, the split to read ("test", "validation").

    Raises:
        DatasetError: a missing path, an unknown file type, a malformed row, or no rows at all.
    """
    source = Path(path)
    if not source.exists():
        raise DatasetError(f"no dataset at '{source}'", "check the path")
    records: list[Record] = []
    if source.is_dir():
        if (source / "dataset_dict.json").is_file():
            if not split:
                raise DatasetError(
                    f"{source} holds several splits",
                    "choose one with --split (for example --split test)",
                )
            return read_records(source / split)
        if (source / "dataset_info.json").is_file() or (source / "state.json").is_file():
            records = list(_read_saved_dataset(source))
        else:
            for file in _folder_files(source, split):
                records.extend(read_records(file))
    else:
        reader = READERS.get(source.suffix.lower())
        if reader is None:
            raise DatasetError(
                f"{source}: unknown dataset file type '{source.suffix}'",
                f"use one of: {', '.join(sorted(READERS))}, or a datasets save_to_disk folder",
            )
        try:
            records = list(reader(source))
        except UnicodeDecodeError as exc:
            raise DatasetError(f"{source}: not a UTF-8 text file ({exc.reason})") from exc
    if not records:
        raise DatasetError(f"{source}: the dataset is empty", "point at a file with rows")
    return records
