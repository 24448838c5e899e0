"""`medgem chat` in a real terminal (a pty): Ctrl-C stops an answer and keeps the chat (the text
so far recorded as cancelled, with the caveat), a bad /image is refused when attached, /help,
/system and /save, multi-line input, /quit."""

from __future__ import annotations

import codecs
import json
import os
import pty
import select
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.usefixtures("llamacpp_runs")


class Terminal:
    def __init__(self, *args: str) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: medgem with this pty as its controlling terminal
            os.chdir(REPO)
            os.execv(sys.executable, [sys.executable, "-m", "medgem", *args])
        self.seen = ""
        # Bytes decoded as a stream, so a character split between two reads stays whole.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def expect(self, text: str, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while text not in self.seen:
            assert time.monotonic() < deadline, f"never saw {text!r}; saw {self.seen[-800:]!r}"
            ready, _, _ = select.select([self.fd], [], [], 0.5)
            if ready:
                try:
                    self.seen += self._decoder.decode(os.read(self.fd, 4096))
                except OSError:
                    break
        found = self.seen
        self.seen = self.seen[self.seen.index(text) + len(text):]
        return found

    def send(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def exit_code(self) -> int:
        _, status = os.waitpid(self.pid, 0)
        return os.waitstatus_to_exitcode(status)


def test_chat_forgives(tmp_path: Path) -> None:
    from medgem.demo.build import demo_gguf_path

    bad = tmp_path / "config.json"
    bad.write_text("{}")
    saved = tmp_path / "chat.json"
    term = Terminal("chat", "--model", str(demo_gguf_path()), "--max-new-tokens", "400",
                    "--n-ctx", "1024", "--no-audit")
    term.expect("you> ")
    term.send(f"/image {bad}\n")
    term.expect("not attached")
    term.send("/help\n")
    term.expect("/system")
    term.send("/system You are a cardiologist.\n")
    term.expect("system prompt set")
    term.send("Tell me about the heart \\\n")
    term.expect("...> ")
    term.send("and its four chambers.\n")
    term.expect("medgemma> ")
    term.expect(" ")  # the answer has started
    term.send("\x03")  # Ctrl-C
    term.expect("answer stopped")
    term.expect("you> ")
    term.send("What is a pulse?\n")
    term.expect("medgemma> ")
    term.expect("you> ", timeout=180)  # the chat is still there and answers in full
    term.send(f"/save {saved}\n")
    term.expect("saved 2 turns")
    term.send("/quit\n")
    assert term.exit_code() == 0
    record = json.loads(saved.read_text())
    assert record["system"] == "You are a cardiologist."
    assert [t["role"] for t in record["turns"]] == ["user", "assistant"]
    assert record["turns"][0]["content"] == "What is a pulse?"


def test_ctrl_c_in_chat_records_the_answer_so_far_as_cancelled(tiny_text_checkpoint: Path,
                                                               tmp_path: Path) -> None:
    store = tmp_path / "audit.sqlite"
    term = Terminal("chat", "--model", str(tiny_text_checkpoint), "--engine", "hf", "--no-server",
                    "--max-new-tokens", "1900", "--audit-db", str(store))
    term.expect("you> ")
    term.send("Write a long report on sepsis.\n")
    term.expect("medgemma> ")
    time.sleep(1.0)  # some of the answer is written
    term.send("\x03")  # Ctrl-C
    said = term.expect("(answer stopped; it is not kept in the conversation)")
    term.expect("you> ")
    term.send("/quit\n")
    assert term.exit_code() == 0
    assert "medgem: stopped (Ctrl-C); the answer so far is recorded as cancelled (audit " in said
    assert "must not directly inform diagnosis" in said and "Traceback" not in said
    # What the terminal showed of the answer: after the prompt, before the stop line; the
    # terminal echoes Ctrl-C as ^C wherever the output stood, and writes newlines as CR LF.
    shown = said.split("\nmedgem: stopped (Ctrl-C)")[0].replace("^C", "").replace("\r\n", "\n")
    shown = shown.strip()

    from medgem.audit import open_store

    opened = open_store(store)
    try:
        [record] = opened.records(kind="answer")
    finally:
        opened.close()
    assert record.body["finish_reason"] == "cancelled"
    assert record.body["output"] and record.body["output"] == shown
