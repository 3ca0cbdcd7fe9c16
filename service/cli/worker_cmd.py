"""``rtinjury worker``: a Celery worker for the ``cpu`` and/or ``gpu`` queue."""

from __future__ import annotations

import argparse
from typing import Any


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "worker",
        help="run a Celery worker (queues cpu: prepare/export; gpu: inference/refinement)",
        description=(
            "Consumes jobs from the broker in RTINJURY_BROKER_URL (Redis), or from the embedded "
            "file-system queue under RTINJURY_STORAGE_ROOT when no broker is set. Use the solo pool "
            "for a GPU worker: one process holds the network."
        ),
    )
    parser.add_argument("--queues", default="cpu,gpu", help="comma-separated: cpu, gpu (default both)")
    parser.add_argument("--pool", choices=["prefork", "solo", "threads"], default="prefork")
    parser.add_argument("--concurrency", type=int, default=1, help="processes (prefork) or threads")
    parser.add_argument("--loglevel", default="INFO")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from worker.celery.app import TASK_QUEUES
    from worker.errors import InputError

    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    unknown = sorted(set(queues) - set(TASK_QUEUES.values()))
    if not queues or unknown:
        raise InputError(f"unknown queue(s) {', '.join(unknown) or '(none)'}; choose from cpu, gpu")
    if args.concurrency < 1:
        raise InputError("--concurrency must be at least 1")
    from worker.celery.app import ensure_queue_folders
    from worker.celery.embedded import worker_argv
    from worker.celery.tasks import app
    from worker.settings import get_worker_settings

    ensure_queue_folders(get_worker_settings())

    app.worker_main(
        worker_argv(queues, pool=args.pool, concurrency=args.concurrency, loglevel=args.loglevel)[1:]
    )
    return 0
