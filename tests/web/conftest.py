"""The web viewer as a clinician meets it: a real ``rtinjury serve`` and headless Chromium.

One server (embedded worker, no Redis) and one finished ORN job per module, one browser per
module, and a fresh browser context (no cookies, empty cache) per test. The browser is Debian's
``chromium`` driven by Playwright; Playwright's own browser download is never used. Every test
saves a screenshot per step under ``$RTINJURY_TEST_ARTIFACTS`` (default ``<repo>/test-artifacts``),
and one more when it fails.
"""

from __future__ import annotations

import glob
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Error, Page, ViewportSize, sync_playwright

from tests.service.api.conftest import zip_folders
from tests.serving import CHROMIUM, CHROMIUM_ARGS, embedded_serve, log_tail

REPO = Path(__file__).resolve().parents[2]
API_KEY = "web-e2e-key-0123456789abcdefghij"
VIEWPORT: ViewportSize = {"width": 1600, "height": 1000}
JOB_TIMEOUT_S = 240.0


@dataclass(frozen=True)
class Served:
    """A running ``rtinjury serve``: where it answers, its storage and its log."""

    url: str
    storage: Path
    log: Path

    def log_tail(self) -> str:
        return log_tail(self.log)


@dataclass(frozen=True)
class FinishedJob:
    """A job that has succeeded, the patient folder it was made from and its first report."""

    id: str
    patient: Path
    report: dict[str, Any]

    @property
    def page_path(self) -> str:
        return f"/ui/jobs/{self.id}"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("web")
    with embedded_serve(root / "storage", root / "serve.log", API_KEY) as url:
        yield Served(url, root / "storage", root / "serve.log")


@pytest.fixture(scope="module")
def finished_job(served: Served, orn_patient: Path) -> FinishedJob:
    """The synthetic ORN patient uploaded as a zip with the bearer key, run to success."""
    with httpx.Client(base_url=served.url, headers=bearer(), timeout=60) as client:
        created = client.post(
            "/v1/jobs",
            files=[("files", ("patient.zip", zip_folders(orn_patient), "application/zip"))],
            data={"task": "orn", "clinical_text": "mandibular pain"},
        )
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]
        job = _wait_until_finished(client, job_id, served)
        assert job["state"] == "succeeded", f"{job['error']}\n{served.log_tail()}"
        report = client.get(f"/v1/jobs/{job_id}/results/report").json()
    assert not report["lesion"]["empty"], "the demo model found no lesion: nothing to view or refine"
    return FinishedJob(job_id, orn_patient, report)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.is_file():
        pytest.fail(
            f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium); "
            "these tests never download a browser",
            pytrace=False,
        )
    with sync_playwright() as playwright:
        try:
            launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        except Error as error:
            pytest.fail(f"{CHROMIUM} did not start under Playwright: {error}", pytrace=False)
        yield launched
        launched.close()


@dataclass
class Shots:
    """Screenshots of one test, numbered in the order taken: ``<test>-<nn>-<step>.png``."""

    folder: Path
    test_name: str
    taken: list[Path] = field(default_factory=list)

    def take(self, page: Page, step: str) -> Path:
        name = f"{self.test_name}-{len(self.taken) + 1:02d}-{_file_safe(step)}.png"
        path = self.folder / name
        page.screenshot(path=str(path), full_page=True)
        self.taken.append(path)
        return path


@pytest.fixture
def shots(request: pytest.FixtureRequest) -> Shots:
    folder = Path(os.environ.get("RTINJURY_TEST_ARTIFACTS") or REPO / "test-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    test_name = _file_safe(request.node.name)
    for stale in folder.glob(f"{glob.escape(test_name)}-*.png"):
        stale.unlink()  # a rerun's pictures replace the last run's, none are left over
    return Shots(folder, test_name)


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    """A fresh browser profile: no cookie, nothing cached."""
    fresh = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    yield fresh
    fresh.close()


@pytest.fixture
def page(context: BrowserContext, shots: Shots, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A tab of the fresh context. Script errors in the page fail the test; so does a failure
    shown nowhere else, with a last screenshot of the page as it was."""
    tab = context.new_page()
    script_errors: list[str] = []
    tab.on("pageerror", lambda error: script_errors.append(str(error)))
    yield tab
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        shots.take(tab, "failed")
    assert not script_errors, f"the page raised script errors: {script_errors}"


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the test item, so that ``page`` knows whether the test failed."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def bearer() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}"}


def log_in(page: Page, served: Served, next_path: str) -> None:
    """Through the login form, as a person does; ends on ``next_path``."""
    page.goto(f"{served.url}/ui/login?next={next_path}")
    page.fill("#api-key", API_KEY)
    page.click("#login-submit")
    page.wait_for_url(f"{served.url}{next_path}")


def _file_safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def _wait_until_finished(client: httpx.Client, job_id: str, served: Served) -> dict[str, Any]:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in ("succeeded", "failed"):
            return job
        time.sleep(0.2)
    pytest.fail(f"job {job_id} did not finish within {JOB_TIMEOUT_S:.0f} s:\n{served.log_tail()}")
