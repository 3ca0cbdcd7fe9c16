"""Keys, records and plans: what makes an audit resumable."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from worker.audit.discovery import AuditItem, Discovery, Problem, discover
from worker.audit.items import ItemSettings
from worker.audit.ledger import AuditPaths, FileDigests, Ledger, item_key, settings_fingerprint
from worker.audit.rows import COLUMN_NAMES, FAILED
from worker.audit.runner import RunContext, make_plan, run_local_items
from worker.jobs.spec import JobOptions
from worker.settings import WorkerSettings
from worker.stages.assemble.rules import load_rules

FINGERPRINT = settings_fingerprint("file:abc", {"tau": 0.8}, "1.0")


def _items(folder: Path) -> list[AuditItem]:
    return discover(folder, load_rules()).items


def test_keys_follow_contents_not_names(orn_patient: Path, tmp_path: Path) -> None:
    shutil.copytree(orn_patient, tmp_path / "a" / "p")
    shutil.copytree(orn_patient, tmp_path / "b" / "elsewhere" / "renamed")
    digests = FileDigests(tmp_path / "digests.json")
    (first,) = _items(tmp_path / "a")
    (moved,) = _items(tmp_path / "b")
    assert item_key(first, digests, FINGERPRINT) == item_key(moved, digests, FINGERPRINT)
    other_settings = settings_fingerprint("file:abc", {"tau": 0.7}, "1.0")
    other_model = settings_fingerprint("file:def", {"tau": 0.8}, "1.0")
    assert item_key(first, digests, other_settings) != item_key(first, digests, FINGERPRINT)
    assert item_key(first, digests, other_model) != item_key(first, digests, FINGERPRINT)
    dose = tmp_path / "a" / "p" / "planning" / "rtdose.dcm"
    data = bytearray(dose.read_bytes())
    data[-1] ^= 1  # one dose voxel changed
    dose.write_bytes(bytes(data))
    (changed,) = _items(tmp_path / "a")
    assert item_key(changed, FileDigests(tmp_path / "fresh.json"), FINGERPRINT) != item_key(
        moved, digests, FINGERPRINT
    )


def test_digests_are_remembered_by_size_and_mtime(orn_patient: Path, tmp_path: Path) -> None:
    path = tmp_path / "f.dcm"
    shutil.copy(orn_patient / "planning" / "rtdose.dcm", path)
    digests = FileDigests(tmp_path / "digests.json")
    first = digests.digest(path)
    digests.save()
    again = FileDigests(tmp_path / "digests.json")
    assert again.digest(path) == first
    data = path.read_bytes()
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    os.utime(path, ns=(1, 1))  # a change the cache must notice
    assert again.digest(path) != first
    (tmp_path / "digests.json").write_text("{not json")
    assert FileDigests(tmp_path / "digests.json").digest(path) == again.digest(path)


def test_records_and_the_processing_log(tmp_path: Path) -> None:
    ledger = Ledger(AuditPaths(tmp_path / "audit"))
    assert ledger.record("k1") is None
    ledger.write("k1", {"status": "succeeded", "run_id": "r1"})
    assert ledger.record("k1") == {"key": "k1", "row": {"status": "succeeded", "run_id": "r1"}}
    (ledger.paths.records / "k2.json").write_text('{"key": "k2", "row": {')  # cut short by a crash
    assert ledger.record("k2") is None
    assert [(e["key"], e["run_id"]) for e in ledger.processed()] == [("k1", "r1")]


def _failed_items(folder: Path, count: int) -> list[AuditItem]:
    """Patients that make no case (so nothing heavy runs), each with a file of its own."""
    items = []
    for n in range(count):
        file = folder / f"p{n}.dcm"
        file.write_bytes(f"patient {n}".encode())
        items.append(AuditItem(f"P{n}", (file,), problem=Problem("assemble", "no-dose", "no RTDOSE found")))
    return items


def test_plan_skips_finished_items_and_retries_failed_ones_on_request(tmp_path: Path) -> None:
    paths = AuditPaths(tmp_path / "audit")
    ledger = Ledger(paths)
    discovery = Discovery(items=_failed_items(tmp_path, 3))
    digests = FileDigests(paths.state / "d.json")
    plan = make_plan(discovery, ledger, digests, FINGERPRINT, retry_failed=False)
    assert len(plan.to_run) == 3 and plan.finished == 0 and len(set(plan.keys)) == 3
    ledger.write(plan.keys[0], {"status": FAILED})
    ledger.write(plan.keys[1], {"status": "succeeded"})
    again = make_plan(discovery, ledger, digests, FINGERPRINT, retry_failed=False)
    assert (again.failed_kept, again.finished, [k for k, _ in again.to_run]) == (1, 1, [plan.keys[2]])
    retried = make_plan(discovery, ledger, digests, FINGERPRINT, retry_failed=True)
    assert [k for k, _ in retried.to_run] == [plan.keys[0], plan.keys[2]]


def test_worker_processes_record_every_item(tmp_path: Path) -> None:
    """Two spawned worker processes: every item recorded once, rows with every column."""
    paths = AuditPaths(tmp_path / "audit").create()
    items = [(f"{n:064x}", item) for n, item in enumerate(_failed_items(tmp_path, 4))]
    context = RunContext(
        paths, ItemSettings(0.8, JobOptions()), WorkerSettings(storage_root=tmp_path), "run-1"
    )
    rows: list[dict] = []
    run_local_items(items, context, 2, rows.append)
    assert sorted(r["key"] for r in rows) == sorted(k[:16] for k, _ in items)
    assert all(tuple(r) == COLUMN_NAMES and r["status"] == FAILED and r["patient_id"] is None for r in rows)
    assert sorted(e["key"] for e in Ledger(paths).processed()) == sorted(k for k, _ in items)
