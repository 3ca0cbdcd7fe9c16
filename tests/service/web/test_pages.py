"""The web viewer's pages over HTTP: the job list (columns, filter, paging, tenancy), a job's page
(id, CSRF token, downloads), the 404 page, and logging out.

Same setting as ``test_sessions``: the real app on a temporary storage root, jobs uploaded as
synthetic DICOM patients and finished by writing what the worker writes (status, outputs, and a
report whose lesion section is made by the export stage's own ``lesion_summary``).
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from fastapi.testclient import TestClient

from service.api.errors import LOGIN_PATH
from service.api.sessions import COOKIE_NAME
from service.config import Settings
from service.web import pages
from service.web.pages import SECURITY_HEADERS
from tests.service.api.conftest import ADMIN_KEY, API_KEY, READ_KEY, TENANT_A_KEY, TENANT_B_KEY, owner_of_key
from tests.service.web import test_sessions
from tests.service.web.test_sessions import (
    Browser,
    Element,
    Page,
    assert_login_redirect,
    csrf_token_of_page,
    finish,
    log_in,
    session_of,
    set_cookie,
    storage_secret,
    submit_job,
)
from worker.stages.export.files import OUTPUT_FILES
from worker.stages.export.report import lesion_summary

JOBS = "/ui/jobs"

# The fixtures of test_sessions, used here too (no conftest.py: other suites add files to this folder).
_no_site_environment = test_sessions._no_site_environment
settings = test_sessions.settings
app = test_sessions.app
open_browser = test_sessions.open_browser
patient_zip = test_sessions.patient_zip


def lesion_report() -> tuple[dict[str, object], float]:
    """A report whose lesion is 40 voxels of 2 mm: its section as the export stage writes it."""
    mask = np.zeros((10, 10, 10), dtype=np.uint8)
    mask[2:4, 2:6, 2:7] = 1
    image = sitk.GetImageFromArray(mask)
    image.SetSpacing((2.0, 2.0, 2.0))
    summary = lesion_summary(image)
    return {"lesion": summary.model_dump(mode="json")}, summary.volume_cc


def rows(response_text: str) -> dict[str, Element]:
    """The job list's rows by job id."""
    return {row.attrs["data-job-id"]: row for row in Page(response_text).find("tr", cls="job-row")}


def cells(row: Element) -> list[str]:
    return [cell.text for cell in row.find("td")]


def header_cells(page: Page) -> list[str]:
    return [cell.text for cell in page.one("table", id="jobs").find("th")]


def list_page(browser: TestClient, **params: str | int) -> Page:
    response = browser.get(JOBS, params=params)
    assert response.status_code == 200, response.text
    return Page(response.text)


# --- The job list ---------------------------------------------------------------------------


def test_the_job_list_shows_state_task_alias_lesion_volume_and_warnings(
    open_browser: Browser, settings: Settings, patient_zip: bytes
) -> None:
    browser = open_browser(API_KEY)
    done = submit_job(browser, patient_zip)
    waiting = submit_job(browser, patient_zip)
    report, volume_cc = lesion_report()
    finish(settings, done, report=report, warnings=["registration needs review", "dose grid clipped"])
    jobs = {job_id: browser.get(f"/v1/jobs/{job_id}").json() for job_id in (done, waiting)}

    response = browser.get(JOBS)
    assert response.status_code == 200
    for name, value in SECURITY_HEADERS.items():
        assert response.headers[name] == value, name
    listed = rows(response.text)
    assert set(listed) == {done, waiting}

    row = listed[done]
    assert "state-succeeded" in row.classes
    assert row.find("td", cls="state")[0].text == "succeeded"
    assert jobs[done]["task"] and (jobs[done]["task"].upper() in cells(row))
    assert jobs[done]["patient_alias"] in cells(row)
    assert volume_cc == pytest.approx(0.32)
    assert row.find("td", cls="lesion-volume")[0].text == f"{volume_cc:.2f}"
    warnings = row.find("td", cls="warnings")[0]
    assert warnings.text == "2" and "dose grid clipped" in warnings.attrs["title"]
    assert row.find("a", cls="job-link")[0].attrs["href"] == f"/ui/jobs/{done}"

    other = listed[waiting]
    assert other.find("td", cls="state")[0].text == "queued"
    assert other.find("td", cls="lesion-volume")[0].text == "–"
    assert other.find("td", cls="warnings")[0].text == ""
    assert Page(response.text).find("span", cls="count")[0].text == "2 jobs"


