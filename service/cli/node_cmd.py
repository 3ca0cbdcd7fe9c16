"""``rtinjury node``: the DICOM node — a PACS pushes studies in, results go back to it."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from types import FrameType
from typing import Any

from service.cli.output import say
from service.cli.serve_cmd import worker_loglevel


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "node",
        help="run the DICOM node (C-ECHO/C-STORE SCP; completed studies become jobs; results sent back)",
        description=(
            "Listens as RTINJURY_NODE_AE_TITLE on RTINJURY_NODE_HOST:RTINJURY_NODE_PORT for the peers in "
            "RTINJURY_NODE_PEERS. A patient's study is complete RTINJURY_NODE_QUIET_PERIOD_S seconds after "
            "the last released association; each follow-up that a route in RTINJURY_NODE_ROUTES takes "
            "becomes a job, and its SEG, RTSTRUCT and SR go to the route's destinations. Without "
            "RTINJURY_BROKER_URL a worker runs embedded beside the node."
        ),
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from service.config import get_settings
    from service.db import Database
    from service.node.routing import load_routes
    from service.node.server import NodeServer, build_ssl_context
    from service.node.studies import StudyWatcher
    from worker.dispatch import get_dispatcher
    from worker.errors import InputError

    # pynetdicom logs every association and DIMSE message at INFO, with UIDs: warnings only.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    settings = get_settings()
    rules = load_routes(settings.node_routes)  # bad rules: one line and exit 2, before listening
    tls = build_ssl_context(settings) is not None  # bad TLS files too (the message names the setting)
    database = Database(settings.sqlalchemy_url)
    problem = database.problem()
    if problem:
        raise InputError(f"the job database is not usable: {problem}")
    worker = _start_worker(settings, worker_loglevel(args)) if settings.embedded else None
    server = NodeServer(settings, database)
    watcher = StudyWatcher(settings, database, get_dispatcher(settings), rules=rules)
    stopping = threading.Event()
    _stop_on_signals(stopping)
    try:
        server.start()
        watcher.start()
        host, port = server.address
        quiet = settings.node_quiet_period_s
        say(f"DICOM node {settings.node_ae_title} on {host}:{port}; quiet period {quiet:g} s")
        say(_tls_line(settings) if tls else "TLS: off (RTINJURY_NODE_TLS_CERT not set)")
        peers = ", ".join(f"{p.ae_title}@{p.host}" for p in settings.node_peers)
        say(f"peers: {peers or 'none (every association is refused)'}")
        say(f"routes: {len(rules.routes)}, destinations: {', '.join(rules.destinations) or 'none'}")
        say("worker: embedded" if worker is not None else "worker: external, via the broker")
        stopping.wait()
    finally:
        watcher.stop()
        server.stop()
        if worker is not None:
            from worker.celery.embedded import stop_embedded_worker

            stop_embedded_worker(worker)
    return 0


def _start_worker(settings: Any, loglevel: str) -> Any:
    from worker.celery.embedded import start_embedded_worker

    return start_embedded_worker(settings, loglevel=loglevel)


def _tls_line(settings: Any) -> str:
    if settings.node_tls_require_client_cert:
        return "TLS: on, peers must present a certificate (mutual TLS)"
    return "TLS: on" + (", peer certificates checked when presented" if settings.node_tls_ca else "")


def _stop_on_signals(stopping: threading.Event) -> None:
    def stop(_signum: int, _frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
