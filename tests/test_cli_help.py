"""The command explains itself: help on every flag, no raw reStructuredText, "did you mean" for a
mistyped command, bash/zsh completion made from the parser, flags that do what they say."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from conftest import run_cli


def _parsers(parser: argparse.ArgumentParser, path: str = "medgem"
             ) -> list[tuple[str, argparse.ArgumentParser]]:
    found = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _parsers(sub, f"{path} {name}")
    return found


def test_every_flag_and_argument_has_help() -> None:
    from medgem.cli import build_parser

    missing = [f"{path}: {'/'.join(action.option_strings) or action.dest}"
               for path, parser in _parsers(build_parser()) for action in parser._actions
               if not isinstance(action, argparse._SubParsersAction) and not action.help]
    assert missing == []


def test_help_pages_hold_no_restructuredtext() -> None:
    from medgem.cli import build_parser

    for path, _ in _parsers(build_parser()):
        if path.count(" ") > 1:
            continue  # the leaves of eval/audit/keys share their parent's module
        page = run_cli(*path.split()[1:], "--help")
        assert page.returncode == 0, (path, page.stderr)
        for markup in ("``", ":class:", ":func:", ":meth:"):
            assert markup not in page.stdout, (path, page.stdout)


@pytest.mark.parametrize(("typed", "meant"), [("aks", "ask"), ("sever", "serve"),
                                              ("adit", "audit"), ("doctr", "doctor")])
def test_a_mistyped_command_gets_did_you_mean(typed: str, meant: str) -> None:
    result = run_cli("--debug", typed, "--model", "x")
    assert result.returncode == 2
    assert result.stderr == f"medgem: error: unknown command '{typed}' — did you mean '{meant}'?\n"


def test_a_mistyped_choice_further_in_gets_did_you_mean_too() -> None:
    action = run_cli("audit", "verfy")
    assert action.returncode == 2 and "— did you mean 'verify'?" in action.stderr
    quant = run_cli("convert", "ckpt", "--quant", "q4km")
    assert quant.returncode == 2 and "— did you mean 'q4_k_m'?" in quant.stderr


def test_an_unknown_command_lists_the_commands() -> None:
    result = run_cli("frobnicate")
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
    assert "unknown command 'frobnicate'" in result.stderr and "ask, describe" in result.stderr


def _bash_complete(script: Path, *words: str) -> list[str]:
    """What bash offers for the command line ``words`` (the last one being completed)."""
    quoted = " ".join(f"'{w}'" for w in words)
    probe = (f"source {script}\nCOMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}\n"
             f"COMP_LINE=\"{' '.join(words)}\"; COMP_POINT=${{#COMP_LINE}}\n"
             "_shtab_medgem; printf '%s\\n' \"${COMPREPLY[@]}\"\n")
    done = subprocess.run(["bash", "--norc", "-c", probe], capture_output=True, text=True,
                          check=True)
    assert done.stderr == ""
    return [line for line in done.stdout.splitlines() if line]


def test_bash_completion_from_the_parser(tmp_path: Path) -> None:
    generated = run_cli("completion", "bash")
    assert generated.returncode == 0, generated.stderr
    script = tmp_path / "medgem.bash"
    script.write_text(generated.stdout)
    assert _bash_complete(script, "medgem", "a") == ["ask", "audit"]
    assert _bash_complete(script, "medgem", "--debug", "aud") == ["audit"]
    assert _bash_complete(script, "medgem", "audit", "v") == ["verify"]
    assert _bash_complete(script, "medgem", "convert", "ckpt", "--quant", "") == ["q4_k_m", "q8_0", "f16"]
    assert _bash_complete(script, "medgem", "eval", "mcq", "d.jsonl", "--think", "o") == ["on", "off"]
    assert "--save-preprocessed" in _bash_complete(script, "medgem", "ask", "--s")
    assert _bash_complete(script, "medgem", "ask", "--image", "") == []  # file names (-o default)
    assert _bash_complete(script, "medgem", "completion", "") == ["bash", "zsh", "tcsh"]


def test_zsh_completion_is_made_from_the_same_parser() -> None:
    generated = run_cli("completion", "zsh")
    assert generated.returncode == 0, generated.stderr
    script = generated.stdout
    assert script.startswith("#compdef medgem")
    assert "--quant" in script and "(q4_k_m q8_0 f16)" in script  # convert's choices
    assert "--save-preprocessed" in script
    if shutil.which("zsh"):  # the syntax, where zsh is installed
        subprocess.run(["zsh", "-n", "-c", script], check=True)
    unknown = run_cli("completion", "fish")
    assert unknown.returncode == 2 and "invalid choice: 'fish'" in unknown.stderr


def test_chat_json_prints_each_answer_as_json(tiny_text_checkpoint: Path) -> None:
    result = run_cli("chat", "--model", str(tiny_text_checkpoint), "--engine", "hf",
                     "--max-new-tokens", "3", "--json", "--no-audit", stdin="Hello?\n/quit\n")
    assert result.returncode == 0, result.stderr
    body = result.stdout[result.stdout.index("{"):result.stdout.rindex("}") + 1]
    answer = json.loads(body)
    assert answer["usage"]["completion_tokens"] <= 3 and "answer" in answer
    assert "medgemma> " not in result.stdout


def test_ask_and_inspect_name_saved_images_alike(tiny_vlm_checkpoint: Path, tmp_path: Path) -> None:
    picture = tmp_path / "Chest film.png"
    Image.new("RGB", (80, 60), (120, 120, 120)).save(picture)
    asked = run_cli("ask", "What is this?", "--image", str(picture), "--model",
                    str(tiny_vlm_checkpoint), "--engine", "hf", "--max-new-tokens", "1",
                    "--no-audit", "--save-preprocessed", str(tmp_path / "ask"))
    assert asked.returncode == 0, asked.stderr
    inspected = run_cli("inspect", str(picture), "--save-preprocessed", str(tmp_path / "inspect"))
    assert inspected.returncode == 0, inspected.stderr
    names = sorted(p.name for p in (tmp_path / "ask").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "inspect").iterdir()) == ["01_Chest_film.png"]
    assert (Image.open(tmp_path / "ask" / names[0]).tobytes()
            == Image.open(tmp_path / "inspect" / names[0]).tobytes())
