"""The web viewer's sessions: the signed cookie, logging in, CSRF, and what every route answers
without a session.

Everything runs against the real app (``create_app``) on a temporary storage root with its real
SQLite database and embedded queue, in a TestClient that behaves like a browser (keeps cookies,
does not follow redirects). Jobs are real uploads of a synthetic DICOM patient; the worker's part
(its status and outputs) is written here as the worker writes it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx2 as httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr

from service.api.auth import hash_api_key
from service.api.errors import LOGIN_PATH
from service.api.sessions import (
    COOKIE_NAME,
    CSRF_HEADER,
    SECRET_FILE,
    Session,
    decode_cookie,
    encode_cookie,
    new_session,
    session_secret,
)
from service.config import Settings
from service.main import create_app
from service.web.pages import SECURITY_HEADERS
from tests.patients import write_patient
from tests.service.api.conftest import (
    ADMIN_KEY,
    API_KEY,
    KEY_SCOPES,
    READ_KEY,
    SUBMIT_KEY,
    TENANT_A_KEY,
    bearer,
    upload,
    zip_folders,
)
from worker.celery.app import REFINE, queue_folders
from worker.jobs.folder import JobFolder
from worker.jobs.status import JobState, read_status, write_status
from worker.stages.export.files import OUTPUT_FILES

#: Not the default (8 h): the cookie's Max-Age must come from the settings.
LIFETIME_S = 3600
SECRET = b"unit-test-secret-0123456789abcdef"
OTHER_SECRET = b"another-secret-0123456789abcdefgh"
CLICKS = {"clicks": [{"point_mm": [1.0, -2.5, 30.0], "positive": True}]}
#: Routes that answer without a session (health, the API's own documents, the login page).
PUBLIC_ROUTES = {
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/openapi.json"),
    ("GET", "/"),
    ("GET", "/favicon.ico"),
    ("GET", LOGIN_PATH),
    ("POST", LOGIN_PATH),
}


# --- A browser on the real app ---------------------------------------------------------------


@pytest.fixture(autouse=True)
def _no_site_environment(no_site_environment: None) -> None:
    """No RTINJURY_* variable of the machine (a session secret, a broker URL …) reaches a test."""


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """The development key (every scope) plus one hash line per key of KEY_SCOPES."""
    lines = [f"{hash_api_key(key)};scopes={scopes}" for key, scopes in KEY_SCOPES.items()]
    return Settings(
        storage_root=tmp_path / "storage",
        api_key=API_KEY,
        api_key_hashes=lines,
        session_lifetime_s=LIFETIME_S,
    )


@pytest.fixture
def app(settings: Settings) -> FastAPI:
    return create_app(settings)


Browser = Callable[..., TestClient]


@pytest.fixture
def open_browser(app: FastAPI) -> Iterator[Browser]:
    """Opens TestClients that act as browsers (cookie jar, no redirects followed), logged in with
    ``key`` when one is given; ``on`` another app, ``https`` for an https:// base URL, and
    ``errors_raise=False`` to see a server error as the 500 a browser gets."""
    with ExitStack() as stack:

        def opened(
            key: str | None = None,
            *,
            on: FastAPI | None = None,
            https: bool = False,
            errors_raise: bool = True,
        ) -> TestClient:
            client = TestClient(
                on or app,
                base_url="https://testserver" if https else "http://testserver",
                follow_redirects=False,
                raise_server_exceptions=errors_raise,
            )
            stack.enter_context(client)
            if key is not None:
                response = log_in(client, key)
                assert response.status_code == 303, response.text
            return client

        yield opened


@pytest.fixture(scope="session")
def patient_zip(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A small synthetic patient (planning CT, RTPLAN, RTDOSE, a follow-up CT) as a zip."""
    patient = write_patient(tmp_path_factory.mktemp("web") / "first", patient_id="PAT001")
    return zip_folders(patient.root)


def log_in(client: TestClient, key: str, next: str | None = None) -> httpx.Response:
    """The login form as a browser posts it."""
    form = {"api_key": key} if next is None else {"api_key": key, "next": next}
    return client.post(LOGIN_PATH, data=form)


def submit_job(client: TestClient, patient_zip: bytes, key: str = API_KEY) -> str:
    """Upload the patient with a bearer key (as a script would) and return the new job's id."""
    response = upload(client, patient_zip, headers=bearer(key))
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def finish(
    settings: Settings,
    job_id: str,
    *,
    outputs: Iterable[str] = OUTPUT_FILES,
    warnings: Sequence[str] = (),
    report: dict[str, Any] | None = None,
) -> None:
    """What the worker leaves behind when a job succeeds: its status and the named outputs
    (placeholder bytes, or ``report`` as the report's JSON)."""
    folder = JobFolder.under(settings.storage_root, job_id)
    status = read_status(folder.status_path)
    status.state, status.stage, status.progress = JobState.SUCCEEDED, None, 100
    status.warnings = list(warnings)
    write_status(status, folder.status_path)
    for name in outputs:
        path = folder.output(name)
        if name == "report" and report is not None:
            path.write_text(json.dumps(report), encoding="utf-8")
        else:
            path.write_bytes(f"{name} bytes".encode())


