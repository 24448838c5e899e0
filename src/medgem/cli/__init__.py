"""The `medgem` command. Each subcommand lives in its own module with add_parser() and run()."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from medgem import __version__
from medgem.errors import MedgemError

# subcommand -> module (each exposes add_parser(subparsers) and run(args) -> int)
COMMANDS: dict[str, str] = {
    "ask": "medgem.cli.ask",
    "describe": "medgem.cli.describe",
    "chat": "medgem.cli.chat",
    "models": "medgem.cli.models",
    "pull": "medgem.cli.pull",
    "rm": "medgem.cli.rm",
    "doctor": "medgem.cli.doctor",
    "demo": "medgem.cli.demo",
    "inspect": "medgem.cli.inspect",
    "eval": "medgem.cli.eval",
    "serve": "medgem.cli.serve",
    "ps": "medgem.cli.ps",
    "stop": "medgem.cli.stop",
    "audit": "medgem.cli.audit",
    "keys": "medgem.cli.keys",
    "convert": "medgem.cli.convert",
    "tune": "medgem.cli.tune",
    "backend-command": "medgem.cli.backend_command",
    "completion": "medgem.cli.completion",
}


class _Parser(argparse.ArgumentParser):
    """argparse, with "did you mean" for a mistyped choice (`medgem audit verfy`); every
    subcommand's parser is one of these too (argparse makes subparsers of the parent's class)."""

    def error(self, message: str) -> NoReturn:
        import difflib
        import re

        wrong = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if wrong:
            choices = re.findall(r"'([^']*)'", wrong.group(2))
            close = difflib.get_close_matches(wrong.group(1), choices, n=1, cutoff=0.6)
            if close:
                message += f" — did you mean '{close[0]}'?"
        if re.search(r"required: .*--model", message):
            from medgem.cli.common import NO_MODEL

            message = NO_MODEL
        # One line, not the whole usage: the flag and what is wrong with it, and where help is.
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="medgem", description="Run Google's MedGemma medical models. Output is not medical advice.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("--version", action="version", version=f"medgem {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMANDS.values():
        importlib.import_module(module_name).add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: one line for expected errors, a traceback only with --debug."""
    parser = build_parser()
    words = list(sys.argv[1:] if argv is None else argv)
    anywhere = "--debug" in words  # accepted after the subcommand too
    unknown = _unknown_command(words)
    if unknown:
        print(f"medgem: error: {unknown}", file=sys.stderr)
        return 2
    args = parser.parse_args([word for word in words if word != "--debug"])
    debug = bool(args.debug or anywhere or os.environ.get("MEDGEM_DEBUG"))
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if not debug:
        _quiet_libraries()
    try:
        return int(args.func(args) or 0)
    except MedgemError as exc:
        if debug:
            raise
        print(f"medgem: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("medgem: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `medgem ... | head` closed the pipe: nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # an unexpected failure still gets one line without --debug
        if debug:
            raise
        print(f"medgem: unexpected error: {type(exc).__name__}: {exc} (run again with --debug "
              "for the traceback)", file=sys.stderr)
        return 1


def _unknown_command(words: list[str]) -> str | None:
    """The one-line complaint for a mistyped subcommand (`medgem aks`), or None.

    The top level takes only flags, so its first word that is not one names the command.
    """
    import difflib

    command = next((word for word in words if not word.startswith("-")), None)
    if command is None or command in COMMANDS:
        return None
    close = difflib.get_close_matches(command, list(COMMANDS), n=1, cutoff=0.6)
    if close:
        return f"unknown command '{command}' — did you mean '{close[0]}'?"
    return f"unknown command '{command}'; the commands are: {', '.join(COMMANDS)} (medgem --help)"


def _quiet_libraries() -> None:
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.getLogger("transformers").setLevel(logging.ERROR)

