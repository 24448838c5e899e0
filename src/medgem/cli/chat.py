"""`medgem chat`: a multi-turn conversation in the terminal; images attach per turn.

Commands inside the chat: /image PATH (attach to the next question, read at once), /system TEXT,
/think on|off, /save FILE, /reset, /help, /quit. The history is sent back each turn, as the model
has no memory of its own. Ctrl-C stops the answer being written and keeps the chat; a line ending
in a backslash continues on the next; arrow keys edit and recall lines (readline).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from medgem.cli import ask, common, terminal
from medgem.errors import MedgemError
from medgem.request import Message, TextPart

HELP = ("commands: /image PATH, /system TEXT, /think on|off, /save FILE, /reset, /help, /quit; "
        "end a line with \\ to go on; Ctrl-C stops an answer")


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("chat", help="a multi-turn conversation in the terminal")
    ask.add_question_flags(parser)
    for action in parser._actions:
        if action.dest == "json":  # the shared flag's words are for one answer; a chat has many
            action.help = "print each answer as one JSON object (text, thinking, usage, audit id)"
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    common.require_model(args, "chat")
    _line_editing()
    common.generation_options(args)  # a bad value is refused before the model loads
    model = ask.from_running_server(args) or common.load_model(args)
    terminal.print_label_first(model)
    print(f"medgem chat with {model.engine.info.id} — {HELP}", file=sys.stderr)
    chat = _Chat(model, args)
    while True:
        try:
            line = _read_turn()
        except EOFError:
            print(file=sys.stderr)
            return 0
        except KeyboardInterrupt:  # Ctrl-C at the prompt drops the line, not the chat
            print("\n(Ctrl-D or /quit leaves)", file=sys.stderr)
            continue
        if not line:
            continue
        if line.startswith("/"):
            if not chat.command(line):
                return 0
            continue
        chat.ask(line)


def _line_editing() -> None:
    """Arrow keys, line editing and history for input() where the terminal has readline."""
    try:
        import readline  # noqa: F401  (importing it is what turns it on)
    except ImportError:
        pass


def _read_turn() -> str:
    """One question; a line ending in a backslash continues on the next."""
    lines = [input("you> ")]
    while lines[-1].endswith("\\"):
        lines[-1] = lines[-1][:-1]
        lines.append(input("...> "))
    return "\n".join(lines).strip()


class _Chat:
    """The conversation: history, attached images, settings, and the slash commands."""

    def __init__(self, model: Any, args: argparse.Namespace) -> None:
        self.model = model
        self.args = args
        self.history: list[Message] = []
        self.pending: list[Path] = []
        self.options = common.generation_options(args)
        self.system: str | None = args.system

    def command(self, line: str) -> bool:
        """Run a slash command; False means leave."""
        command, _, rest = line.partition(" ")
        rest = rest.strip()
        if command in ("/quit", "/exit"):
            return False
        if command == "/reset":
            self.history.clear()
            self.pending.clear()
            print("(history cleared)", file=sys.stderr)
        elif command == "/think":
            self.options = replace(self.options, think=rest != "off")
            print(f"(thinking {'on' if self.options.think else 'off'})", file=sys.stderr)
        elif command == "/image":
            if not rest:  # Path("") is the current folder, which would be read as a series
                print("medgem: error: /image needs a PATH, e.g. /image chest.dcm", file=sys.stderr)
            else:
                self.attach(Path(rest).expanduser())
        elif command == "/system":
            self.system = rest or None
            print(f"(system prompt {'set' if rest else 'cleared'})", file=sys.stderr)
        elif command == "/save":
            self.save(Path(rest or "medgem-chat.json").expanduser())
        else:
            print(HELP, file=sys.stderr)
        return True

    def attach(self, path: Path) -> None:
        """Read the image now, so a bad file is refused here and not at every later turn."""
        from medgem.inputs import read_inputs

        try:
            read_inputs([path])
        except MedgemError as exc:
            print(f"medgem: error: {exc} (not attached)", file=sys.stderr)
            return
        self.pending.append(path)
        print(f"(attached {path.name} to the next question)", file=sys.stderr)

    def ask(self, line: str) -> None:
        try:
            request = self.model.request(line, images=[str(p) for p in self.pending],
                                         system=self.system, history=self.history,
                                         options=self.options)
            # The stage line ("reading the prompt … 3 s") waits where the answer will start.
            answer = terminal.show_answer(self.model, request, as_json=self.args.json,
                                          show_thinking=self.args.show_thinking,
                                          prefix="medgemma> ")
        except MedgemError as exc:
            print(f"medgem: error: {exc}", file=sys.stderr)
            return
        if answer is None:  # Ctrl-C stopped it (on the record, as for `ask`); the chat goes on
            print("(answer stopped; it is not kept in the conversation)", file=sys.stderr)
            return
        # The user turn as sent (images included) and the answer without its thought.
        self.history.append(request.messages[-1])
        self.history.append(Message("assistant", (TextPart(answer.text),)))
        self.pending.clear()

    def save(self, path: Path) -> None:
        turns = [{"role": m.role, "content": m.text,
                  "images": sum(1 for p in m.parts if not isinstance(p, TextPart))}
                 for m in self.history]
        try:
            path.write_text(json.dumps({"model": self.model.engine.info.id, "system": self.system,
                                        "turns": turns}, indent=2) + "\n")
        except OSError as exc:  # the conversation stays; the user picks another file
            print(f"medgem: error: cannot save the chat to {path} ({exc.strerror or exc}) — "
                  "/save to a folder that exists and you can write", file=sys.stderr)
            return
        print(f"(saved {len(turns)} turns to {path})", file=sys.stderr)
