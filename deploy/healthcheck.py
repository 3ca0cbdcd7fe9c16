"""Container health probes for the rtinjury images (stdlib only, except ``celery`` mode).

Usage:
  python healthcheck.py http URL           # 2xx from URL (the API's /healthz)
  python healthcheck.py tcp HOST PORT      # something accepts TCP connections (the DICOM node)
  python healthcheck.py celery             # this container's Celery worker answers a ping

Exit status 0 when healthy, 1 when not (one line on stderr says why). The slim images have no
curl, hence Python. ``celery`` mode pings over the broker in RTINJURY_BROKER_URL and looks for a
reply from a worker whose node name ends in ``@<this container's hostname>``; it needs only the
broker URL, not the project's Celery app.
"""

from __future__ import annotations

import os
import socket
import sys
import urllib.error
import urllib.request

TIMEOUT_S = float(os.environ.get("RTINJURY_HEALTHCHECK_TIMEOUT", "4"))


def check_http(url: str) -> str | None:
    """None when URL answers 2xx, else the reason."""
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            status = response.status
    except (urllib.error.URLError, OSError) as error:
        return f"{url}: {error}"
    return None if 200 <= status < 300 else f"{url}: HTTP {status}"


def check_tcp(host: str, port: int) -> str | None:
    """None when HOST:PORT accepts a TCP connection, else the reason."""
    try:
        with socket.create_connection((host, port), timeout=TIMEOUT_S):
            return None
    except OSError as error:
        return f"{host}:{port}: {error}"


def check_celery() -> str | None:
    """None when a Celery worker on this host answers a broadcast ping, else the reason."""
    broker = os.environ.get("RTINJURY_BROKER_URL")
    if not broker:
        return "RTINJURY_BROKER_URL is not set"
    from celery import Celery  # imported here: the other modes need only the stdlib

    hostname = socket.gethostname()
    try:
        replies = Celery(broker=broker).control.ping(timeout=TIMEOUT_S)
    except Exception as error:  # broker down, bad URL ...: unhealthy either way
        return f"ping over {broker}: {error}"
    for reply in replies:
        if any(node.rpartition("@")[2] == hostname for node in reply):
            return None
    return f"no worker on {hostname} answered a ping within {TIMEOUT_S:g} s"


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "http":
        problem = check_http(argv[1])
    elif len(argv) == 3 and argv[0] == "tcp" and argv[2].isdigit():
        problem = check_tcp(argv[1], int(argv[2]))
    elif argv == ["celery"]:
        problem = check_celery()
    else:
        sys.stderr.write("usage: healthcheck.py http URL | tcp HOST PORT | celery\n")
        return 2
    if problem is not None:
        sys.stderr.write(f"unhealthy: {problem}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
