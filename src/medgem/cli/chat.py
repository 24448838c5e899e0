"""`medgem chat`: a multi-turn conversation in the terminal; images attach per turn.

Commands inside the chat: /image PATH (attach to the next question), /think on|off, /reset,
/quit. The history is sent back each turn, as the model has no memory of its own.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from medgem.cli import common
from medgem.errors import MedgemError
from medgem.request import Message, TextPart

HELP = "commands: /image PATH, /think on|off, /reset, /quit"


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("chat", help="a multi-turn conversation in the terminal")
    common.add_model_flags(parser)
    common.add_audit_flags(parser)
    common.add_generation_flags(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model = common.load_model(args)
    common.print_label_first(model)
    print(f"medgem chat with {model.engine.info.id} — {HELP}", file=sys.stderr)
    history: list[Message] = []
    pending: list[Path] = []
    options = common.generation_options(args)
    think = options.think
    while True:
        try:
            line = input("you> ")
        except EOFError:
            print(file=sys.stderr)
            return 0
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            command, _, rest = line.partition(" ")
            if command in ("/quit", "/exit"):
                return 0
            if command == "/reset":
                history.clear()
                pending.clear()
                print("(history cleared)", file=sys.stderr)
            elif command == "/think":
                think = rest.strip() != "off"
                print(f"(thinking {'on' if think else 'off'})", file=sys.stderr)
            elif command == "/image":
                path = Path(rest.strip()).expanduser()
                if not path.exists():
                    print(f"medgem: error: no image at '{path}'", file=sys.stderr)
                else:
                    pending.append(path)
                    print(f"(attached {path.name} to the next question)", file=sys.stderr)
            else:
                print(HELP, file=sys.stderr)
            continue
        try:
            request = model.request(line, images=[str(p) for p in pending], system=args.system,
                                    history=history, options=replace(options, think=think))
            print("medgemma> ", end="", flush=True)
            answer = common.render(model.generate(request), as_json=False, show_thinking=args.show_thinking)
        except MedgemError as exc:
            print(f"medgem: error: {exc}", file=sys.stderr)
            continue
        # The user turn as sent (images included) and the answer without its thought.
        history.append(request.messages[-1])
        history.append(Message("assistant", (TextPart(answer.text),)))
        pending.clear()
