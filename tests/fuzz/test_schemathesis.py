"""Property-based fuzzing of the HTTP API from its committed contract (openapi/openapi.json).

A real ``rtinjury serve`` (a subprocess on a free port, embedded mode: no Redis) answers
schemathesis' requests, every one of them with a valid API key. For each operation schemathesis
sends the documented examples, boundary and invalid values (coverage phase) and random valid
ones (fuzzing phase, ``MAX_EXAMPLES`` each, derandomized); every answer must be no 5xx, a
documented status code, of a documented media type, and valid against the documented schema.
What it found is kept as fixed cases in test_api_findings.py.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.main import OPENAPI_PATH

API_KEY = "schemathesis-key-0123456789abcdefgh"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
#: Random valid requests per operation (the coverage phase adds its own, deterministic ones).
MAX_EXAMPLES = 15
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


#: One test per operation, made when the module is collected (schemathesis' fixture-based loading
#: does not work with pytest 9); each call is sent to the server the fixture started.
schema = schemathesis.openapi.from_path(OPENAPI_PATH)
schema.config.update(headers=AUTH)
# The same examples on every run, as the atheris runs use a fixed seed: a failure replays, and a
# change that breaks the contract fails the change, not a later unrelated one. A longer, random
# run: RTINJURY_FUZZ_RANDOM=1 RTINJURY_FUZZ_EXAMPLES=500 pytest tests/fuzz/test_schemathesis.py
schema.config.generation.update(
    max_examples=int(os.environ.get("RTINJURY_FUZZ_EXAMPLES", MAX_EXAMPLES)),
    deterministic=os.environ.get("RTINJURY_FUZZ_RANDOM") != "1",
)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``rtinjury serve`` on a free port; its log is shown if it dies or does not come up."""
    root = tmp_path_factory.mktemp("schemathesis")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RTINJURY_")}
    env |= {"RTINJURY_STORAGE_ROOT": str(root / "storage"), "RTINJURY_API_KEY": API_KEY}
    log = root / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "service.cli.main", "serve", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for_health(url, process, log)
        yield url
    finally:
        # Ctrl-C, as test_serve stops it: on SIGTERM, uvicorn re-raises the signal once it has shut
        # down and the process dies before it stops its embedded worker (which is left running).
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def _wait_for_health(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"rtinjury serve exited:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail(f"rtinjury serve did not answer within 60 s:\n{log.read_text(errors='replace')[-3000:]}")


@pytest.mark.timeout(120)
@schema.parametrize()
def test_every_answer_is_documented_and_no_5xx(served: str, case: schemathesis.Case) -> None:
    case.call_and_validate(base_url=served, checks=CHECKS)
