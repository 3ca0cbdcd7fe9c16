"""``rtinjury serve``: the REST API, with an embedded worker when no broker is configured."""

from __future__ import annotations

import argparse
import logging.config
import signal
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from service.cli.output import say
from worker.logs import PHI_FILTER_CONFIG, install_phi_filter

log = logging.getLogger(__name__)


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "serve",
        help="run the REST API (and, without RTINJURY_BROKER_URL, a worker beside it)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    # HTTPS without a reverse proxy (docs/security.md): both, or neither.
    parser.add_argument(
        "--ssl-certfile", type=Path, default=None, help="serve HTTPS with this certificate (PEM)"
    )
    parser.add_argument("--ssl-keyfile", type=Path, default=None, help="the certificate's private key (PEM)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    scheme = "https" if _check_https_files(args) else "http"  # before the slow imports
    import uvicorn

    from service.api.auth import accepted_keys
    from service.config import get_settings
    from service.main import create_app

    settings = get_settings()
    logging.config.dictConfig(logging_config("DEBUG" if args.debug else "INFO"))
    install_phi_filter()  # warnings too, and any handler a library added
    app = create_app(settings)
    worker = _start_worker(settings, worker_loglevel(args)) if settings.embedded else None
    address = f"{scheme}://{args.host}:{args.port}"
    say(f"rtinjury on {address} (web viewer at /, API at /v1); storage {settings.storage_root}")
    if worker is not None:
        say(f"worker: embedded (pid {worker.pid}), queue under the storage root")
    else:
        say(f"worker: external, via the broker at {_redacted(settings.broker_url or '')}")
    if not accepted_keys(settings):
        say("warning: no API key configured, every /v1 route answers 401; see `rtinjury keys new`")
    # uvicorn shuts down gracefully on SIGTERM (docker stop, systemd), then raises the signal again
    # with the handler it found: by default that kills this process before the worker is stopped.
    # With this handler, it unwinds through the ``finally`` below as Ctrl-C does.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        uvicorn.run(
            app,
            host=args.host,
            port=args.port,
            log_config=None,
            proxy_headers=False,
            ssl_certfile=args.ssl_certfile,
            ssl_keyfile=args.ssl_keyfile,
        )
    finally:
        if worker is not None:
            from worker.celery.embedded import stop_embedded_worker

            stop_embedded_worker(worker)
    return 0


def _check_https_files(args: argparse.Namespace) -> bool:
    """True for HTTPS; refuses half a configuration or unusable files (uvicorn would raise later,
    with a traceback), naming the option."""
    from worker.errors import InputError
    from worker.tls import NamedFile, server_context

    if args.ssl_certfile is None and args.ssl_keyfile is None:
        return False
    if args.ssl_certfile is None or args.ssl_keyfile is None:
        raise InputError("--ssl-certfile and --ssl-keyfile go together")
    cert, key = NamedFile("--ssl-certfile", args.ssl_certfile), NamedFile("--ssl-keyfile", args.ssl_keyfile)
    server_context(cert, key, None, require_client_cert=False)
    return True


def _start_worker(settings: Any, loglevel: str) -> subprocess.Popen[bytes]:
    from worker.celery.embedded import start_embedded_worker

    return start_embedded_worker(settings, loglevel=loglevel)


def worker_loglevel(args: argparse.Namespace) -> str:
    """The embedded worker logs as much as the command line asked for (warnings by default)."""
    if args.debug:
        return "DEBUG"
    return "INFO" if args.verbose else "WARNING"


def _redacted(url: str) -> str:
    """The broker URL without its user and password."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _exit_on_sigterm(_signum: int, _frame: object) -> None:
    raise SystemExit(0)


def logging_config(level: str) -> dict[str, Any]:
    """Log lines on stderr carrying the request id (``-`` outside a request), PHI scrubbed."""
    handler = {
        "class": "logging.StreamHandler",
        "stream": "ext://sys.stderr",
        "formatter": "plain",
        "filters": ["request_id", "phi"],
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "request_id": {"()": "service.api.middleware.RequestIdLogFilter"},
            "phi": PHI_FILTER_CONFIG,
        },
        "formatters": {
            "plain": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"},
        },
        "handlers": {"stderr": handler},
        "loggers": {
            "uvicorn": {"level": "INFO"},
            "uvicorn.access": {"level": "INFO"},
        },
        "root": {"level": level, "handlers": ["stderr"]},
    }
