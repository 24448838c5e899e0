"""`medgem ps`: this user's running `medgem serve` processes (model, port, pid, audit store,
uptime, requests), as their state files and their own answers say."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "ps", help="list your running medgem servers",
        description="List your running `medgem serve` processes. State files of servers that "
                    "are gone are removed on the way.")
    parser.add_argument("--json", action="store_true", help="print a JSON list")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medgem.cli.running import health, requests_served, running_servers

    rows: list[dict[str, Any]] = []
    for server, _ in running_servers():
        status = health(server.url)
        rows.append({
            "model": server.model_id or server.served_name, "served_as": server.served_name,
            "url": server.url, "port": server.port, "pid": server.pid, "engine": server.engine,
            "status": (status or {}).get("status", "loading"), "audit": server.audit,
            "uptime_s": round(time.time() - server.started) if server.started else None,
            "requests": requests_served(server.url),
        })
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no medgem server is running (start one with `medgem serve --model NAME`)")
        return 0
    table = [("MODEL", "PORT", "PID", "STATUS", "UPTIME", "REQUESTS", "AUDIT")] + [
        (row["model"], str(row["port"]), str(row["pid"]), row["status"], _uptime(row["uptime_s"]),
         "?" if row["requests"] is None else str(row["requests"]), row["audit"]) for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]) - 1)]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=False))
              + "  " + line[-1])
    return 0


def _uptime(seconds: int | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"
