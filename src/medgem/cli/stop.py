"""`medgem stop [PORT|all]`: end your running medgem servers gracefully (SIGTERM: requests in
flight finish, the state file goes), waiting until each has exited."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

from medgem.errors import InputError

if TYPE_CHECKING:
    from medgem.cli.running import RunningServer


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "stop", help="stop your running medgem servers",
        description="Stop a running `medgem serve` (the only one, the one on PORT, or all): "
                    "SIGTERM, then wait while it finishes the requests in flight.")
    parser.add_argument("which", nargs="?", metavar="PORT|all",
                        help="the port of the server to stop, or all (default: the only one)")
    parser.add_argument("--timeout", type=float, default=90.0,
                        help="seconds to wait for each to exit (default 90)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medgem.cli.running import running_servers, signal_server

    servers = [server for server, _ in running_servers()]
    if not servers:
        print("medgem: no medgem server of yours is running", file=sys.stderr)
        return 0 if args.which in (None, "all") else 1
    ports = ", ".join(str(s.port) for s in servers)
    chosen = servers  # all, or the only one
    if args.which is None and len(servers) > 1:
        raise InputError(f"{len(servers)} servers are running (ports {ports})",
                         "say which: `medgem stop PORT`, or `medgem stop all`")
    if args.which not in (None, "all"):
        try:
            port = int(args.which)
        except ValueError:
            raise InputError(f"'{args.which}' is neither a port nor all",
                             "`medgem stop 8000` or `medgem stop all` (see `medgem ps`)") from None
        chosen = [s for s in servers if s.port == port]
        if not chosen:
            raise InputError(f"no medgem server of yours is on port {port}",
                             f"yours are on port(s) {ports} (see `medgem ps`)")
    failed = 0
    for server in chosen:
        try:
            if not signal_server(server, signal.SIGTERM):
                continue  # it ended meanwhile: whatever holds its pid now is left alone
        except PermissionError:
            print(f"medgem: error: pid {server.pid} is not yours to stop", file=sys.stderr)
            failed += 1
            continue
        if _wait_gone(server, args.timeout):
            print(f"medgem: stopped {server.model_id or server.served_name} on port {server.port} "
                  f"(pid {server.pid})", file=sys.stderr)
        else:
            print(f"medgem: error: pid {server.pid} (port {server.port}) is still running after "
                  f"{args.timeout:.0f} s — it may be finishing a long answer; `kill -9 "
                  f"{server.pid}` ends it at once", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


def _wait_gone(server: RunningServer, timeout: float) -> bool:
    """True once the server's process is gone (its pid free or another program's, or only a
    zombie waiting for its parent)."""
    from medgem.cli.running import is_recorded_process

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_recorded_process(server.pid, server.mark) or _zombie(server.pid):
            return True
        time.sleep(0.1)
    return False


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False
