"""Progress where a person waits, as a user sees it: in a terminal (a pty) the stage lines and
bars show; through a pipe nothing of them does."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import select
import struct
import sys
import termios
import time
from pathlib import Path

import pytest
from PIL import Image

from conftest import REPO, run_cli


def run_in_terminal(*args: str, timeout: float = 300) -> tuple[int, str]:
    """`medgem ARGS` with a 120-column pty as its terminal: (exit code, everything it drew)."""
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(REPO)
        os.execv(sys.executable, [sys.executable, "-m", "medgem", *args])
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    seen = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if not ready:
            continue
        try:
            data = os.read(fd, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        seen += data
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), seen.decode(errors="replace")


@pytest.fixture()
def picture(tmp_path: Path) -> Path:
    path = tmp_path / "grey.png"
    Image.new("RGB", (64, 64), (90, 90, 90)).save(path)
    return path


@pytest.mark.usefixtures("llamacpp_runs")
def test_ask_shows_loading_and_image_stages_on_a_terminal_only(converted_vlm: Path,
                                                                picture: Path) -> None:
    args = ("ask", "What is this?", "--model", str(converted_vlm), "--image", str(picture),
            "--max-new-tokens", "3", "--no-audit")
    code, drawn = run_in_terminal(*args)
    assert code == 0, drawn
    assert f"loading {converted_vlm.name} … " in drawn
    assert "encoding image 1/1 … " in drawn and "reading the prompt" in drawn
    assert drawn.rstrip().endswith("length]")  # the lines were rubbed out; the answer stands

    piped = run_cli(*args)
    assert piped.returncode == 0, piped.stderr
    for text in ("loading", "encoding image", "reading the prompt", "\x1b[K", "\r"):
        assert text not in piped.stderr


def test_transformers_load_and_prompt_stages(tiny_text_checkpoint: Path) -> None:
    args = ("ask", "Hello?", "--model", str(tiny_text_checkpoint), "--engine", "hf",
            "--max-new-tokens", "2", "--no-audit")
    code, drawn = run_in_terminal(*args)
    assert code == 0, drawn
    assert f"loading {tiny_text_checkpoint.name} … " in drawn and "reading the prompt … " in drawn
    assert "Loading weights" not in drawn  # one line says it: transformers' own bar is off

    piped = run_cli(*args)
    assert piped.returncode == 0 and "loading" not in piped.stderr and "\x1b[K" not in piped.stderr


@pytest.mark.usefixtures("llamacpp_runs")
def test_convert_bars_reach_100_and_the_check_prints_once(tiny_vlm_checkpoint: Path,
                                                         tmp_path: Path) -> None:
    code, drawn = run_in_terminal("convert", str(tiny_vlm_checkpoint), "--quant", "q8_0",
                                  "--out", str(tmp_path / "tty"))
    assert code == 0, drawn
    for bar in ("writing model.unquantized.gguf: 100%", "quantizing to q8_0: 100%",
                "writing mmproj.gguf: 100%"):
        assert bar in drawn
    assert "checking the result" in drawn  # the step after the bars is not a blank wait
    assert drawn.count("check:  tokenizer matches") == 1

    piped = run_cli("convert", str(tiny_vlm_checkpoint), "--quant", "q8_0",
                    "--out", str(tmp_path / "pipe"))
    assert piped.returncode == 0, piped.stderr
    assert "%|" not in piped.stderr and "checking" not in piped.stderr
    assert piped.stdout.count("check:") == 1


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_line_steps_aside_for_a_bar_and_library_bars_come_back_after() -> None:
    import logging

    import huggingface_hub.utils as hub

    from medgem.cli.progress import STAGES, Waiting

    was_off = hub.are_progress_bars_disabled()
    hub.enable_progress_bars()  # as a fresh process has them
    screen = _Terminal()
    with Waiting("converting x", screen, interval=0.01) as waiting:
        assert hub.are_progress_bars_disabled()  # the hub's own bars are off while it shows
        STAGES.debug("writing model.gguf", extra={"bar": True})
        aside = len(screen.getvalue())
        assert screen.getvalue().endswith("\r\x1b[K")  # rubbed out for the bar
        time.sleep(0.1)
        assert len(screen.getvalue()) == aside  # nothing drawn over the bar
        STAGES.debug("checking the result")
        assert waiting.label == "checking the result"
        assert "checking the result" in screen.getvalue()[aside:]  # drawn again from the next stage
    assert not hub.are_progress_bars_disabled()  # back as they were
    assert STAGES.level == logging.NOTSET
    if was_off:
        hub.disable_progress_bars()