def test_a_succeeded_job_without_a_readable_report_shows_no_volume(
    open_browser: Browser, settings: Settings, patient_zip: bytes
) -> None:
    browser = open_browser(API_KEY)
    job_id = submit_job(browser, patient_zip)
    finish(settings, job_id)  # the report is placeholder bytes, not JSON

    row = rows(browser.get(JOBS).text)[job_id]
    assert row.find("td", cls="lesion-volume")[0].text == "–"


def test_the_state_filter_shows_one_state(
    open_browser: Browser, settings: Settings, patient_zip: bytes
) -> None:
    browser = open_browser(API_KEY)
    done = submit_job(browser, patient_zip)
    waiting = submit_job(browser, patient_zip)
    finish(settings, done)

    assert set(rows(browser.get(JOBS, params={"state": "succeeded"}).text)) == {done}
    queued = list_page(browser, state="queued")
    assert set(rows(browser.get(JOBS, params={"state": "queued"}).text)) == {waiting}
    selected = [
        option
        for option in queued.one("select", id="state-filter").find("option")
        if "selected" in option.attrs
    ]
    assert [option.attrs["value"] for option in selected] == ["queued"]
    failed = list_page(browser, state="failed")
    assert failed.find("tr", cls="job-row") == []
    assert "No jobs in state failed" in failed.one("td", cls="empty").text


def test_the_list_pages_newest_first_with_older_and_newer_links(
    open_browser: Browser, settings: Settings, patient_zip: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pages, "JOBS_PER_PAGE", 2)  # a page of 2 rather than 50 uploads
    browser = open_browser(API_KEY)
    submitted = [submit_job(browser, patient_zip) for _ in range(3)]

    first = list_page(browser)
    assert len(first.find("tr", cls="job-row")) == 2
    assert first.find("a", id="newer") == []
    older = first.one("a", id="older").attrs["href"]
    assert older == "/ui/jobs?offset=2"

    second = Page(browser.get(older).text)
    assert len(second.find("tr", cls="job-row")) == 1
    assert second.find("a", id="older") == []
    assert second.one("a", id="newer").attrs["href"] == "/ui/jobs?offset=0"
    shown = [row.attrs["data-job-id"] for page in (first, second) for row in page.find("tr", cls="job-row")]
    assert sorted(shown) == sorted(submitted), "every job once, over the two pages"
    assert shown[-1] == submitted[0], "newest first: the first upload comes last"

    # The filter stays on across pages.
    filtered = list_page(browser, state="queued")
    assert filtered.one("a", id="older").attrs["href"] == "/ui/jobs?offset=2&state=queued"


# --- A job's page ---------------------------------------------------------------------------


def test_the_job_page_has_the_job_its_csrf_token_and_links_to_existing_results_only(
    open_browser: Browser, settings: Settings, patient_zip: bytes
) -> None:
    browser = open_browser(API_KEY)
    job_id = submit_job(browser, patient_zip)
    finish(settings, job_id, outputs=["seg", "report"])

    response = browser.get(f"/ui/jobs/{job_id}")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    for name, value in SECURITY_HEADERS.items():
        assert response.headers[name] == value, name
    page = Page(response.text)
    assert page.one("section", id="viewer").attrs["data-job-id"] == job_id
    assert job_id in page.one("code").text
    assert page.one("span", id="job-state").text == "succeeded"
    token = page.named("meta", "csrf-token").attrs["content"]
    assert token == session_of(browser, settings).csrf_token(storage_secret(settings))
    assert page.one("form", id="logout-form").find("input")[0].attrs["value"] == token

    links = {link.attrs["data-result"]: link for link in page.find("a", cls="download")}
    assert set(links) == set(OUTPUT_FILES)
    visible = {name for name, link in links.items() if "hidden" not in link.attrs}
    assert visible == {"seg", "report"}
    assert links["seg"].attrs["href"] == f"/v1/jobs/{job_id}/results/seg"
    assert browser.get(links["seg"].attrs["href"]).content == b"seg bytes"


def test_a_queued_job_page_offers_no_download(open_browser: Browser, patient_zip: bytes) -> None:
    browser = open_browser(API_KEY)
    job_id = submit_job(browser, patient_zip)

    page = Page(browser.get(f"/ui/jobs/{job_id}").text)
    assert page.one("span", id="job-state").text == "queued"
    assert all("hidden" in link.attrs for link in page.find("a", cls="download"))
    assert "queued" in page.one("p", id="viewer-message").text


