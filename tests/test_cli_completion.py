"""`medgem completion`: the script is generated from the parser, so a real bash completes the
commands and flags the parser has today."""

from __future__ import annotations

import subprocess

from conftest import run_cli


def _complete(script: str, *words: str) -> list[str]:
    """What bash offers after ``words`` (the last one being typed), with the script sourced."""
    quoted = " ".join(f"'{word}'" for word in words)
    program = (f"source /dev/stdin <<'EOS'\n{script}\nEOS\n"
               f"COMP_WORDS=(medgem {quoted}); COMP_CWORD={len(words)}; "
               f"COMP_LINE=\"medgem {' '.join(words)}\"; COMP_POINT=${{#COMP_LINE}}; "
               "_shtab_medgem; printf '%s\\n' \"${COMPREPLY[@]}\"")
    done = subprocess.run(["bash", "-c", program], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_bash_completes_commands_subcommands_and_flags() -> None:
    done = run_cli("completion", "bash")
    assert done.returncode == 0, done.stderr
    script = done.stdout
    assert _complete(script, "as") == ["ask"]
    assert set(_complete(script, "audit", "")) >= {"list", "show", "verify", "export", "review"}
    assert "--model" in _complete(script, "ask", "--mo")
    assert "--max-new-tokens" in _complete(script, "ask", "--max-n")
    assert set(_complete(script, "completion", "")) == {"bash", "zsh", "tcsh"}


def test_zsh_script_and_unknown_shell() -> None:
    zsh = run_cli("completion", "zsh")
    assert zsh.returncode == 0 and zsh.stdout.startswith("#compdef medgem")
    fish = run_cli("completion", "fish")
    assert fish.returncode == 2 and "invalid choice: 'fish'" in fish.stderr