def refinements_queued(settings: Settings, job_id: str) -> int:
    """How many refinement messages of the job wait in the embedded queue."""
    folder = queue_folders(settings)["messages"]
    messages = [path.read_text(encoding="utf-8") for path in folder.glob("*")] if folder.is_dir() else []
    return sum(REFINE in message and job_id in message for message in messages)


def cookie_header(value: str) -> dict[str, str]:
    """A ``Cookie`` header with this session cookie value (one the jar did not get from a login)."""
    return {"Cookie": f"{COOKIE_NAME}={value}"}


def storage_secret(settings: Settings) -> bytes:
    return (settings.storage_root / SECRET_FILE).read_text(encoding="ascii").strip().encode("ascii")


def session_of(client: TestClient, settings: Settings) -> Session:
    """The session the client's cookie holds, decoded with the storage root's secret."""
    session = decode_cookie(client.cookies.get(COOKIE_NAME), storage_secret(settings))
    assert session is not None, "the client holds a valid session cookie"
    return session


def set_cookie(response: httpx.Response) -> dict[str, str]:
    """The session cookie's ``Set-Cookie``: ``value`` and each attribute (names lowercased)."""
    headers = [h for h in response.headers.get_list("set-cookie") if h.startswith(f"{COOKIE_NAME}=")]
    assert len(headers) == 1, response.headers.get_list("set-cookie")
    name_value, *attributes = (part.strip() for part in headers[0].split(";"))
    parsed = {"value": name_value.partition("=")[2]}
    for attribute in attributes:
        name, _, value = attribute.partition("=")
        parsed[name.lower()] = value
    return parsed


@dataclass
class Element:
    """One element of a page: its tag, attributes, the elements inside it and all its text."""

    tag: str
    attrs: dict[str, str]
    children: list[Element] = field(default_factory=list)
    raw_text: str = ""

    @property
    def text(self) -> str:
        return " ".join(self.raw_text.split())

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    def matches(self, tag: str | None, id: str | None, cls: str | None) -> bool:
        return (
            (tag is None or self.tag == tag)
            and (id is None or self.attrs.get("id") == id)
            and (cls is None or cls in self.classes)
        )

    def find(self, tag: str | None = None, *, id: str | None = None, cls: str | None = None) -> list[Element]:
        """The elements inside this one that match, in document order."""
        found = []
        for child in self.children:
            if child.matches(tag, id, cls):
                found.append(child)
            found.extend(child.find(tag, id=id, cls=cls))
        return found


class Page(HTMLParser):
    """The elements of an HTML page in document order (the standard library's parser, so what is
    checked is the markup a browser gets, not a regular expression's idea of it)."""

    _VOID = frozenset({"meta", "link", "input", "br", "img", "hr", "source", "col", "area"})

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[Element] = []
        self._open: list[Element] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {name: value or "" for name, value in attrs})
        self.elements.append(element)
        if self._open:
            self._open[-1].children.append(element)
        if tag not in self._VOID:
            self._open.append(element)

    def handle_endtag(self, tag: str) -> None:
        # HTML lets some end tags be left out: close everything up to the matching start tag.
        for depth in range(len(self._open) - 1, -1, -1):
            if self._open[depth].tag == tag:
                del self._open[depth:]
                return

    def handle_data(self, data: str) -> None:
        for element in self._open:
            element.raw_text += data

    def find(self, tag: str | None = None, *, id: str | None = None, cls: str | None = None) -> list[Element]:
        return [element for element in self.elements if element.matches(tag, id, cls)]

    def one(self, tag: str | None = None, *, id: str | None = None, cls: str | None = None) -> Element:
        found = self.find(tag, id=id, cls=cls)
        assert len(found) == 1, f"one {tag or ''}#{id or ''}.{cls or ''} on the page, found {len(found)}"
        return found[0]

    def named(self, tag: str, name: str) -> Element:
        """The one ``tag`` element with this ``name`` attribute (a form field, a meta tag)."""
        found = [element for element in self.find(tag) if element.attrs.get("name") == name]
        assert len(found) == 1, f"one <{tag} name={name}> on the page, found {len(found)}"
        return found[0]


def csrf_token_of_page(client: TestClient, path: str) -> str:
    response = client.get(path)
    assert response.status_code == 200, response.text
    return Page(response.text).named("meta", "csrf-token").attrs["content"]


