"""medgem.tune before training: datasets -> conversations, the collate rules (labels -100 exactly
on prompt, image and padding tokens), the prompt the harness asks, and one clear error per bad
input, all found before any weights load."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest

from tune_fixtures import OPTIONS, write_colour_vqa, write_cue_mcq

pytest.importorskip("transformers")

from medgem.errors import (
    DatasetError,
    EngineUnavailableError,
    ResourceError,
    UnsupportedInputError,
)
from medgem.tune import TuneConfig, plan_tuning
from medgem.tune.collate import IGNORE_INDEX, ChatCollator
from medgem.tune.data import load_examples, split_examples


def test_mcq_rows_become_the_harness_question_and_the_option_as_answer(tmp_path: Path) -> None:
    task, examples, loaded = load_examples(write_cue_mcq(tmp_path / "mcq.jsonl", rows=8))
    assert task == "mcq" and loaded is not None and len(examples) == 8
    first = examples[0]
    user, assistant = first.turns
    assert user.role == "user" and user.parts == (loaded.items[0].question,)
    letter = loaded.items[0].reference
    assert assistant.parts == (f"({letter}) {OPTIONS[letter]}",)


def test_chat_rows_keep_every_turn_and_need_an_answer_last(tmp_path: Path) -> None:
    data = tmp_path / "chat.jsonl"
    rows = [{"messages": [{"role": "system", "content": "Be brief."},
                          {"role": "user", "content": "Hi"},
                          {"role": "assistant", "content": "Hello"}]},
            {"messages": [{"role": "user", "content": "Only a question"}]}]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(DatasetError, match=r"chat.jsonl row 2: the last message must be the assistant"):
        load_examples(data)
    data.write_text(json.dumps(rows[0]) + "\n")
    task, examples, _ = load_examples(data)
    assert task == "chat" and [t.role for t in examples[0].turns] == ["system", "user", "assistant"]


def test_split_is_seeded_disjoint_and_complete(tmp_path: Path) -> None:
    _, examples, _ = load_examples(write_cue_mcq(tmp_path / "mcq.jsonl", rows=50))
    train, held = split_examples(examples, 0.2, seed=3)
    again = split_examples(examples, 0.2, seed=3)
    assert (train, held) == again
    assert len(held) == 10 and not {e.id for e in train} & {e.id for e in held}
    assert {e.id for e in train} | {e.id for e in held} == {e.id for e in examples}
    assert [e.id for e in split_examples(examples, 0.2, seed=4)[1]] != [e.id for e in held]


def test_wrong_format_names_the_file_and_row(tmp_path: Path) -> None:
    data = tmp_path / "odd.jsonl"
    data.write_text('{"foo": 1, "bar": 2}\n')
    with pytest.raises(DatasetError, match=r"odd.jsonl row 1: cannot tell the dataset's format"):
        load_examples(data)
    mcq = write_cue_mcq(tmp_path / "mcq.jsonl", rows=3)
    lines = mcq.read_text().splitlines()
    lines[1] = json.dumps({"question": "q", "options": OPTIONS, "answer": "Z"})
    mcq.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"mcq.jsonl row 2: answer 'Z' is not one of the options"):
        load_examples(mcq)


def test_missing_images_fail_before_training(tmp_path: Path) -> None:
    data = write_colour_vqa(tmp_path / "vqa", rows=3)
    (data.parent / "img1.png").unlink()
    with pytest.raises(DatasetError, match=r"vqa.jsonl row 2: image '.*img1.png' not found"):
        load_examples(data)


def test_image_data_for_a_text_only_model_is_refused(tmp_path: Path,
                                                      tiny_text_checkpoint: Path) -> None:
    data = write_colour_vqa(tmp_path / "vqa", rows=4)
    config = TuneConfig(data=str(data), model=str(tiny_text_checkpoint), out=tmp_path / "out")
    with pytest.raises(UnsupportedInputError, match=r"text-only model but .*vqa\.jsonl row"):
        plan_tuning(config)


def test_qlora_on_a_cpu_is_refused(tmp_path: Path, tiny_text_checkpoint: Path) -> None:
    config = TuneConfig(data=str(write_cue_mcq(tmp_path / "mcq.jsonl", rows=10)),
                        model=str(tiny_text_checkpoint), out=tmp_path / "out", quantize="4bit",
                        device="cpu")
    with pytest.raises(EngineUnavailableError, match="needs a CUDA GPU"):
        plan_tuning(config)


def header_only_checkpoint(source: Path, target: Path, vocab: int, hidden: int) -> Path:
    """A checkpoint whose safetensors header declares a huge embedding but holds no data:
    enough for the memory check, which reads headers only, and nothing else."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.safetensors"))
    header = json.dumps({"model.embed_tokens.weight": {"dtype": "F32", "shape": [vocab, hidden],
                                                       "data_offsets": [0, 0]}}).encode()
    (target / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    return target


def test_out_of_memory_is_predicted_before_loading(tmp_path: Path,
                                                   tiny_text_checkpoint: Path) -> None:
    huge = header_only_checkpoint(tiny_text_checkpoint, tmp_path / "huge", 262208, 400_000)
    config = TuneConfig(data=str(write_cue_mcq(tmp_path / "mcq.jsonl", rows=10)),
                        model=str(huge), out=tmp_path / "out", device="cpu")
    with pytest.raises(ResourceError, match=r"needs about \d+.* GiB .*--no-save-embeddings"):
        plan_tuning(config)
    assert not (tmp_path / "out").exists()  # nothing written, nothing loaded


@pytest.fixture(scope="module")
def vlm_collator(tiny_vlm_checkpoint: Path) -> ChatCollator:
    from transformers import AutoProcessor

    return ChatCollator(AutoProcessor.from_pretrained(str(tiny_vlm_checkpoint)), multimodal=True)


def test_labels_are_minus_100_exactly_on_prompt_image_and_padding(
        tmp_path: Path, vlm_collator: ChatCollator) -> None:
    _, examples, _ = load_examples(write_colour_vqa(tmp_path / "vqa", rows=2))
    long = examples[1]
    answer = long.turns[-1]
    longer = type(answer)("assistant", ("a much longer answer than the other one",))
    batch = vlm_collator([examples[0], type(long)(long.id, long.source, long.row,
                                                 (*long.turns[:-1], longer))])
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    tokenizer = vlm_collator.tokenizer
    assert ids.shape == labels.shape and (mask == 0).any()  # one row is padded
    for row, text in enumerate([examples[0].turns[-1].parts[0], longer.parts[0]]):
        answer_ids = tokenizer(text + "<end_of_turn>", add_special_tokens=False).input_ids
        length = int(mask[row].sum())
        start = length - len(answer_ids)
        assert ids[row, start:length].tolist() == answer_ids  # right padding: answer then pad
        expected = [IGNORE_INDEX] * ids.shape[1]
        expected[start:length] = answer_ids
        assert labels[row].tolist() == expected
        assert ids[row].tolist().count(262144) == 4  # the image's soft tokens, all masked
        assert ids[row].tolist().count(tokenizer.bos_token_id) == 1  # the template's BOS only
    assert "pixel_values" in batch and batch["token_type_ids"].sum() == 8


def test_training_prompt_is_the_prompt_the_harness_asks(tmp_path: Path, tiny_vlm_checkpoint: Path,
                                                        vlm_collator: ChatCollator) -> None:
    """The tuned model is evaluated through MedGemma.ask: it must see the prompt it learned on."""
    from medgem.api import MedGemma
    from medgem.evaluate.runner import _open_image

    _, examples, _ = load_examples(write_colour_vqa(tmp_path / "vqa", rows=1))
    item = examples[0].item
    assert item is not None
    batch = vlm_collator(examples)
    answer_tokens = int((batch["labels"][0] != IGNORE_INDEX).sum())
    mg = MedGemma.load(tiny_vlm_checkpoint, engine="hf", options={"device": "cpu", "progress": False}, audit=False)
    try:
        request = mg.request(item.question, images=[_open_image(r) for r in item.images],
                             system=item.system)
        asked = mg.engine.encode(request)["input_ids"][0].tolist()
    finally:
        mg.close()
    assert batch["input_ids"][0, : len(asked)].tolist() == asked
    assert len(asked) + answer_tokens == int(batch["attention_mask"][0].sum())
