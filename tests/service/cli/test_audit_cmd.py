"""``rtinjury audit`` as a physicist runs it: a synthetic archive, an interruption, a PACS, Celery.

The archive: six synthetic patients (two per task) with three follow-ups each, whose lesion
grows, shrinks or peaks by construction, plus one broken patient (its RTDOSE missing). The main
audit is interrupted with Ctrl-C (SIGINT) after a few follow-ups and then resumed; every other
test reads its outputs or audits a part of the archive another way and compares the rows.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from models.synth import write_synthetic_patients
from service.cli.main import main
from tests.service.cli.runner import rtinjury
from tests.worker.audit.conftest import orthanc  # noqa: F401  (a fixture)
from worker.audit.rows import VOLATILE_COLUMNS
from worker.audit.tables import read_audit_csv
from worker.stages.assemble.case import patient_alias

pytestmark = [pytest.mark.slow, pytest.mark.tools]

REDIS_URL = "redis://127.0.0.1:6379/13"
#: Audits here skip the B-spline step: the same code path, half the registration time.
FAST = ("--rigid-only", "--threads", "2")


@dataclass
class Archive:
    root: Path
    cases: dict[str, dict[str, Any]]  # patient alias → case.json
    folders: dict[str, Path]  # patient alias → patient folder
    broken_alias: str
    broken_patient_id: str


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Archive:
    root = tmp_path_factory.mktemp("audit") / "archive"
    folders = write_synthetic_patients(root, task="all", cases=2, seed=4200, followups=3)
    broken = write_synthetic_patients(root / "more", task="orn", cases=1, seed=4299)[0]
    (broken / "planning" / "rtdose.dcm").unlink()
    cases, by_alias = {}, {}
    for folder in folders:
        case = json.loads((folder / "case.json").read_text())
        cases[patient_alias(case["patient_id"])] = case
        by_alias[patient_alias(case["patient_id"])] = folder
    broken_case = json.loads((broken / "case.json").read_text())
    # A hospital archive holds DICOM only (and so does a PACS): the truth stays in the test.
    for case_file in root.rglob("case.json"):
        case_file.unlink()
    return Archive(root, cases, by_alias, patient_alias(broken_case["patient_id"]), broken_case["patient_id"])


@dataclass
class Audit:
    out: Path
    first_run: subprocess.CompletedProcess[str]
    second_run: subprocess.CompletedProcess[str]
    rows: list[dict[str, Any]]


def _audit_process(archive: Path, out: Path, log: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "service.cli.main", "audit", str(archive), "--out", str(out), *FAST],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.fixture(scope="module")
def audit(archive: Archive, tmp_path_factory: pytest.TempPathFactory) -> Audit:
    """The archive audited with a Ctrl-C after three follow-ups, then the same command again."""
    out = tmp_path_factory.mktemp("audit-out") / "audit"
    log = out.parent / "first.log"
    process = _audit_process(archive.root, out, log)
    records = out / "state" / "records"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and process.poll() is None:
        if records.is_dir() and len(list(records.glob("*.json"))) >= 3:
            break
        time.sleep(0.2)
    assert process.poll() is None, log.read_text()[-3000:]
    process.send_signal(signal.SIGINT)
    code = process.wait(120)
    first = subprocess.CompletedProcess(process.args, code, log.read_text(), "")
    # The resumed run on two worker processes: the pool path, and both cores of a CI machine.
    second = subprocess.run(
        [
            sys.executable,
            "-m",
            "service.cli.main",
            "audit",
            str(archive.root),
            "--out",
            str(out),
            *FAST,
            "--workers",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-3000:]
    return Audit(out, first, second, read_audit_csv(out / "audit.csv"))


def _stable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows without the columns that say when and how fast (they differ between any two runs)."""
    return sorted(
        ({k: v for k, v in row.items() if k not in VOLATILE_COLUMNS} for row in rows),
        key=lambda row: (row["patient_alias"], row["followup_date"] or ""),
    )


def test_one_row_per_followup_and_the_broken_patient_with_its_reason(archive: Archive, audit: Audit) -> None:
    followups = [row for row in audit.rows if row["patient_alias"] != archive.broken_alias]
    assert len(followups) == 18 and all(row["status"] == "succeeded" for row in followups)
    assert len({row["key"] for row in audit.rows}) == len(audit.rows) == 19
    for alias, case in archive.cases.items():
        mine = sorted((r for r in followups if r["patient_alias"] == alias), key=lambda r: r["followup_date"])
        assert [r["followup_date"] for r in mine] == [f["study_date"] for f in case["followups"]]
        assert [r["followup_series_uid"] for r in mine] == [
            f["series_instance_uid"] for f in case["followups"]
        ]
        assert {r["task"] for r in mine} == {case["task"]}
        planned = dt.date.fromisoformat(case["planning"]["study_date"])
        for row, truth in zip(mine, case["followups"], strict=True):
            # No case.json states the end of treatment, so months count from the planning CT.
            days = (dt.date.fromisoformat(truth["study_date"]) - planned).days
            assert row["months_since_rt"] == pytest.approx(days / 30.44, abs=0.051)
            assert row["rt_reference"] == "planning CT" and row["planning_date"] == planned.isoformat()
    (broken,) = [row for row in audit.rows if row["patient_alias"] == archive.broken_alias]
    assert broken["status"] == "failed" and broken["failed_stage"] == "assemble"
    assert "RTDOSE" in broken["error"] and broken["lesion_volume_cc"] is None