def assert_login_redirect(response: httpx.Response, path: str) -> None:
    assert response.status_code == 303, (path, response.status_code, response.text)
    assert response.headers["location"] == f"{LOGIN_PATH}?next={quote(path, safe='/')}"
    assert response.headers["cache-control"] == "no-store"


def assert_unauthorized(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "unauthorized"


# --- The cookie itself ----------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def signed(payload: str, secret: bytes = SECRET) -> str:
    """A cookie value with a valid MAC over ``payload``: what only the secret's holder can make
    (written out here, independently of the product's code)."""
    return f"{payload}.{_b64(hmac.new(secret, payload.encode('ascii'), hashlib.sha256).digest())}"


def signed_document(document: object) -> str:
    return signed(_b64(json.dumps(document).encode("utf-8")))


KEY_HASH = hash_api_key(API_KEY)
NOW = 1_700_000_000.0
FIELDS = {"k": KEY_HASH, "e": int(NOW) + 600, "s": "session-id"}


def test_a_cookie_decodes_to_the_session_it_encodes_until_it_expires() -> None:
    session = new_session(KEY_HASH, LIFETIME_S, now=NOW)
    value = encode_cookie(session, SECRET)

    assert session.expires_at == NOW + LIFETIME_S
    assert decode_cookie(value, SECRET, now=NOW) == session
    assert decode_cookie(value, SECRET, now=session.expires_at - 1) == session
    assert decode_cookie(value, SECRET, now=session.expires_at) is None
    # Neither the key nor its hash is readable in the cookie text.
    assert API_KEY not in value and KEY_HASH not in value
    # Each login gets its own session id.
    assert new_session(KEY_HASH, LIFETIME_S, now=NOW).session_id != session.session_id


def test_a_value_signed_by_the_test_helper_is_accepted() -> None:
    """The malformed cases below are signed with ``signed``: they reach the payload checks only if
    this helper signs as the product does."""
    decoded = decode_cookie(signed_document(FIELDS), SECRET, now=NOW)
    assert decoded == Session(KEY_HASH, int(NOW) + 600, "session-id")


def test_an_altered_cookie_is_refused() -> None:
    value = encode_cookie(new_session(KEY_HASH, LIFETIME_S, now=NOW), SECRET)
    payload, mac = value.split(".")
    longer = _b64(json.dumps({**FIELDS, "e": int(NOW) + 10**6}).encode())
    other_key = _b64(json.dumps({**FIELDS, "k": hash_api_key(ADMIN_KEY)}).encode())
    flipped_mac = mac[:-1] + ("A" if mac[-1] != "A" else "B")

    assert decode_cookie(f"{longer}.{mac}", SECRET, now=NOW) is None
    assert decode_cookie(f"{other_key}.{mac}", SECRET, now=NOW) is None
    assert decode_cookie(f"{payload}.{flipped_mac}", SECRET, now=NOW) is None
    assert decode_cookie(value, OTHER_SECRET, now=NOW) is None
    assert decode_cookie(value, SECRET, now=NOW + LIFETIME_S + 1) is None


def _long_cookie(length: int) -> str:
    """A validly signed cookie of at least ``length`` characters (a long session id)."""
    padding = 0
    while len(value := signed_document({**FIELDS, "s": "x" * padding})) < length:
        padding += 1
    return value


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(None, id="absent"),
        pytest.param("", id="empty"),
        pytest.param(signed_document(FIELDS).replace(".", ""), id="no-dot"),
        pytest.param(signed_document(FIELDS) + ".x", id="two-dots"),
        pytest.param("." + signed_document(FIELDS).split(".")[1], id="empty-payload"),
        pytest.param(signed("a"), id="bad-base64-length"),
        pytest.param(signed("!!!!"), id="bad-base64-alphabet"),
        pytest.param(signed(_b64(b"\xff\xfe not utf-8")), id="not-utf8"),
        pytest.param(signed(_b64(b"not json")), id="non-json"),
        pytest.param(signed_document([KEY_HASH, int(NOW) + 600, "s"]), id="json-list"),
        pytest.param(signed_document("text"), id="json-string"),
        pytest.param(signed_document(None), id="json-null"),
        pytest.param(signed_document({k: v for k, v in FIELDS.items() if k != "k"}), id="missing-key"),
        pytest.param(signed_document({k: v for k, v in FIELDS.items() if k != "e"}), id="missing-expiry"),
        pytest.param(signed_document({k: v for k, v in FIELDS.items() if k != "s"}), id="missing-id"),
        pytest.param(signed_document({**FIELDS, "e": "soon"}), id="expiry-not-a-number"),
        pytest.param(signed_document({**FIELDS, "e": None}), id="expiry-null"),
        pytest.param(_long_cookie(1025), id="over-1024-chars"),
        pytest.param(signed_document(FIELDS).split(".")[0] + ".é", id="non-ascii-mac"),
        pytest.param(signed_document({**FIELDS, "e": float("inf")}), id="expiry-infinite"),
    ],
)
def test_a_malformed_cookie_is_no_session(value: str | None) -> None:
    assert decode_cookie(value, SECRET, now=NOW) is None


