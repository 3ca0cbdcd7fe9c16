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
from collections.abc import Iterator

import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.main import OPENAPI_PATH
from tests.serving import embedded_serve

API_KEY = "schemathesis-key-0123456789abcdefgh"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
#: Random valid requests per operation (the coverage phase adds its own, deterministic ones).
MAX_EXAMPLES = 15
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


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
    with embedded_serve(root / "storage", root / "serve.log", API_KEY, ready_within_s=60) as url:
        yield url


@pytest.mark.timeout(120)
@schema.parametrize()
def test_every_answer_is_documented_and_no_5xx(served: str, case: schemathesis.Case) -> None:
    case.call_and_validate(base_url=served, checks=CHECKS)