def test_volumes_follow_the_constructed_course(archive: Archive, audit: Audit) -> None:
    patients = {row["patient_alias"]: row for row in read_audit_csv_patients(audit.out)}
    for alias, case in archive.cases.items():
        truth = [f["lesion"]["volume_cc"] for f in case["followups"]]
        mine = sorted(
            (r for r in audit.rows if r["patient_alias"] == alias), key=lambda r: r["followup_date"]
        )
        measured = [r["lesion_volume_cc"] for r in mine]
        steps = [(b > a) for a, b in itertools.pairwise(truth)]
        assert [(b > a) for a, b in itertools.pairwise(measured)] == steps, (
            alias,
            truth,
            measured,
        )
        for row, true_volume in zip(mine, truth, strict=True):
            assert row["lesion_found"] and row["lesion_volume_cc"] == pytest.approx(true_volume, rel=0.5)
        assert patients[alias]["course"] == case["lesion_course"]


def read_audit_csv_patients(out: Path) -> list[dict[str, str]]:
    import csv

    with (out / "patients.csv").open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_lesion_centroids_are_in_the_planning_frame(archive: Archive, audit: Audit) -> None:
    """Each follow-up has its own frame and misalignment; the table maps the centroid back onto
    the planning CT, where the constructed lesion sits (its centre moves as it grows)."""
    for alias, case in archive.cases.items():
        mine = sorted(
            (r for r in audit.rows if r["patient_alias"] == alias), key=lambda r: r["followup_date"]
        )
        for row, truth in zip(mine, case["followups"], strict=True):
            found = [row[f"lesion_centroid_{axis}_mm"] for axis in "xyz"]
            expected = truth["lesion"]["centroid_planning_mm"]
            distance = sum((a - b) ** 2 for a, b in zip(found, expected, strict=True)) ** 0.5
            assert distance < 4.0, (alias, found, expected)


def test_interrupted_run_resumes_without_processing_anything_twice(audit: Audit) -> None:
    assert audit.first_run.returncode == 130, audit.first_run.stdout[-2000:]
    assert "interrupted" in audit.first_run.stdout
    processed = [
        json.loads(line) for line in (audit.out / "state" / "processed.jsonl").read_text().splitlines()
    ]
    keys = [entry["key"] for entry in processed]
    assert len(keys) == len(set(keys)) == 19
    runs = [entry["run_id"] for entry in processed]
    first_run = runs[0]
    done_first = runs.count(first_run)
    assert 3 <= done_first < 19 and len(set(runs)) == 2
    assert f"{done_first} done before" in audit.second_run.stdout
    assert not list((audit.out / "state" / "work").iterdir())


def test_resumed_results_equal_an_uninterrupted_audit(archive: Archive, audit: Audit, tmp_path: Path) -> None:
    """The follow-ups of the interrupted run, audited again from scratch: the same rows."""
    first_run = json.loads((audit.out / "state" / "processed.jsonl").read_text().splitlines()[0])["run_id"]
    alias = next(r["patient_alias"] for r in audit.rows if r["run_id"] == first_run)
    source = tmp_path / "one"
    shutil.copytree(archive.folders[alias], source / alias)
    done = rtinjury("audit", str(source), "--out", str(tmp_path / "fresh"), *FAST)
    assert done.returncode == 0, done.stderr[-3000:]
    fresh = read_audit_csv(tmp_path / "fresh" / "audit.csv")
    assert _stable(fresh) == _stable([r for r in audit.rows if r["patient_alias"] == alias])


def test_a_rerun_skips_finished_followups_and_retries_failed_ones_on_request(
    archive: Archive, audit: Audit
) -> None:
    again = rtinjury("audit", str(archive.root), "--out", str(audit.out), *FAST, "--json")
    assert again.returncode == 0, again.stderr
    figures = json.loads(again.stdout)
    assert figures["processed"] == 0 and figures["skipped"] == 19 and figures["failed"] == 1
    retried = rtinjury("audit", str(archive.root), "--out", str(audit.out), *FAST, "--json", "--retry-failed")
    assert json.loads(retried.stdout)["processed"] == 1
    assert _stable(read_audit_csv(audit.out / "audit.csv")) == _stable(audit.rows)