def test_the_length_limit_is_1024_characters() -> None:
    """The over-1024 case above is refused for its length, not for something else about it."""
    at_limit = _long_cookie(1024)
    assert len(at_limit) == 1024
    assert decode_cookie(at_limit, SECRET, now=NOW) is not None


def test_the_csrf_token_belongs_to_one_session_and_one_secret() -> None:
    session = new_session(KEY_HASH, LIFETIME_S, now=NOW)
    token = session.csrf_token(SECRET)

    assert session.csrf_matches(SECRET, token)
    assert token == session.csrf_token(SECRET), "the token is the same on every page of a session"
    assert not session.csrf_matches(SECRET, None)
    assert not session.csrf_matches(SECRET, "")
    assert not session.csrf_matches(SECRET, token[:-1])
    assert not session.csrf_matches(SECRET, token + "A")
    assert not session.csrf_matches(SECRET, new_session(KEY_HASH, LIFETIME_S, now=NOW).csrf_token(SECRET))
    assert not session.csrf_matches(OTHER_SECRET, token)
    # The cookie does not carry it: a page must be read (same origin) to learn it.
    assert token not in encode_cookie(session, SECRET)


def test_a_non_ascii_csrf_token_does_not_match() -> None:
    session = new_session(KEY_HASH, LIFETIME_S, now=NOW)
    assert not session.csrf_matches(SECRET, "é" * 43)


# --- The signing secret ---------------------------------------------------------------------


def test_the_storage_root_secret_is_private_and_every_app_on_that_storage_accepts_its_cookies(
    settings: Settings, open_browser: Browser
) -> None:
    path = settings.storage_root / SECRET_FILE
    first = open_browser(READ_KEY)  # the first login makes the secret

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    secret = storage_secret(settings)
    assert len(secret) >= 32
    cookie = first.cookies[COOKIE_NAME]
    assert decode_cookie(cookie, secret) is not None

    # Another API process on the same storage (its own app, database engine and settings object).
    second = open_browser(on=create_app(settings.model_copy()))
    assert second.get("/ui/jobs", headers=cookie_header(cookie)).status_code == 200
    assert second.get("/v1/jobs", headers=cookie_header(cookie)).status_code == 200
    assert storage_secret(settings) == secret, "the secret was reused, not made again"


def test_rtinjury_session_secret_overrides_the_storage_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, open_browser: Browser
) -> None:
    storage = tmp_path / "shared-storage"
    configured = "configured-secret-0123456789abcdef"
    monkeypatch.setenv("RTINJURY_SESSION_SECRET", configured)
    env_settings = Settings(storage_root=storage, api_key=API_KEY)
    assert env_settings.session_secret == SecretStr(configured)
    env_browser = open_browser(API_KEY, on=create_app(env_settings))
    env_cookie = env_browser.cookies[COOKIE_NAME]

    assert decode_cookie(env_cookie, configured.encode()) is not None
    assert not (storage / SECRET_FILE).exists(), "no file is made when the secret is configured"

    monkeypatch.delenv("RTINJURY_SESSION_SECRET")
    file_browser = open_browser(API_KEY, on=create_app(Settings(storage_root=storage, api_key=API_KEY)))
    file_cookie = file_browser.cookies[COOKIE_NAME]
    assert (storage / SECRET_FILE).exists()
    assert decode_cookie(file_cookie, configured.encode()) is None
    # Each app refuses the other's cookie: they sign with different secrets.
    assert file_browser.get("/ui/jobs", headers=cookie_header(env_cookie)).status_code == 303
    assert env_browser.get("/ui/jobs", headers=cookie_header(file_cookie)).status_code == 303


def test_processes_starting_together_agree_on_one_secret(settings: Settings) -> None:
    workers = 8
    start = threading.Barrier(workers)

    def make_secret(_: int) -> bytes:
        start.wait()  # all ask at once, before any has the file
        return session_secret(settings.model_copy())

    with ThreadPoolExecutor(workers) as pool:
        secrets = list(pool.map(make_secret, range(workers)))

    assert len(set(secrets)) == 1
    assert secrets[0] == storage_secret(settings)


# --- Logging in -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key", ["not-a-configured-key-0123456789", SUBMIT_KEY, ""], ids=["unknown", "submit-only", "empty"]
)
def test_a_key_that_may_not_read_is_refused_on_the_login_page(open_browser: Browser, key: str) -> None:
    browser = open_browser()
    response = log_in(browser, key)

    assert response.status_code == 401
    assert response.headers["content-type"].startswith("text/html")
    assert Page(response.text).one(id="login-error").text
    if key:
        assert key not in response.text, "the page never repeats the key"
    assert "set-cookie" not in response.headers
    assert_login_redirect(browser.get("/ui/jobs"), "/ui/jobs")