@pytest.mark.parametrize("job_id", ["0" * 32, "not-a-job", "%2e%2e"])
def test_an_unknown_job_is_a_404_page(open_browser: Browser, job_id: str) -> None:
    response = open_browser(READ_KEY).get(f"/ui/jobs/{job_id}")

    assert response.status_code == 404
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["cache-control"] == "no-store"
    page = Page(response.text)
    assert page.one("p", id="page-error").text
    assert page.one("h1").text == "No such job"


# --- Tenancy --------------------------------------------------------------------------------


def test_a_session_sees_its_own_jobs_and_an_admin_every_job_with_its_owner(
    open_browser: Browser, patient_zip: bytes
) -> None:
    script = open_browser()
    job_a = submit_job(script, patient_zip, key=TENANT_A_KEY)
    job_b = submit_job(script, patient_zip, key=TENANT_B_KEY)
    tenant_a = open_browser(TENANT_A_KEY)

    page = list_page(tenant_a)
    assert set(rows(tenant_a.get(JOBS).text)) == {job_a}
    assert "Owner" not in header_cells(page)
    assert tenant_a.get(f"/ui/jobs/{job_a}").status_code == 200
    other = tenant_a.get(f"/ui/jobs/{job_b}")
    assert other.status_code == 404 and Page(other.text).one("h1").text == "No such job"
    assert tenant_a.get(f"/v1/jobs/{job_b}").status_code == 404

    # A read-only key has submitted nothing: it sees nothing.
    reader = list_page(open_browser(READ_KEY))
    assert reader.find("tr", cls="job-row") == [] and reader.one("td", cls="empty").text == "No jobs."

    admin = open_browser(ADMIN_KEY)
    admin_page = list_page(admin)
    assert "Owner" in header_cells(admin_page)
    owners = {job_id: row.find("code")[0].text for job_id, row in rows(admin.get(JOBS).text).items()}
    assert owners == {job_a: owner_of_key(TENANT_A_KEY), job_b: owner_of_key(TENANT_B_KEY)}
    assert admin.get(f"/ui/jobs/{job_b}").status_code == 200


# --- Logging out ----------------------------------------------------------------------------


def test_logout_with_the_token_clears_the_cookie(open_browser: Browser) -> None:
    browser = open_browser(READ_KEY)
    token = csrf_token_of_page(browser, JOBS)

    response = browser.post("/ui/logout", data={"csrf_token": token})

    assert (response.status_code, response.headers["location"]) == (303, LOGIN_PATH)
    cleared = set_cookie(response)
    assert cleared["max-age"] == "0" and cleared["value"] in ("", '""')
    assert cleared["path"] == "/"
    assert COOKIE_NAME not in browser.cookies
    assert_login_redirect(browser.get(JOBS), JOBS)


@pytest.mark.parametrize("token", ["", "not-the-token"], ids=["no-token", "wrong-token"])
def test_logout_without_the_token_keeps_the_session(open_browser: Browser, token: str) -> None:
    """A page elsewhere cannot log the user out (the form's token is needed)."""
    browser = open_browser(READ_KEY)
    data = {"csrf_token": token} if token else {}

    response = browser.post("/ui/logout", data=data)

    assert (response.status_code, response.headers["location"]) == (303, JOBS)
    assert "set-cookie" not in response.headers
    assert browser.get(JOBS).status_code == 200


def test_logging_out_an_expired_session_then_in_again_lands_on_a_page(open_browser: Browser) -> None:
    browser = open_browser()
    response = browser.post("/ui/logout", data={"csrf_token": "a-token-of-a-session-that-expired"})
    assert response.status_code == 303
    next_path = Page(browser.get(response.headers["location"]).text).named("input", "next").attrs["value"]

    landed = log_in(browser, READ_KEY, next=next_path)
    assert browser.get(landed.headers["location"]).status_code == 200


@pytest.mark.parametrize(
    "params", [{"state": "bogus"}, {"offset": "-3"}, {"offset": "x"}, {"offset": "9" * 30}]
)
def test_a_hand_edited_list_address_shows_the_list_not_an_error(
    open_browser: Browser, params: dict[str, str]
) -> None:
    browser = open_browser(API_KEY)

    response = browser.get("/ui/jobs", params=params)

    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert len(Page(response.text).find("table", id="jobs")) == 1
