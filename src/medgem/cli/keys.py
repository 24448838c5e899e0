"""`medgem keys add|list|revoke`: named API keys for `medgem serve`, stored hashed."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "keys", help="manage API keys for `medgem serve`",
        description="API keys are stored as SHA-256 hashes; a new key is printed once.",
    )
    where = "key file (default: $MEDGEM_API_KEYS or ~/.config/medgem/api-keys.json)"
    parser.add_argument("--file", type=Path, help=where)
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    add = actions.add_parser("add", help="make a key and print it once")
    add.add_argument("name", help="who or what uses the key (recorded in the audit trail)")
    add.add_argument("--role", choices=["user", "auditor"], default="user",
                     help="user: sees its own audit records; auditor: sees every record")
    listing = actions.add_parser("list", help="list keys (names and dates, never the keys)")
    revoke = actions.add_parser("revoke", help="revoke a key by name (takes effect at once)")
    revoke.add_argument("name", help="the key's name as `medgem keys list` shows it")
    for action in (add, listing, revoke):  # --file after the action too, where people type it
        action.add_argument("--file", type=Path, default=argparse.SUPPRESS, help=where)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medgem.config import key_file_path
    from medgem.server.auth import KeyStore

    store = KeyStore(args.file or key_file_path())
    if args.action == "add":
        key = store.add(args.name, args.role)
        print(key)
        print(f"medgem: key '{args.name}' added to {store.path}; it is shown only now", file=sys.stderr)
    elif args.action == "list":
        entries = list(store.entries())
        if not entries:  # an empty table said nothing at all
            print(f"medgem: no API keys in {store.path} (make one with `medgem keys add NAME`)",
                  file=sys.stderr)
        for entry in entries:
            state = f"revoked {entry.revoked}" if entry.revoked else "active"
            print(f"{entry.name}\t{entry.role}\tcreated {entry.created}\t{state}")
    else:
        store.revoke(args.name)
        print(f"medgem: key '{args.name}' revoked", file=sys.stderr)
    return 0
