"""The audit pages over HTTP, on a real audit of a small synthetic archive.

The archive: two ORN patients with three follow-ups each (their lesion grows or shrinks by
construction) and one patient whose RTDOSE is missing (one failed row). ``rtinjury audit`` runs
once per session as a user runs it; the pages are read through the app's own login, as an
admin key, a read-only key and no session at all.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pydicom
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from models.synth import write_synthetic_patients
from service.api.auth import hash_api_key
from service.api.sessions import COOKIE_NAME
from service.config import Settings
from service.main import create_app
from tests.service.cli.runner import rtinjury
from worker.audit.tables import read_audit_csv

pytestmark = pytest.mark.slow

ADMIN_KEY = "admin-key-0123456789abcdefghij"
READ_KEY = "read-only-key-0123456789abcdef"
SVG = "{http://www.w3.org/2000/svg}"
#: What a file outside the audits folder holds: never to be served.
SECRET = b"outside the audit folder"


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def audits_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<base>/audits`` with ``a1`` (a real audit), ``a2`` (only its records: a run in
    progress) and things that are not audits or lead out of the folder."""
    base = tmp_path_factory.mktemp("audit-pages")
    archive = base / "archive"
    write_synthetic_patients(archive, task="orn", cases=2, seed=4310, followups=3)
    broken = write_synthetic_patients(archive / "more", task="orn", cases=1, seed=4311)[0]
    (broken / "planning" / "rtdose.dcm").unlink()
    root = base / "audits"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("RTINJURY_")}
    done = rtinjury(
        "audit", str(archive), "--out", str(root / "a1"), "--rigid-only", "--threads", "2", env=environment
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    shutil.copytree(root / "a1" / "state" / "records", root / "a2" / "state" / "records")
    _plant_outside_links(base, root)
    return root


def _plant_outside_links(base: Path, root: Path) -> None:
    """Links that lead out of the audits folder, and folders that are no audit of ours.

    The audits folder's parent is made to look like an audit (an audit.csv, a follow-up folder
    holding :data:`SECRET`): what a ``..`` or a link out of the folder would reach.
    """
    item = base / "followups" / "pt-0000000000" / "2020-01-01_orn_00000000"
    item.mkdir(parents=True)
    for name in ("report.json", "preview.png", "seg.dcm"):
        (item / name).write_bytes(SECRET)
    shutil.copy(root / "a1" / "audit.csv", base / "audit.csv")
    followups = root / "a1" / "followups"
    alias = sorted(p.name for p in followups.iterdir())[0]
    (followups / "pt-elsewhere").symlink_to(item.parent)  # a patient folder
    (followups / alias / "elsewhere").symlink_to(item)  # a follow-up folder
    leaky = followups / alias / "leaky"
    leaky.mkdir()
    (leaky / "report.json").symlink_to(item / "report.json")  # one file
    (root / "linked").symlink_to(base)  # a whole audit
    (root / "empty").mkdir()  # no audit.csv, no records
    (root / "bad name").mkdir()
    shutil.copy(root / "a1" / "audit.csv", root / "bad name" / "audit.csv")


@pytest.fixture(scope="session")
def a1_rows(audits_root: Path) -> list[dict[str, Any]]:
    return read_audit_csv(audits_root / "a1" / "audit.csv")


def _settings(storage: Path, audits: Path) -> Settings:
    read_only = f"{hash_api_key(READ_KEY)};scopes=read"
    return Settings(storage_root=storage, api_key=ADMIN_KEY, api_key_hashes=[read_only], audit_root=audits)


def _app(settings: Settings) -> FastAPI:
    return create_app(settings)


@pytest.fixture
def app(no_site_environment: None, tmp_path: Path, audits_root: Path) -> FastAPI:
    return _app(_settings(tmp_path / "storage", audits_root))


@pytest.fixture
def anonymous(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as client:
        yield client


@pytest.fixture
def admin(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as client:
        _log_in(client, ADMIN_KEY)
        yield client


def _log_in(client: TestClient, key: str) -> None:
    answer = client.post("/ui/login", data={"api_key": key}, follow_redirects=False)
    assert answer.status_code == 303 and client.cookies.get(COOKIE_NAME), answer.text


# --- reading the pages ------------------------------------------------------------------------


def _rows_of(html: str, css_class: str) -> list[tuple[str, str]]:
    """(opening tag, inner HTML) of each ``<tr class="css_class" …>``."""
    return re.findall(rf'(<tr class="{css_class}"[^>]*>)(.*?)</tr>', html, flags=re.DOTALL)


def _attribute(tag: str, name: str) -> str:
    found = re.search(rf'{name}="([^"]*)"', tag)
    assert found, f"no {name} in {tag}"
    return found.group(1)


def _cell(inner: str, css_class: str) -> str:
    found = re.search(rf'<td class="[^"]*\b{css_class}\b[^"]*">(.*?)</td>', inner, flags=re.DOTALL)
    assert found, f"no cell {css_class}"
    return found.group(1).strip()


def _svg(inner: str) -> ET.Element | None:
    """The plot of a table row, parsed as XML (so it is well formed)."""
    found = re.search(r"<svg.*?</svg>", inner, flags=re.DOTALL)
    return ET.fromstring(found.group(0)) if found else None


def _followup_url(html: str, alias: str) -> str:
    for tag, inner in _rows_of(html, "followup-row"):
        link = re.search(r'class="followup-link" href="([^"]+)"', inner)
        if _attribute(tag, "data-alias") == alias and link:
            return link.group(1)
    raise AssertionError(f"no follow-up link of {alias}")


def _volume(row: dict[str, Any]) -> float | None:
    return row["lesion_volume_cc"]


# --- the list ---------------------------------------------------------------------------------


def test_list_shows_each_audit_with_its_counts(admin: TestClient, a1_rows: list[dict[str, Any]]) -> None:
    answer = admin.get("/ui/audits")
    assert answer.status_code == 200
    assert answer.headers["content-security-policy"].startswith("default-src 'self'")
    listed = {_attribute(tag, "data-audit"): inner for tag, inner in _rows_of(answer.text, "audit-row")}
    # Links out of the folder, folders without an audit and names we do not serve are not audits.
    assert sorted(listed) == ["a1", "a2"]
    a1 = listed["a1"]
    assert _cell(a1, "patients") == str(len({row["patient_alias"] for row in a1_rows})) == "3"
    assert _cell(a1, "followups") == str(len(a1_rows)) == "7"
    failed = [row for row in a1_rows if row["status"] != "succeeded"]
    assert len(failed) == 1 and f'<span class="badge failed">{len(failed)}</span>' in _cell(a1, "failed")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", _cell(a1, "last-run"))
    # A2 is a run still going: its finished records count, and the page says why.
    assert _cell(listed["a2"], "followups") == str(len(a1_rows))
    assert "no audit.csv yet" in _cell(listed["a2"], "notes")


def test_an_absent_audit_root_lists_nothing(no_site_environment: None, tmp_path: Path) -> None:
    app = _app(_settings(tmp_path / "storage", tmp_path / "no-audits-here"))
    with TestClient(app) as client:
        _log_in(client, ADMIN_KEY)
        answer = client.get("/ui/audits")
    assert answer.status_code == 200 and _rows_of(answer.text, "audit-row") == []
    assert "No audits yet" in answer.text


# --- one audit --------------------------------------------------------------------------------


def test_audit_page_plots_every_patient_with_the_volumes_of_audit_csv(
    admin: TestClient, a1_rows: list[dict[str, Any]]
) -> None:
    answer = admin.get("/ui/audits/a1")
    assert answer.status_code == 200
    patients = {_attribute(tag, "data-alias"): inner for tag, inner in _rows_of(answer.text, "patient-row")}
    assert sorted(patients) == sorted({row["patient_alias"] for row in a1_rows})
    for alias, inner in patients.items():
        mine = sorted(
            (r for r in a1_rows if r["patient_alias"] == alias), key=lambda r: r["followup_date"] or ""
        )
        volumes = [_volume(r) for r in mine if _volume(r) is not None]
        svg = _svg(inner)
        if not volumes:  # the patient without a dose: one failed row, nothing to plot
            assert svg is None and "no volume to plot" in inner
            continue
        assert svg is not None
        (line,) = svg.iter(f"{SVG}polyline")
        assert len(line.attrib["points"].split()) == len(volumes) == 3
        assert [float(c.attrib["data-cc"]) for c in svg.iter(f"{SVG}circle")] == volumes
        assert _cell(inner, "first-volume") == f"{volumes[0]:.2f}"
        assert _cell(inner, "last-volume") == f"{volumes[-1]:.2f}"
        # Later follow-ups lie to the right: the x axis is time.
        xs = [float(point.split(",")[0]) for point in line.attrib["points"].split()]
        assert xs == sorted(xs) and len(set(xs)) == len(xs)


def test_followup_rows_show_volume_dose_and_the_failure(
    admin: TestClient, a1_rows: list[dict[str, Any]]
) -> None:
    rows = _rows_of(admin.get("/ui/audits/a1").text, "followup-row")
    assert len(rows) == len(a1_rows)
    by_key = {_attribute(tag, "data-key"): inner for tag, inner in rows}
    for row in a1_rows:
        inner = by_key[row["key"]]
        if row["status"] == "succeeded":
            assert _cell(inner, "volume") == f"{row['lesion_volume_cc']:.2f}"
            assert _cell(inner, "lesion_dmean_gy") == f"{row['lesion_dmean_gy']:.1f}"
            assert inner.count('class="download"') == 5
        else:
            assert "RTDOSE" in row["error"] and row["error"] in inner
            assert _cell(inner, "volume") == "–" and 'class="download"' not in inner


def test_patient_ids_are_shown_when_audit_csv_has_them_and_never_logged(
    no_site_environment: None, tmp_path: Path, audits_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # What `rtinjury audit --include-patient-ids` writes: a patient_id column after the alias.
    audits = tmp_path / "audits"
    shutil.copytree(audits_root / "a1", audits / "ids", symlinks=True)
    text = (audits / "ids" / "audit.csv").read_text("utf-8").splitlines()
    ids = {}
    lines = [text[0].replace("patient_alias,", "patient_alias,patient_id,", 1)]
    for line in text[1:]:
        key, alias, rest = line.split(",", 2)
        ids.setdefault(alias, f"SECRET-MRN-{len(ids) + 1:04d}")
        lines.append(f"{key},{alias},{ids[alias]},{rest}")
    (audits / "ids" / "audit.csv").write_text("\n".join(lines) + "\n", "utf-8")
    with caplog.at_level(logging.DEBUG), TestClient(_app(_settings(tmp_path / "storage", audits))) as client:
        _log_in(client, ADMIN_KEY)
        html = client.get("/ui/audits/ids").text
        first = _followup_url(html, sorted(ids)[0])
        assert client.get(first).status_code == 200
    for alias, patient_id in ids.items():
        (inner,) = [i for t, i in _rows_of(html, "patient-row") if _attribute(t, "data-alias") == alias]
        assert _cell(inner, "patient-id") == patient_id
    assert not [r for r in caplog.records if "SECRET-MRN" in r.getMessage()]


# --- one follow-up and its files --------------------------------------------------------------


def test_followup_page_shows_the_report_volume_and_the_preview(
    admin: TestClient, audits_root: Path, a1_rows: list[dict[str, Any]]
) -> None:
    row = next(r for r in a1_rows if r["status"] == "succeeded")
    url = _followup_url(admin.get("/ui/audits/a1").text, row["patient_alias"])
    page = admin.get(url)
    assert page.status_code == 200
    folder = audits_root / "a1" / Path(row["report_path"]).parent
    assert url.endswith(f"/followups/{row['patient_alias']}/{folder.name}")
    report = json.loads((folder / "report.json").read_text("utf-8"))
    shown = re.search(r'<tr data-field="lesion_volume_cc"><th>[^<]*</th><td>([^<]*)</td>', page.text)
    assert shown and shown.group(1) == f"{report['lesion']['volume_cc']:.2f} cc"
    assert shown.group(1) == f"{row['lesion_volume_cc']:.2f} cc"
    preview = re.search(r'<img id="preview"[^>]*? src="([^"]+)"', page.text)
    assert preview, "the page shows the preview"
    image = admin.get(preview.group(1))
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert image.headers["content-disposition"].startswith("inline")
    assert image.content == (folder / "preview.png").read_bytes()
    assert image.content.startswith(b"\x89PNG\r\n\x1a\n")


@pytest.mark.parametrize(
    ("file", "media_type", "modality"),
    [
        ("seg.dcm", "application/dicom", "SEG"),
        ("rtstruct.dcm", "application/dicom", "RTSTRUCT"),
        ("sr.dcm", "application/dicom", "SR"),
        ("report.json", "application/json", None),
    ],
)
def test_downloads_come_as_attachments_of_their_media_type(
    admin: TestClient,
    audits_root: Path,
    a1_rows: list[dict[str, Any]],
    file: str,
    media_type: str,
    modality: str | None,
) -> None:
    row = next(r for r in a1_rows if r["status"] == "succeeded")
    folder = Path(row["report_path"]).parent
    answer = admin.get(f"/ui/audits/a1/{folder.as_posix()}/{file}")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == media_type
    assert answer.headers["content-disposition"] == f'attachment; filename="{folder.name}_{file}"'
    assert answer.content == (audits_root / "a1" / folder / file).read_bytes()
    if modality:
        assert pydicom.dcmread(io.BytesIO(answer.content)).Modality == modality


# --- what must not be served ------------------------------------------------------------------


def _first_item(a1_rows: list[dict[str, Any]]) -> tuple[str, str]:
    row = next(r for r in a1_rows if r["status"] == "succeeded")
    return row["patient_alias"], Path(row["report_path"]).parent.name


def test_traversal_and_links_out_of_the_audit_are_404(
    admin: TestClient, audits_root: Path, a1_rows: list[dict[str, Any]]
) -> None:
    alias, item = _first_item(a1_rows)
    first = sorted(p.name for p in (audits_root / "a1" / "followups").iterdir() if p.name.startswith("pt-"))[
        0
    ]
    base = f"/ui/audits/a1/followups/{alias}/{item}"
    attempts = [
        "/ui/audits/%2e%2e",
        "/ui/audits/a1/followups/%2e%2e/%2e%2e/audit.csv",
        f"/ui/audits/a1/followups/{alias}/%2e%2e/report.json",
        f"/ui/audits/a1/followups/%2e%2e/{item}/report.json",
        f"{base}/%2e%2e",
        f"{base}/..%2f..%2faudit.csv",
        "/ui/audits/%2Fetc",
        f"/ui/audits/a1/followups/%2F{alias}/{item}/report.json",
        f"{base}/audit.csv",  # not an output file name
        f"{base}/report.json.partial",
        "/ui/audits/linked",  # an audit that is a link out of the audits folder
        "/ui/audits/linked/followups/pt-0000000000/2020-01-01_orn_00000000/report.json",
        "/ui/audits/bad%20name",  # a name we do not serve
        "/ui/audits/empty",  # a folder without an audit
        "/ui/audits/a1/followups/pt-elsewhere/2020-01-01_orn_00000000/report.json",
        f"/ui/audits/a1/followups/{first}/elsewhere/report.json",
        f"/ui/audits/a1/followups/{first}/elsewhere",
        f"/ui/audits/a1/followups/{first}/leaky/report.json",
    ]
    answers = {url: admin.get(url) for url in attempts}
    assert [url for url, answer in answers.items() if answer.status_code != 404] == []
    assert [url for url, answer in answers.items() if SECRET in answer.content] == []
    assert admin.get(f"{base}/report.json").status_code == 200  # the same client may read a real one


def test_dot_dot_segments_that_reach_the_app_are_404(
    admin: TestClient, app: FastAPI, a1_rows: list[dict[str, Any]]
) -> None:
    """Clients normalise ``..`` away; a raw request (curl --path-as-is) does not."""
    alias, item = _first_item(a1_rows)
    cookie = f"{COOKIE_NAME}={admin.cookies[COOKIE_NAME]}"
    statuses = {}
    for path in [
        "/ui/audits/..",
        f"/ui/audits/a1/followups/{alias}/../report.json",
        f"/ui/audits/a1/followups/../{alias}/report.json",
        f"/ui/audits/a1/followups/{alias}/{item}/..",
        "/ui/audits/../followups/pt-0000000000/2020-01-01_orn_00000000",
        "/ui/audits/../followups/pt-0000000000/2020-01-01_orn_00000000/report.json",
    ]:
        statuses[path] = _raw_get(app, path, cookie)
    assert {path: status for path, status in statuses.items() if status != 404} == {}
    assert _raw_get(app, f"/ui/audits/a1/followups/{alias}/{item}/report.json", cookie) == 200


def _raw_get(app: FastAPI, path: str, cookie: str) -> int:
    """The status of a GET of ``path`` exactly as written, straight to the ASGI app."""
    statuses, requests = [], [{"type": "http.request", "body": b"", "more_body": False}]
    answered = anyio.Event()

    async def receive() -> dict[str, Any]:
        if requests:
            return requests.pop()
        await answered.wait()  # then the client goes, as a real one does
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])
        if message["type"] == "http.response.body" and not message.get("more_body"):
            answered.set()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), (b"cookie", cookie.encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }

    async def call() -> None:
        with anyio.fail_after(30):
            await app(scope, receive, send)

    anyio.run(call)
    return int(statuses[0])


def test_unknown_audit_is_the_404_page(admin: TestClient) -> None:
    answer = admin.get("/ui/audits/no-such-audit")
    assert answer.status_code == 404 and answer.headers["content-type"].startswith("text/html")
    assert 'id="page-error"' in answer.text and "no-such-audit" in answer.text


def test_a_read_only_key_gets_403_on_every_audit_page(
    anonymous: TestClient, a1_rows: list[dict[str, Any]]
) -> None:
    _log_in(anonymous, READ_KEY)
    assert anonymous.get("/ui/jobs").status_code == 200  # the key is valid for the job pages
    alias, item = _first_item(a1_rows)
    for url in [
        "/ui/audits",
        "/ui/audits/a1",
        f"/ui/audits/a1/followups/{alias}/{item}",
        f"/ui/audits/a1/followups/{alias}/{item}/seg.dcm",
    ]:
        answer = anonymous.get(url)
        assert answer.status_code == 403, url
        assert "admin scope" in answer.text and alias not in answer.text, url


def test_without_a_session_every_audit_page_goes_to_the_login_page(
    anonymous: TestClient, a1_rows: list[dict[str, Any]]
) -> None:
    alias, item = _first_item(a1_rows)
    for url in ["/ui/audits", "/ui/audits/a1", f"/ui/audits/a1/followups/{alias}/{item}/preview.png"]:
        answer = anonymous.get(url, follow_redirects=False)
        assert answer.status_code == 303, url
        assert answer.headers["location"] == f"/ui/login?next={url}"


# --- audits that are running, damaged or hostile ----------------------------------------------


def test_an_audit_without_its_table_yet_shows_its_records(
    admin: TestClient, a1_rows: list[dict[str, Any]]
) -> None:
    answer = admin.get("/ui/audits/a2")
    assert answer.status_code == 200
    assert "There is no audit.csv yet" in answer.text
    assert len(_rows_of(answer.text, "followup-row")) == len(a1_rows)
    assert len(_rows_of(answer.text, "patient-row")) == len({r["patient_alias"] for r in a1_rows})


DAMAGE = {
    "a row cut short": (lambda text: text.rsplit(",", 5)[0] + "\n", "has 5"),
    "not UTF-8": (lambda text: text.replace("succeeded", "succ\xe9eded"), "not UTF-8"),
    "empty": (lambda text: "", "empty"),
    "a bool that is not one": (lambda text: text.replace(",true,", ",maybe,", 1), "lesion_found"),
    "no status column": (lambda text: text.replace(",status,", ",state,", 1), "no status column"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_audit_csv_is_a_message_on_the_page(
    no_site_environment: None, tmp_path: Path, audits_root: Path, damage: str
) -> None:
    change, said = DAMAGE[damage]
    audits = tmp_path / "audits"
    shutil.copytree(audits_root / "a1", audits / "hurt", symlinks=True)
    table = audits / "hurt" / "audit.csv"
    text = change(table.read_text("utf-8"))
    table.write_bytes(text.encode("latin-1") if damage == "not UTF-8" else text.encode("utf-8"))
    with TestClient(_app(_settings(tmp_path / "storage", audits))) as client:
        _log_in(client, ADMIN_KEY)
        page = client.get("/ui/audits/hurt")
        listing = client.get("/ui/audits")
    assert page.status_code == 200 and listing.status_code == 200
    problems = re.findall(r'<p class="error audit-problem">([^<]*)</p>', page.text)
    assert problems and problems[0].startswith("audit.csv cannot be read") and said in problems[0]
    # The finished records are there still: the page shows them instead.
    assert _rows_of(page.text, "followup-row") and "recorded as finished" in page.text
    assert "audit.csv cannot be read" in listing.text


def test_texts_of_the_table_are_escaped_in_the_page_and_the_plot(
    no_site_environment: None, tmp_path: Path, audits_root: Path
) -> None:
    audits = tmp_path / "audits"
    shutil.copytree(audits_root / "a1", audits / "odd", symlinks=True)
    rows = (audits / "odd" / "audit.csv").read_text("utf-8").splitlines()
    header = rows[0].split(",")
    hostile = []
    for line in rows[1:]:
        cells = line.split(",")
        if cells[header.index("status")] == "succeeded":
            cells[header.index("task")] = '"orn<script>x</script>&"'
        hostile.append(",".join(cells))
    (audits / "odd" / "audit.csv").write_text("\n".join([rows[0], *hostile]) + "\n", "utf-8")
    with TestClient(_app(_settings(tmp_path / "storage", audits))) as client:
        _log_in(client, ADMIN_KEY)
        page = client.get("/ui/audits/odd")
    assert page.status_code == 200
    assert "<script>" not in page.text.lower() and "&lt;script&gt;" in page.text.lower()
    plots = [_svg(inner) for _, inner in _rows_of(page.text, "patient-row")]
    tasks = {
        line.attrib["data-task"] for svg in plots if svg is not None for line in svg.iter(f"{SVG}polyline")
    }
    assert tasks == {"orn<script>x</script>&"}
