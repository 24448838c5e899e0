"""Dataset readers and task loaders on the team's fixture files; bad input names file and row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medgem.errors import DatasetError
from medgem.evaluate.datasets import read_records
from medgem.evaluate.tasks import TaskOptions, get_task

DATA = Path(__file__).parent / "data" / "eval"


def test_jsonl_rows_carry_file_and_row() -> None:
    records = read_records(DATA / "medqa.jsonl")
    assert len(records) == 6
    assert records[2].row == 3 and records[2].where.endswith("medqa.jsonl row 3")


def test_json_keyed_by_id_becomes_rows() -> None:
    records = read_records(DATA / "pubmedqa.json")
    assert [r.data["id"] for r in records][:2] == ["90000001", "90000002"]


def test_csv_rows() -> None:
    records = read_records(DATA / "chexpert.csv")
    assert len(records) == 4
    assert records[1].data["Edema"] == "-1.0"


def test_parquet_and_saved_dataset_folder(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.ipc
    import pyarrow.parquet

    rows = [json.loads(line) for line in (DATA / "medmcqa.jsonl").read_text().splitlines()]
    table = pa.Table.from_pylist(rows)
    pyarrow.parquet.write_table(table, tmp_path / "test.parquet")
    assert [r.data["id"] for r in read_records(tmp_path / "test.parquet")] == [
        "mm-1", "mm-2", "mm-3", "mm-4"]
    # A DatasetDict saved with save_to_disk: Arrow stream files + state.json per split.
    split = tmp_path / "saved" / "test"
    split.mkdir(parents=True)
    (tmp_path / "saved" / "dataset_dict.json").write_text('{"splits": ["test"]}')
    with pa.OSFile(str(split / "data-00000-of-00001.arrow"), "wb") as sink, \
            pyarrow.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    (split / "state.json").write_text(json.dumps(
        {"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))
    (split / "dataset_info.json").write_text("{}")
    with pytest.raises(DatasetError, match="--split"):
        read_records(tmp_path / "saved")
    records = read_records(tmp_path / "saved", split="test")
    assert len(records) == 4 and records[3].data["opd"] == "Phrenic"
    loaded = get_task("mcq").load(records, TaskOptions())
    assert loaded.benchmark == "medmcqa"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("bad_json_row.jsonl", r"bad_json_row\.jsonl row 3: not valid JSON"),
        ("empty.jsonl", r"empty\.jsonl: the dataset is empty"),
        ("not_a_dataset.txt", r"unknown dataset file type '\.txt'"),
        ("no_such_file.jsonl", r"no dataset at"),
    ],
)
def test_unreadable_data(name: str, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        read_records(DATA / name)


def test_missing_field_names_file_and_row() -> None:
    records = read_records(DATA / "missing_options.jsonl")
    with pytest.raises(DatasetError, match=r"missing_options\.jsonl row 2: missing field 'options'"):
        get_task("mcq").load(records, TaskOptions())


def test_bad_answer_names_file_and_row() -> None:
    records = read_records(DATA / "bad_answer.jsonl")
    with pytest.raises(DatasetError, match=r"bad_answer\.jsonl row 2: answer 'F' is not one of"):
        get_task("mcq").load(records, TaskOptions())


def test_duplicate_ids_are_refused(tmp_path: Path) -> None:
    row = {"id": "x", "question": "q?", "options": ["a", "b"], "answer": 0}
    path = tmp_path / "dup.jsonl"
    path.write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DatasetError, match="row 2: id 'x' already used at row 1"):
        get_task("mcq").load(read_records(path), TaskOptions())


def test_medqa_items() -> None:
    loaded = get_task("mcq").load(read_records(DATA / "medqa.jsonl"), TaskOptions())
    assert loaded.benchmark == "medqa"
    first = loaded.items[0]
    assert first.reference == "B" and first.category == "step1"
    assert "(B) Athletic conditioning" in first.question
    assert first.question.endswith("Answer with the letter of the correct option.")
    assert len(loaded.items[4].options) == 5


def test_medmcqa_cop_is_one_based() -> None:
    loaded = get_task("mcq").load(read_records(DATA / "medmcqa.jsonl"), TaskOptions())
    assert [i.reference for i in loaded.items] == ["B", "C", "A", "D"]
    assert loaded.notes["medmcqa_cop_base"] == "1"


def test_mmlu_and_afrimed_formats(tmp_path: Path) -> None:
    mmlu = tmp_path / "mmlu.jsonl"
    mmlu.write_text(json.dumps({"question": "2+2?", "subject": "college_medicine",
                                "choices": ["3", "4", "5", "6"], "answer": 1}) + "\n")
    loaded = get_task("mcq").load(read_records(mmlu), TaskOptions())
    assert loaded.benchmark == "mmlu-med" and loaded.items[0].reference == "B"
    afri = tmp_path / "afri.csv"
    afri.write_text(
        "sample_id,question,answer_options,correct_answer,specialty,question_type\n"
        's1,Which is a vitamin?,"{""option1"": ""Iron"", ""option2"": ""Folate""}",option2,Nutrition,mcq\n'
        "s2,Describe malaria,,,Infectious,saq\n"
    )
    loaded = get_task("mcq").load(read_records(afri), TaskOptions())
    assert loaded.benchmark == "afrimed-qa"
    assert [i.reference for i in loaded.items] == ["B"]
    assert loaded.skipped == {"not a multiple-choice row": 1}


def test_pubmedqa_items() -> None:
    loaded = get_task("pubmedqa").load(read_records(DATA / "pubmedqa.json"), TaskOptions())
    item = loaded.items[0]
    assert item.id == "90000001" and item.reference == "yes" and item.category == "yes"
    assert "Systolic pressure fell" in item.question


def test_vqa_rad_and_slake_items() -> None:
    rad = get_task("vqa").load(read_records(DATA / "vqa_rad.json"), TaskOptions())
    assert rad.benchmark == "vqa-rad"
    assert [i.category for i in rad.items[:2]] == ["closed", "open"]
    assert str(rad.items[0].images[0]).endswith("images/synpic1.png")
    slake = get_task("vqa").load(read_records(DATA / "slake.json"), TaskOptions())
    assert slake.benchmark == "slake" and len(slake.items) == 2
    assert slake.skipped == {"question language not 'en'": 1}


def test_cxr_label_policies() -> None:
    records = read_records(DATA / "chexpert.csv")
    task = get_task("cxr-labels")
    ignore = task.load(records, TaskOptions())
    assert ignore.benchmark == "chexpert"
    assert ignore.items[1].reference == {"Atelectasis": False, "Cardiomegaly": True,
                                         "Consolidation": False, "Edema": None,
                                         "Pleural Effusion": False}
    positive = task.load(records, TaskOptions(uncertain="positive"))
    assert positive.items[1].reference["Edema"] is True
    assert ignore.items[2].category == "Lateral"


def test_cxr_bad_label_value(tmp_path: Path) -> None:
    text = (DATA / "chexpert.csv").read_text().replace("-1.0,0.0", "maybe,0.0", 1)
    path = tmp_path / "labels.csv"
    path.write_text(text)
    with pytest.raises(DatasetError, match=r"labels\.csv row 2: Edema is 'maybe'"):
        get_task("cxr-labels").load(read_records(path), TaskOptions())


def test_report_items() -> None:
    loaded = get_task("report").load(read_records(DATA / "reports.jsonl"), TaskOptions())
    assert loaded.items[1].reference.startswith("The heart is enlarged")
    assert loaded.items[0].system == "You are an expert radiologist."
