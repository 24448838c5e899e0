"""Small outputs said honestly: an empty answer shown as such with its finish reason, no made-up
speed for one-token answers, --show-thinking saying there was no thought, and Ctrl-C in `ask`
leaving the caveat and a "cancelled" audit record of the text so far."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import REPO, run_cli
from medgem.answer import AnswerChunk, FinalChunk
from medgem.answer.chunks import Answer
from medgem.cli.terminal import render, speed_words
from medgem.engines.base import ModelInfo, Timings, Usage

INFO = ModelInfo(id="medgem-test-vlm", revision="r", variant=None, engine="hf", dtype="float32", demo=True)


def _answer(text: str, tokens: int, first: float, total: float, reason: str = "stop") -> Answer:
    return Answer(text=text, thinking="", finish_reason=reason, usage=Usage(10, tokens),  # type: ignore[arg-type]
                  timings=Timings(first, total, tokens), model=INFO, caveat="CAVEAT", label="TEST")


def _rendered(answer: Answer, *pieces: str, show_thinking: bool = False) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    render(iter([*(AnswerChunk(p) for p in pieces), FinalChunk(answer)]), as_json=False,
           show_thinking=show_thinking, out=out, err=err)
    return out.getvalue(), err.getvalue()


def test_an_empty_answer_is_said_with_its_finish_reason() -> None:
    out, err = _rendered(_answer("", 6, 0.5, 0.5))
    assert out == "\n"
    assert "medgem: the answer is empty (the model ended after 6 token(s) with no text; finish reason: stop)" in err
    assert "0.0 tok/s" not in err and "decode speed not measured (no text before the end)" in err
    assert "CAVEAT" in err


def test_speed_is_only_given_where_it_was_measured() -> None:
    assert speed_words(_answer("Yes", 1, 0.4, 0.4)) == "no decode speed (one token)"
    assert speed_words(_answer("", 0, 0.0, 0.1)) == "no tokens"
    assert speed_words(_answer("a b c", 5, 1.0, 3.0)) == "2.0 tok/s"  # 4 tokens after the first, in 2 s
    _, err = _rendered(_answer("Yes", 1, 0.4, 0.4), "Yes")
    assert "1 answer token ·" in err and "no decode speed (one token)" in err


def test_show_thinking_says_when_there_was_no_thought() -> None:
    _, err = _rendered(_answer("Pneumonia.", 3, 0.1, 0.3), "Pneumonia.", show_thinking=True)
    assert "medgem: no thinking: the model wrote no thought before its answer" in err
    _, quiet = _rendered(_answer("Pneumonia.", 3, 0.1, 0.3), "Pneumonia.")
    assert "no thinking" not in quiet


def test_a_one_token_answer_from_the_cli(tiny_text_checkpoint: Path) -> None:
    result = run_cli("ask", "What is sepsis?", "--model", str(tiny_text_checkpoint),
                     "--max-new-tokens", "1", "--no-audit", "--no-server")
    assert result.returncode == 0, result.stderr
    assert "1 answer token · first token" in result.stderr
    assert "no decode speed (one token)" in result.stderr and "0.0 tok/s" not in result.stderr


def test_ctrl_c_in_ask_keeps_the_caveat_and_a_cancelled_record(tiny_vlm_checkpoint: Path,
                                                              tmp_path: Path) -> None:
    store = tmp_path / "audit.sqlite"
    process = subprocess.Popen(
        [sys.executable, "-m", "medgem", "ask", "Write a long report on sepsis.", "--model",
         str(tiny_vlm_checkpoint), "--max-new-tokens", "1900", "--audit-db", str(store),
         "--no-server"], cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stderr is not None
    label = process.stderr.readline()  # the label comes first, before any answer token
    assert label.startswith("[TEST MODEL"), label
    time.sleep(1.0)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "medgem: stopped (Ctrl-C); the answer so far is recorded as cancelled (audit " in err
    assert "must not directly inform diagnosis" in err and "Traceback" not in err

    from medgem.audit import open_store

    opened = open_store(store)
    try:
        [record] = opened.records(kind="answer")
    finally:
        opened.close()
    assert record.body["finish_reason"] == "cancelled"
    assert record.body["output"] == out.strip()  # the text so far, as it was shown
    assert json.dumps(record.body)  # a whole record, not a fragment


def test_chat_shows_medgems_stage_line_not_the_librarys_bar(tiny_text_checkpoint: Path) -> None:
    from test_cli_chat_pty import Terminal

    chat = Terminal("chat", "--model", str(tiny_text_checkpoint), "--engine", "hf", "--no-audit",
                    "--no-server", "--max-new-tokens", "2")
    drawn = chat.expect("you> ")
    assert f"loading {tiny_text_checkpoint.name} … " in drawn
    assert "Loading weights" not in drawn and "it/s]" not in drawn  # transformers' bar stays off
    chat.send("/quit\n")
    assert chat.exit_code() == 0


def test_keys_list_with_no_keys_says_so(tmp_path: Path) -> None:
    """`medgem keys list` with no keys printed nothing at all; it says where it looked and how
    to add one (on stderr: stdout stays a table for scripts)."""
    keys = tmp_path / "api-keys.json"
    result = run_cli("keys", "--file", str(keys), "list")
    assert result.returncode == 0 and result.stdout == "", result.stderr
    assert f"no API keys in {keys}" in result.stderr and "medgem keys add NAME" in result.stderr


def test_keys_take_the_file_after_the_action_too(tmp_path: Path) -> None:
    """`medgem keys add NAME --file PATH` was refused ("unrecognized arguments"): only
    `keys --file PATH add NAME` worked. Both spellings reach the same file."""
    keys = tmp_path / "api-keys.json"
    added = run_cli("keys", "add", "radiology", "--file", str(keys))
    assert added.returncode == 0, added.stderr
    assert keys.exists() and str(keys) in added.stderr
    listed = run_cli("keys", "--file", str(keys), "list")
    assert listed.stdout.startswith("radiology\tuser\t"), listed.stderr
    assert run_cli("keys", "revoke", "radiology", "--file", str(keys)).returncode == 0
    assert "revoked" in run_cli("keys", "list", "--file", str(keys)).stdout
