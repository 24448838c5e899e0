"""``medgem inspect`` run in a subprocess the way a user runs it (no model is loaded)."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from imaging_fixtures import hu_phantom, write_ct_series
from medgem.cli import inspect as command
from medgem.cli.common import imaging_from_args
from medgem.errors import ImageInputError

# The subcommand module registered on a bare parser, as medgem's CLI registers it.
DRIVER = (
    "import argparse, sys\n"
    "from medgem.cli import inspect as command\n"
    "parser = argparse.ArgumentParser(prog='medgem')\n"
    "command.add_parser(parser.add_subparsers())\n"
    "args = parser.parse_args(sys.argv[1:])\n"
    "sys.exit(args.func(args))\n"
)


def medgem(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", DRIVER, *argv], capture_output=True, text=True, timeout=120)


def test_inspect_ct_series_text_and_previews(tmp_path: Path) -> None:
    write_ct_series(tmp_path / "ct", np.stack([hu_phantom()] * 4))
    result = medgem("inspect", str(tmp_path / "ct"), "--save-preprocessed", str(tmp_path / "png"))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert re.search(r"modality: +CT", out) and re.search(r"slices_total: +4", out)
    assert re.search(r"slice_spacing_mm: +2.5", out)
    assert re.search(r"window: +ct 3 windows -1024..1024 -135..215 0..80", out)
    assert "4 RGB images 20x16 (resized to 896x896" in out and "SLICE n" in out
    assert len(list((tmp_path / "png").glob("*.png"))) == 4


def test_inspect_json_for_a_radiograph() -> None:
    result = medgem("inspect", get_testdata_file("RG1_UNCR.dcm", download=False), "--json", "--window", "15000,20000")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["modality"] == "CR" and report["kind"] == "image"
    assert report["metadata"]["photometric"] == "MONOCHROME1"
    assert report["metadata"]["window"] == "window 5000..25000"


def test_inspect_lists_several_series_without_failing(tmp_path: Path) -> None:
    uids = [generate_uid(), generate_uid()]
    for name, uid in zip("ab", uids, strict=True):
        write_ct_series(tmp_path / name, np.stack([hu_phantom()] * 2), series_uid=uid)
    result = medgem("inspect", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert uids[0][-12:] in result.stdout and "--series" in result.stdout
    chosen = medgem("inspect", str(tmp_path), "--series", uids[1][-12:], "--json")
    assert json.loads(chosen.stdout)["metadata"]["series_count"] == 2


def test_three_windows_set_the_ct_channels_and_two_are_refused() -> None:
    parser = argparse.ArgumentParser()
    command.add_parser(parser.add_subparsers())
    args = parser.parse_args(["inspect", "x", "--window", "0,2048", "--window", "40,400", "--window", "40,80"])
    assert imaging_from_args(args).ct_windows == ((-1024, 1024), (-160, 240), (0, 80))
    args = parser.parse_args(["inspect", "x", "--window", "0,2048", "--window", "40,400"])
    with pytest.raises(ImageInputError, match=r"once .* or three times"):
        imaging_from_args(args)
    with pytest.raises(SystemExit):
        parser.parse_args(["inspect", "x", "--window", "40"])


def test_bad_input_fails_with_the_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = medgem("inspect", str(tmp_path / "empty"))
    assert result.returncode != 0 and "folder empty is empty" in result.stderr