@pytest.mark.parametrize("key", [API_KEY, READ_KEY, TENANT_A_KEY, ADMIN_KEY])
def test_a_key_that_may_read_logs_in_with_a_strict_httponly_cookie(
    open_browser: Browser, settings: Settings, key: str
) -> None:
    browser = open_browser()
    response = log_in(browser, key, next="/ui/jobs?state=failed")

    assert response.status_code == 303
    assert response.headers["location"] == "/ui/jobs?state=failed"
    cookie = set_cookie(response)
    assert "httponly" in cookie and "secure" not in cookie
    assert cookie["samesite"].lower() == "strict"
    assert cookie["path"] == "/"
    assert cookie["max-age"] == str(LIFETIME_S)
    assert key not in cookie["value"] and _b64(key.encode()) not in cookie["value"]
    session = session_of(browser, settings)
    assert session.key_hash == hash_api_key(key)
    assert 0 < session.expires_at - time.time() <= LIFETIME_S
    assert browser.get("/ui/jobs").status_code == 200


def test_over_https_the_cookie_is_secure(open_browser: Browser) -> None:
    browser = open_browser(https=True)
    response = log_in(browser, READ_KEY)

    assert response.status_code == 303
    assert "secure" in set_cookie(response)
    assert browser.get("/ui/jobs").status_code == 200


def test_a_key_with_spaces_around_it_logs_in(open_browser: Browser) -> None:
    """Pasted keys often carry a newline or spaces."""
    assert log_in(open_browser(), f"  {READ_KEY}\n").status_code == 303


@pytest.mark.parametrize(
    "next_path",
    [
        "//evil.example",
        "https://evil.example",
        "/\\evil.example",
        "/v1/jobs",
        "",
        "ui/jobs",
        "/ui\\jobs",
        "/ui/logout",
        "/ui/login",
        "/ui/static/viewer.js",
    ],
)
def test_after_login_only_our_own_pages_are_a_destination(open_browser: Browser, next_path: str) -> None:
    browser = open_browser()
    assert log_in(browser, READ_KEY, next=next_path).headers["location"] == "/ui/jobs"
    # The login page's form does not carry the foreign target either.
    login_page = Page(browser.get(LOGIN_PATH, params={"next": next_path}).text)
    assert login_page.named("input", "next").attrs["value"] == "/ui/jobs"


def test_after_login_the_page_asked_for_is_shown(open_browser: Browser, patient_zip: bytes) -> None:
    browser = open_browser()
    job_id = submit_job(browser, patient_zip)
    path = f"/ui/jobs/{job_id}"
    redirected = browser.get(path)
    assert_login_redirect(redirected, path)
    login_page = Page(browser.get(redirected.headers["location"]).text)
    assert login_page.named("input", "next").attrs["value"] == path

    response = log_in(browser, API_KEY, next=path)
    assert response.headers["location"] == path
    assert browser.get(path).status_code == 200


# --- Without a session ----------------------------------------------------------------------


