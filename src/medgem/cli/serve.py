"""`medgem serve --model ...`: the OpenAI-compatible API and the web page, on 127.0.0.1:8000."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from medgem.cli.common import (
    add_limit_flags,
    add_model_flags,
    imaging_from_args,
    load_model,
    number_in,
    whole_number,
)
from medgem.errors import InputError


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve", help="serve the OpenAI chat API and the clinician web page",
        description="Serve a model over the OpenAI chat completions API, with a web page at /. "
        "Binds 127.0.0.1 unless told otherwise; any other address needs API keys.",
    )
    add_model_flags(parser)
    group = parser.add_argument_group("server")
    group.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    group.add_argument("--port", type=whole_number(1, 65535), default=8000, help="port (default 8000)")
    group.add_argument("--served-name", help="model id clients send (default: the model's id)")
    group.add_argument("--parallel", type=whole_number(1), default=1,
                       help="requests decoded together (llama.cpp: one KV-cache slot of --n-ctx each; "
                       "default 1)")
    group.add_argument("--max-queue", type=whole_number(0), default=8, help="requests that may wait for the engine (default 8)")
    group.add_argument("--max-body-mb", type=whole_number(1), default=64, help="largest request body in MiB (default 64)")
    group.add_argument("--max-images", type=whole_number(1), default=16, help="most images per request (default 16)")
    group.add_argument("--allow-dir", action="append", default=[], type=Path, metavar="DIR",
                       help="a folder requests may name image files from (repeatable; default none)")
    group.add_argument("--allow-pacs", action="append", default=[], metavar="URL",
                       help="a DICOMweb root (https://pacs/dicom-web) or dimse://AE@host:port that "
                            "image_dicom parts may fetch from (repeatable; default none); "
                            "dimse://AE@host:port?move=AE@PORT allows C-MOVE to that port")
    group.add_argument("--pacs-browse-timeout", type=number_in(0, open_low=True), default=10.0, metavar="S",
                       help="seconds one web-page PACS search may take before it is a 504 (default 10)")
    group.add_argument("--send-back", action="store_true",
                       help="store answers to image_dicom questions on their PACS as DICOM SR once a "
                            "review (POST /api/reviews, the page's review) accepts or corrects them")
    group.add_argument("--send-back-unreviewed", action="store_true",
                       help="with --send-back: also send each such answer at once, before any review, "
                            "as a preliminary, unverified SR")
    group.add_argument("--api-key-file", type=Path, help="key file made by `medgem keys add` (required off loopback)")
    group.add_argument("--audit-db", help="audit store: SQLite path or sqlite:/// URL (default: $MEDGEM_AUDIT_DB "
                       "or ~/.local/share/medgem/audit.sqlite)")
    group.add_argument("--log-prompts", action="store_true",
                       help="also keep prompt text and inputs in the audit store (DICOM de-identified); off by default")
    group.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                       help="allow this browser origin cross-site (repeatable; default: CORS off)")
    group.add_argument("--drain-timeout", type=number_in(0.0), default=60.0, help="seconds SIGTERM waits for requests (default 60)")
    group.add_argument("--max-previews", type=whole_number(1), default=2,
                       help="/api/preview requests decoding uploads at once; one more is a 429 (default 2)")
    add_limit_flags(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from medgem.cli.running import hold_port, store_location
    from medgem.config import key_file_path
    from medgem.server.app import create_app
    from medgem.server.server_config import ServerConfig

    _check_send_back(args)
    _stop_on_sigterm()  # from here on SIGTERM unwinds (the state file goes), even mid-load
    key_file = args.api_key_file or (key_file_path() if key_file_path().exists() else None)
    config = ServerConfig(
        host=args.host, port=args.port, model_name=args.served_name, max_queue=args.max_queue,
        max_body_bytes=args.max_body_mb * 1024 * 1024, max_images=args.max_images,
        allowed_dirs=tuple(p.expanduser().resolve() for p in args.allow_dir), api_key_file=key_file,
        allowed_pacs=tuple(args.allow_pacs), pacs_browse_timeout_s=args.pacs_browse_timeout,
        send_back=args.send_back, send_back_unreviewed=args.send_back_unreviewed,
        log_prompts=args.log_prompts, cors_origins=tuple(args.cors_origin),
        drain_timeout_s=args.drain_timeout, max_previews=args.max_previews,
        imaging=imaging_from_args(args),
    )
    listening = hold_port(config.host, config.port)  # a taken port is said before any load
    state: Path | None = None
    model = None
    try:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        model = load_model(args)  # it writes each answer's record to --audit-db (or the default store)
        audit = store_location(args.audit_db)
        app = create_app(config, model)
        state = _announce(args, config.host, config.port, app.state.serving, model, audit)
        print(f"medgem: serving {app.state.serving.served_name} on http://{config.host}:{config.port} "
              f"(audit: {audit}{', keys required' if app.state.serving.keys else ''}; "
              f"`medgem stop {config.port}` ends it)", file=sys.stderr)
        # access_log off: URLs and client addresses only, but prompts must never reach logs.
        server = uvicorn.Server(uvicorn.Config(
            app, log_level="info", access_log=False,
            timeout_graceful_shutdown=int(config.drain_timeout_s)))
        server.run(sockets=[listening])
    finally:
        if state is not None:
            state.unlink(missing_ok=True)
        listening.close()
        if model is not None:
            model.close()
    return 0


def _check_send_back(args: argparse.Namespace) -> None:
    """Send-back flags that could do nothing, refused before anything loads.

    Raises:
        InputError: --send-back-unreviewed without --send-back, or --send-back with no PACS
            allowed (no answer could be about a study).
    """
    if args.send_back_unreviewed and not args.send_back:
        raise InputError("--send-back-unreviewed only says which answers --send-back sends",
                         "add --send-back")
    if args.send_back and not args.allow_pacs:
        raise InputError("--send-back sends answers back to the PACS their studies came from, and "
                         "no PACS is allowed", "add --allow-pacs URL for each PACS")


class Stopped(SystemExit):
    """SIGTERM: `medgem stop` or a service manager asked this server to end."""


def _stop_on_sigterm() -> None:
    """SIGTERM raises :class:`Stopped` (exit 0), so every ``finally`` runs. uvicorn catches
    SIGTERM itself while it serves (it drains first) and raises it again once done; with the
    default handler that second raise would kill the process before its state file is removed."""
    import signal

    def stop(signum: int, frame: object) -> None:
        raise Stopped(0)

    signal.signal(signal.SIGTERM, stop)


def _announce(args: argparse.Namespace, host: str, port: int, serving: Any, model: Any,
              audit: str) -> Path | None:
    """The state file `ps`, `stop`, `ask` and `describe` read (see cli/running.py)."""
    from medgem.cli.running import identity, write_state

    checkpoint = model.checkpoint
    return write_state(
        host=host, port=port, served_name=serving.served_name,
        model_identity=(identity(checkpoint.path, checkpoint.revision, args.adapter)
                        if checkpoint is not None else {"remote": str(args.model)}),
        engine=str(getattr(model.engine, "name", args.engine)), keys_required=bool(serving.keys),
        variant=checkpoint.variant.key if checkpoint is not None and checkpoint.variant else None,
        model_id=serving.info.id, audit=audit)
