"""The README's commands, run as printed: every `$ medgem ...` line in a fenced block that can run
offline runs against the demo model (in a folder holding the files it names), and the output
lines the README shows under it must appear in what it prints. A command that cannot run here
(GPU servers, real MedGemma weights) is set aside below by name, with the reason; any other new
command in the README fails this test until it runs or is set aside. The command table must name
every subcommand."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import REPO

README = REPO / "README.md"

# Shown but not run here, each for a reason this machine cannot change.
SET_ASIDE = {
    "medgem serve --model medgemma-1.5-4b-it --backend": "needs two vLLM GPU servers",
    "medgem inspect ct/ --model /tmp/medgem-bench-cpuspeed-quick/": "needs the benchmark's quick model "
        "(benchmarks/cpu_speed.py --quick) and two questions recorded with it (tests/test_speeds.py "
        "checks the estimate, its range and the one-run line)",
    "medgem inspect --study http://127.0.0.1:": "needs the test session's Orthanc (tests/test_pacs_dicomweb.py "
                                                 "runs this listing against it)",
    "medgem audit send-back answer-": "needs an answer about a study on the test session's Orthanc "
                                      "(tests/test_pacs_review.py refuses, reviews and sends it there)",
    "medgem audit review answer-": "reviews that answer (tests/test_pacs_review.py)",
}


@dataclass
class Shown:
    command: str
    output: list[str] = field(default_factory=list)
    line: int = 0


def readme_commands() -> list[Shown]:
    """Each `$ ` line of a fenced block with the lines under it, up to the next one."""
    found: list[Shown] = []
    fenced = False
    current: Shown | None = None
    for number, line in enumerate(README.read_text().splitlines(), 1):
        if line.startswith("```"):
            fenced, current = not fenced, None
            continue
        if not fenced:
            continue
        if line.startswith("$ "):
            current = Shown(line[2:], line=number)
            found.append(current)
        elif current is not None and current.command.endswith("\\"):
            current.command = current.command[:-1] + line.strip()
        elif current is not None:
            current.output.append(line)
    return found


def fragment_pattern(line: str) -> re.Pattern[str] | None:
    """A shown output line as a pattern: numbers, timings, ids and home paths vary; `…` and a
    line of `...` elide. None for a line that says nothing checkable."""
    text = line.strip()
    if not text or text == "..." or set(text) <= {".", "…", " "}:
        return None
    parts = re.split(r"(…|\.\.\.)", text)
    pattern = ""
    for part in parts:
        if part in ("…", "..."):
            pattern += ".*"
            continue
        for token in re.split(r"(\s+)", part):
            if token.isspace():
                pattern += r"\s+"
                continue
            for piece in re.split(r"(/(?:root|home)/[^\s)]*)", token):  # a home folder: any path
                if re.fullmatch(r"/(?:root|home)/[^\s)]*", piece):
                    pattern += r"/[^\s)]*"
                else:
                    pattern += re.sub(r"(?:\\?[0-9a-f]){8,}|[0-9]+(?:[.,][0-9]+)*",
                                      lambda _: r"[0-9a-f.,]+", re.escape(piece))
    return re.compile(pattern)


def _words(command: str) -> list[str]:
    words = shlex.split(command, comments=True)
    assert words[0] == "medgem", command
    return words[1:]


def _runnable(shown: Shown) -> bool:
    if not shown.command.startswith("medgem "):
        return False  # curl and the like: the server tests drive those routes
    return not any(shown.command.startswith(prefix) for prefix in SET_ASIDE)


@pytest.fixture(scope="module")
def workplace(tmp_path_factory: pytest.TempPathFactory, demo_checkpoint: Path,
              tiny_text_checkpoint: Path, chest_xray_dicom: Path) -> Path:
    """A folder holding every file the README's commands name."""
    folder = tmp_path_factory.mktemp("readme")
    shutil.copy(chest_xray_dicom, folder / "RG1_UNCR.dcm")
    with zipfile.ZipFile(folder / "upload.zip", "w") as upload:  # 1,999 members
        for index in range(1999):
            upload.writestr(f"series/{index:04d}.dcm", b"\0" * 8)
    with (zipfile.ZipFile(folder / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as bomb,
          bomb.open("zeros.bin", "w") as member):  # 512 MiB + 1,196 bytes of zeros
        block = b"\0" * 2**20
        for _ in range(512):
            member.write(block)
        member.write(b"\0" * 1196)
    models = Path("/tmp/readme-models")
    models.mkdir(exist_ok=True)
    if not (models / "tiny-text").exists():
        (models / "tiny-text").symlink_to(tiny_text_checkpoint)
    return folder


def test_every_readme_command_runs_as_printed(workplace: Path, tmp_path: Path) -> None:
    commands = readme_commands()
    assert len(commands) >= 10
    env = {"MEDGEM_AUDIT_DB": str(tmp_path / "audit.sqlite"), "MEDGEM_MODEL": "",
           "MEDGEM_CONFIG": ""}
    unknown = [c.command for c in commands if c.command.startswith("medgem ") and not _runnable(c)
               and not any(c.command.startswith(p) for p in SET_ASIDE)]
    assert not unknown
    ran = 0
    for shown in commands:
        if not _runnable(shown):
            continue
        result = subprocess.run([sys.executable, "-m", "medgem", *_words(shown.command)],
                                capture_output=True, text=True, cwd=workplace, timeout=600,
                                env={**os.environ, **env})
        said = result.stdout + result.stderr
        for line in shown.output:
            pattern = fragment_pattern(line)
            if pattern is not None:
                assert pattern.search(said), (f"README.md:{shown.line}: `{shown.command}` no longer "
                                              f"prints\n  {line.strip()}\nit printed:\n{said}")
        ran += 1
    assert ran >= 8


def test_the_command_table_names_every_command() -> None:
    from medgem.cli import COMMANDS

    text = README.read_text()
    table = text[text.index("## The command line"):text.index("Environment variables")]
    missing = [name for name in COMMANDS if f"`medgem {name}" not in table]
    assert not missing, f"README's command table lacks: {', '.join(missing)}"
    for words in ("medgem keys", "medgem tune", "medgem ps", "medgem stop"):
        assert f"`{words}" in table
    audit_row = next(line for line in table.splitlines() if line.startswith("| `medgem audit"))
    assert "review" in audit_row and "send-back" in audit_row


def test_the_pattern_checks_what_it_should() -> None:
    pattern = fragment_pattern("[medgem-demo · hf · 281 prompt + 24 answer tokens · first token 1.86 s · length]")
    assert pattern is not None
    assert pattern.search("[medgem-demo · hf · 280 prompt + 24 answer tokens · first token 9.12 s · length]")
    assert not pattern.search("[medgem-demo · hf · 280 prompt + 24 answer tokens · first token 9.12 s · stop]")
    assert fragment_pattern("...") is None
    home = fragment_pattern("OK: 2 records, head 0cf18691fc9fbc9a (/home/you/.local/share/medgem/audit.sqlite)")
    assert home is not None and home.search("OK: 2 records, head bc78bcf14285c920 (/tmp/x/audit.sqlite)")