def test_outputs_and_summary_link_each_followup(audit: Audit) -> None:
    html = (audit.out / "summary.html").read_text(encoding="utf-8")
    for row in audit.rows:
        if row["status"] == "succeeded":
            for column in ("seg_path", "rtstruct_path", "sr_path", "report_path", "preview_path"):
                assert (audit.out / row[column]).is_file()
            assert row["preview_path"] in html
    assert (audit.out / "audit.parquet").stat().st_size > 0
    assert "patient_id" not in audit.rows[0]


def test_audit_through_orthanc_gives_the_folder_audit_rows(
    archive: Archive,
    audit: Audit,
    orthanc: Any,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Two patients (one of them the broken one) stored in Orthanc, found by C-FIND, retrieved by
    C-MOVE and audited: the same rows as the folder audit."""
    alias = sorted(archive.cases)[-1]
    broken = archive.root / "more"
    orthanc.store([p for p in archive.folders[alias].rglob("*.dcm")] + [p for p in broken.rglob("*.dcm")])
    ids = [archive.cases[alias]["patient_id"], archive.broken_patient_id]
    out = tmp_path / "pacs-audit"
    done = rtinjury(
        "audit",
        "--pacs",
        f"{orthanc.peer.ae_title}@{orthanc.peer.host}:{orthanc.peer.port}",
        "--patients",
        ",".join(ids),
        "--move-port",
        str(orthanc.move_port),
        "--out",
        str(out),
        *FAST,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    pacs_rows = read_audit_csv(out / "audit.csv")
    folder_rows = [r for r in audit.rows if r["patient_alias"] in (alias, archive.broken_alias)]
    assert len(pacs_rows) == 4
    assert _comparable(pacs_rows) == _comparable(folder_rows)


def _comparable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Everything but the keys (a PACS rewrites each file's meta header, so the bytes and with them
    the keys differ) and the output paths (named by key)."""
    ignored = {"key", *(c for c in rows[0] if c.endswith("_path"))}
    return [{k: v for k, v in row.items() if k not in ignored} for row in _stable(rows)]


@pytest.fixture
def celery_worker(tmp_path: Path) -> Iterator[dict[str, str]]:
    try:
        redis.Redis.from_url(REDIS_URL).flushdb()
    except redis.ConnectionError:
        pytest.fail("Redis does not answer on 127.0.0.1:6379 (.ci/run starts one)", pytrace=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RTINJURY_")}
    env |= {"RTINJURY_BROKER_URL": REDIS_URL, "RTINJURY_STORAGE_ROOT": str(tmp_path / "storage")}
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "service.cli.main", "worker", "--queues", "cpu,gpu", "--pool", "solo"],
        env=env,
        stdout=log,
        stderr=log,
    )
    yield env
    worker.terminate()
    worker.wait(60)


def test_celery_audit_gives_the_same_rows(
    archive: Archive, audit: Audit, celery_worker: dict[str, str], tmp_path: Path
) -> None:
    """One patient's follow-ups fanned out to a real Celery worker on Redis."""
    alias = sorted(archive.cases)[0]
    source = tmp_path / "one"
    shutil.copytree(archive.folders[alias], source / alias)
    done = rtinjury(
        "audit", str(source), "--out", str(tmp_path / "celery"), "--celery", *FAST, env=celery_worker
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    rows = read_audit_csv(tmp_path / "celery" / "audit.csv")
    assert _stable(rows) == _stable([r for r in audit.rows if r["patient_alias"] == alias])
    assert not list((tmp_path / "storage" / "jobs").iterdir())


def test_celery_without_a_broker_is_one_clear_line(archive: Archive, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RTINJURY_")}
    done = rtinjury("audit", str(archive.root), "--out", str(tmp_path / "x"), "--celery", env=env)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "rtinjury: error: --celery needs RTINJURY_BROKER_URL: the broker (Redis) the workers listen on"
    ]


def test_bad_arguments_are_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # One real process (what reaches the terminal), the rest in this process (the same main()).
    done = rtinjury("audit", str(tmp_path / "missing"), "--out", str(tmp_path / "o"))
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "not a folder" in done.stderr
    for args, words in (
        (("audit", "--out", str(tmp_path / "o")), "SOURCE"),
        (("audit", str(tmp_path), "--out", str(tmp_path / "o"), "--pacs", "X@h:1"), "not both"),
        (("audit", "--out", str(tmp_path / "o"), "--pacs", "nonsense"), "AET@"),
    ):
        assert main(list(args)) == 2
        stderr = capsys.readouterr().err
        assert len(stderr.strip().splitlines()) == 1 and words in stderr, stderr
