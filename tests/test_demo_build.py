"""The demo build writes no library progress bars: its caller names the stage itself."""

from __future__ import annotations

import pytest


def test_the_builds_library_bars_are_off_inside_and_restored_after(
        capfd: pytest.CaptureFixture[str]) -> None:
    from transformers import modeling_gguf_pytorch_utils as gguf_reader
    from transformers.utils import logging

    from medgem.demo.build import quiet_library_bars

    logging.enable_progress_bar()
    reader_bar = gguf_reader.tqdm
    with quiet_library_bars():
        for _ in gguf_reader.tqdm(range(3), desc="Converting and de-quantizing GGUF tensors..."):
            pass
        for _ in logging.tqdm(range(3), desc="Loading weights"):
            pass
    assert capfd.readouterr().err == ""
    assert gguf_reader.tqdm is reader_bar
    assert logging.is_progress_bar_enabled()
    for _ in gguf_reader.tqdm(range(3), desc="after the build"):
        pass
    assert "after the build" in capfd.readouterr().err  # the switch really was put back on