def route_table(routes: Iterable[Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    """(method, path template) of every route of the app, HEAD aside. FastAPI ≥ 0.16x keeps an
    included router as one opaque entry of ``app.routes``: its routes are under ``original_router``."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from route_table(included.routes, prefix + route.include_context.prefix)
            continue
        for method in sorted(set(getattr(route, "methods", None) or ()) - {"HEAD"}):
            yield method, prefix + route.path


def fill(template: str, job_id: str) -> str:
    """A real path for a route template: a real job, a real result or static file, a real slice."""
    values = {
        "job_id": job_id,
        "name": "viewer.js" if template.startswith("/ui/static/") else "seg",
        "plane": "axial",
        "index": "0",
        # The audit pages: an audit, a patient alias, a follow-up and one of its files.
        "patient": "pt-0123456789",
        "item": "2021-04-01_orn_4ff6663e",
        "file": "seg.dcm",
    }
    path = template
    for name, value in values.items():
        path = path.replace(f"{{{name}}}", value)
    assert "{" not in path, f"give the path parameters of {template} a value in fill()"
    return path


@pytest.mark.parametrize(
    "cookie",
    [
        pytest.param({}, id="no-cookie"),
        pytest.param(cookie_header("garbage"), id="garbage-cookie"),
        pytest.param(
            cookie_header(encode_cookie(new_session(hash_api_key(API_KEY), LIFETIME_S), OTHER_SECRET)),
            id="cookie-of-another-secret",
        ),
    ],
)
def test_without_a_valid_session_pages_send_to_login_and_the_api_answers_401(
    app: FastAPI, open_browser: Browser, settings: Settings, patient_zip: bytes, cookie: dict[str, str]
) -> None:
    browser = open_browser()
    job_id = submit_job(browser, patient_zip)
    finish(settings, job_id)
    routes = sorted(set(route_table(app.routes)))
    pages = [(m, t) for m, t in routes if (m, t) not in PUBLIC_ROUTES and t.startswith("/ui/")]
    api = [(m, t) for m, t in routes if (m, t) not in PUBLIC_ROUTES and not t.startswith("/ui/")]
    assert {t for _, t in pages} >= {"/ui/jobs", "/ui/jobs/{job_id}", "/ui/logout", "/ui/static/{name}"}
    assert {t for _, t in api} >= {
        "/v1/jobs",
        "/v1/jobs/{job_id}/view",
        "/v1/jobs/{job_id}/refine",
        "/metrics",
    }

    for method, template in pages:
        path = fill(template, job_id)
        response = browser.request(method, path, headers=cookie)
        if template == "/ui/logout":  # nothing to log out of: to the login page, to come back nowhere
            assert (response.status_code, response.headers["location"]) == (303, LOGIN_PATH)
        else:  # a static file is no page to come back to: the job list instead
            assert_login_redirect(response, "/ui/jobs" if template.startswith("/ui/static/") else path)
    for method, template in api:
        response = browser.request(method, fill(template, job_id), headers=cookie)
        assert_unauthorized(response)
    assert refinements_queued(settings, job_id) == 0
    assert read_status(JobFolder.under(settings.storage_root, job_id).status_path).state is JobState.SUCCEEDED
    for path in ("/healthz", "/readyz", LOGIN_PATH):
        assert browser.get(path, headers=cookie).status_code == 200, path
    home = browser.get("/", headers=cookie)
    assert (home.status_code, home.headers["location"]) == (303, "/ui/jobs")


def test_the_stylesheet_is_public_the_viewer_script_is_not(open_browser: Browser) -> None:
    browser = open_browser()
    css = browser.get("/ui/static/app.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert css.headers["x-content-type-options"] == "nosniff"
    assert_login_redirect(browser.get("/ui/static/viewer.js"), "/ui/jobs")

    logged_in = open_browser(READ_KEY)
    script = logged_in.get("/ui/static/viewer.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")


@pytest.mark.parametrize(
    "path",
    [
        "/ui/static/../pages.py",
        "/ui/static/..%2Fpages.py",
        "/ui/static/%2e%2e%2fpages.py",
        "/ui/static/..%5Cpages.py",
        "/ui/static/pages.py",
        "/ui/static/session.py",
        "/ui/static/app.css.bak",
        "/ui/static/APP.CSS",
        "/ui/static/",
    ],
)
def test_nothing_but_the_static_files_is_served(open_browser: Browser, path: str) -> None:
    for browser in (open_browser(), open_browser(READ_KEY)):
        response = browser.get(path)
        assert response.status_code == 404, (path, response.status_code)
        assert "import " not in response.text


def test_the_login_page_has_the_security_headers(open_browser: Browser) -> None:
    response = open_browser().get(LOGIN_PATH)

    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    for name, value in SECURITY_HEADERS.items():
        assert response.headers[name] == value, name
    csp = response.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert response.headers["cache-control"] == "no-store"
    page = Page(response.text)
    assert page.one("form", id="login-form").attrs["method"] == "post"
    assert page.one("input", id="api-key").attrs["type"] == "password"
    assert all(meta.attrs.get("name") != "csrf-token" for meta in page.find("meta")), "no session, no token"


# --- With a session -------------------------------------------------------------------------


def test_a_session_reads_the_api_like_its_key(open_browser: Browser, patient_zip: bytes) -> None:
    browser = open_browser(API_KEY)
    job_id = submit_job(open_browser(), patient_zip)

    listed = browser.get("/v1/jobs")
    assert listed.status_code == 200 and [job["id"] for job in listed.json()["data"]] == [job_id]
    assert browser.get(f"/v1/jobs/{job_id}").json()["state"] == "queued"
    # Past authentication: the job is not prepared yet, which only an authorized caller learns.
    view = browser.get(f"/v1/jobs/{job_id}/view")
    assert view.status_code == 409 and view.json()["code"] == "view-not-ready"
    assert browser.get("/metrics").status_code == 200


def test_a_change_through_the_session_needs_the_pages_csrf_token(
    open_browser: Browser, settings: Settings, patient_zip: bytes
) -> None:
    browser = open_browser(TENANT_A_KEY)
    job_id = submit_job(open_browser(), patient_zip, key=TENANT_A_KEY)
    finish(settings, job_id)
    refine = f"/v1/jobs/{job_id}/refine"

    for headers in ({}, {CSRF_HEADER: ""}, {CSRF_HEADER: "not-the-token"}):
        refused = browser.post(refine, json=CLICKS, headers=headers)
        assert refused.status_code == 403, (headers, refused.text)
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["code"] == "forbidden" and CSRF_HEADER in refused.json()["detail"]
    assert refinements_queued(settings, job_id) == 0
    assert browser.get(f"/v1/jobs/{job_id}").json()["state"] == "succeeded"

    token = csrf_token_of_page(browser, f"/ui/jobs/{job_id}")
    assert token == session_of(browser, settings).csrf_token(storage_secret(settings))
    accepted = browser.post(refine, json=CLICKS, headers={CSRF_HEADER: token})
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["refinements"] == 1
    assert refinements_queued(settings, job_id) == 1


def test_the_token_of_another_session_is_refused(
    open_browser: Browser, settings: Settings, patient_zip: bytes
) -> None:
    """A token is bound to its session: one read on another login (same key) does not do."""
    browser = open_browser(TENANT_A_KEY)
    other_login = open_browser(TENANT_A_KEY)
    job_id = submit_job(open_browser(), patient_zip, key=TENANT_A_KEY)
    finish(settings, job_id)
    other_token = csrf_token_of_page(other_login, "/ui/jobs")

    response = browser.post(f"/v1/jobs/{job_id}/refine", json=CLICKS, headers={CSRF_HEADER: other_token})
    assert response.status_code == 403
    assert refinements_queued(settings, job_id) == 0


def test_delete_through_the_session_needs_the_token_too(
    open_browser: Browser, settings: Settings, patient_zip: bytes
) -> None:
    browser = open_browser(TENANT_A_KEY)
    job_id = submit_job(open_browser(), patient_zip, key=TENANT_A_KEY)
    finish(settings, job_id)

    refused = browser.delete(f"/v1/jobs/{job_id}")
    assert refused.status_code == 403 and refused.json()["code"] == "forbidden"
    assert browser.get(f"/v1/jobs/{job_id}").status_code == 200
    assert JobFolder.under(settings.storage_root, job_id).status_path.exists()

    token = csrf_token_of_page(browser, "/ui/jobs")
    assert browser.delete(f"/v1/jobs/{job_id}", headers={CSRF_HEADER: token}).status_code == 204
    assert browser.get(f"/v1/jobs/{job_id}").status_code == 404


def test_a_bearer_key_needs_no_csrf_token(
    open_browser: Browser, settings: Settings, patient_zip: bytes
) -> None:
    script = open_browser()
    job_id = submit_job(script, patient_zip, key=TENANT_A_KEY)
    finish(settings, job_id)
    assert (
        script.post(f"/v1/jobs/{job_id}/refine", json=CLICKS, headers=bearer(TENANT_A_KEY)).status_code == 202
    )

    # A logged-in browser's script sending the bearer header: the key decides, not the cookie.
    finish(settings, job_id)
    browser = open_browser(TENANT_A_KEY)
    response = browser.post(f"/v1/jobs/{job_id}/refine", json=CLICKS, headers=bearer(TENANT_A_KEY))
    assert response.status_code == 202, response.text
    assert refinements_queued(settings, job_id) == 2


def test_the_session_has_the_scopes_of_its_key(
    open_browser: Browser, settings: Settings, patient_zip: bytes
) -> None:
    """A read-only key's session may look but not refine, even with the right token."""
    job_id = submit_job(open_browser(), patient_zip)
    finish(settings, job_id)
    browser = open_browser(READ_KEY)
    token = csrf_token_of_page(browser, "/ui/jobs")

    response = browser.post(f"/v1/jobs/{job_id}/refine", json=CLICKS, headers={CSRF_HEADER: token})
    assert response.status_code == 403 and "scope submit" in response.json()["detail"]
    assert refinements_queued(settings, job_id) == 0


def test_removing_the_key_makes_its_cookie_worthless(
    settings: Settings, open_browser: Browser, patient_zip: bytes
) -> None:
    browser = open_browser(TENANT_A_KEY)
    job_id = submit_job(browser, patient_zip, key=TENANT_A_KEY)
    cookie = browser.cookies[COOKIE_NAME]
    assert browser.get(f"/ui/jobs/{job_id}").status_code == 200

    # The same storage (and so the same secret), the key's line taken out of the settings.
    kept = [line for line in settings.api_key_hashes if not line.startswith(hash_api_key(TENANT_A_KEY))]
    assert len(kept) == len(settings.api_key_hashes) - 1
    without_key = create_app(settings.model_copy(update={"api_key_hashes": kept}))
    after = open_browser(on=without_key)

    assert_login_redirect(after.get("/ui/jobs", headers=cookie_header(cookie)), "/ui/jobs")
    assert_login_redirect(
        after.get(f"/ui/jobs/{job_id}", headers=cookie_header(cookie)), f"/ui/jobs/{job_id}"
    )
    assert_unauthorized(after.get("/v1/jobs", headers=cookie_header(cookie)))
    assert_unauthorized(after.get(f"/v1/jobs/{job_id}", headers=cookie_header(cookie)))
    # The other keys' cookies still work there.
    reader = open_browser(READ_KEY).cookies[COOKIE_NAME]
    assert after.get("/ui/jobs", headers=cookie_header(reader)).status_code == 200


def test_an_expired_cookie_is_refused(tmp_path: Path, open_browser: Browser) -> None:
    short = Settings(
        storage_root=tmp_path / "short",
        api_key=API_KEY,
        session_secret=SecretStr(SECRET.decode()),
        session_lifetime_s=60,
    )
    browser = open_browser(on=create_app(short))
    key_hash = hash_api_key(API_KEY)
    # Forged with the app's secret: one issued two lifetimes ago, one issued just now.
    expired = encode_cookie(new_session(key_hash, 60, now=time.time() - 120), SECRET)
    fresh = encode_cookie(new_session(key_hash, 60), SECRET)

    assert browser.get("/ui/jobs", headers=cookie_header(fresh)).status_code == 200
    assert browser.get("/v1/jobs", headers=cookie_header(fresh)).status_code == 200
    assert_login_redirect(browser.get("/ui/jobs", headers=cookie_header(expired)), "/ui/jobs")
    assert_unauthorized(browser.get("/v1/jobs", headers=cookie_header(expired)))


def test_non_ascii_cookies_and_tokens_are_refused_not_errors(
    open_browser: Browser, settings: Settings, patient_zip: bytes
) -> None:
    anonymous = open_browser(errors_raise=False)
    # What a browser may send (headers are bytes; Starlette reads them as Latin-1).
    odd_cookie = {"Cookie": f"{COOKIE_NAME}=payload.é".encode()}
    assert_login_redirect(anonymous.get("/ui/jobs", headers=odd_cookie), "/ui/jobs")
    assert_unauthorized(anonymous.get("/v1/jobs", headers=odd_cookie))

    browser = open_browser(TENANT_A_KEY)
    job_id = submit_job(browser, patient_zip, key=TENANT_A_KEY)
    finish(settings, job_id)
    anonymous.cookies.set(COOKIE_NAME, browser.cookies[COOKIE_NAME])
    refine = anonymous.post(f"/v1/jobs/{job_id}/refine", json=CLICKS, headers={CSRF_HEADER: "é".encode()})
    assert refine.status_code == 403
    logout = anonymous.post("/ui/logout", data={"csrf_token": "é"})
    assert (logout.status_code, logout.headers.get("location")) == (303, "/ui/jobs")


def test_the_query_of_the_page_asked_for_survives_the_login(open_browser: Browser) -> None:
    browser = open_browser()
    redirected = browser.get("/ui/jobs", params={"state": "failed"})
    assert redirected.headers["location"] == f"{LOGIN_PATH}?next=/ui/jobs%3Fstate%3Dfailed"

    response = log_in(browser, API_KEY, next="/ui/jobs?state=failed")

    assert response.headers["location"] == "/ui/jobs?state=failed"


@pytest.mark.parametrize("key", ["", "   ", "k" * 513])
def test_an_empty_or_overlong_key_is_refused_on_the_page(open_browser: Browser, key: str) -> None:
    response = log_in(open_browser(), key)

    assert response.status_code == 401 and response.headers["content-type"].startswith("text/html")
    assert "login-error" in response.text and "set-cookie" not in response.headers


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/docs/oauth2-redirect"])
def test_no_api_browser_that_needs_a_cdn_is_served(open_browser: Browser, path: str) -> None:
    assert open_browser().get(path).status_code == 404


@pytest.mark.parametrize("site", ["cross-site", "same-site"])
def test_a_login_form_sent_by_another_site_is_refused(open_browser: Browser, site: str) -> None:
    browser = open_browser()

    response = browser.post(
        LOGIN_PATH, data={"api_key": API_KEY, "next": "/ui/jobs"}, headers={"Sec-Fetch-Site": site}
    )

    assert response.status_code == 403 and "set-cookie" not in response.headers
    assert Page(response.text).one(id="login-error").text
    same_origin = browser.post(
        LOGIN_PATH, data={"api_key": API_KEY, "next": "/ui/jobs"}, headers={"Sec-Fetch-Site": "same-origin"}
    )
    assert same_origin.status_code == 303 and COOKIE_NAME in same_origin.headers["set-cookie"]


def test_behind_a_tls_proxy_the_cookie_can_be_made_secure(tmp_path: Path, no_site_environment: None) -> None:
    settings = Settings(storage_root=tmp_path, api_key=SecretStr(API_KEY), session_cookie_secure=True)
    with TestClient(create_app(settings)) as browser:  # plain http, as a proxy forwards it
        response = browser.post(LOGIN_PATH, data={"api_key": API_KEY}, follow_redirects=False)

    assert response.status_code == 303
    assert "secure" in response.headers["set-cookie"].lower().split("; ")
