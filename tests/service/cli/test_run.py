"""``rtinjury run`` and ``rtinjury demo`` as a user runs them: real processes, real files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pydicom
import pytest

from tests.service.api.conftest import zip_folders
from tests.service.cli.runner import rtinjury

pytestmark = pytest.mark.slow

OUTPUTS = {"seg.dcm", "rtstruct.dcm", "sr.dcm", "report.json", "preview.png"}


def test_run_on_a_zip_writes_every_output_and_reports_each_stage(orn_patient: Path, tmp_path: Path) -> None:
    archive = tmp_path / "patient.zip"
    archive.write_bytes(zip_folders(orn_patient))
    out = tmp_path / "out"
    done = rtinjury("run", str(archive), "--out", str(out), "--clinical-text", "mandible pain")
    assert done.returncode == 0, done.stderr
    assert {p.name for p in out.iterdir()} == OUTPUTS
    lines = done.stdout.splitlines()
    stages = [line.split("] ", 1)[1] for line in lines if line.startswith("[")]
    assert stages == ["assemble", "read", "register", "dose", "prompts", "infer", "export", "done"]
    assert any(line.startswith("Osteoradionecrosis — AI-generated") for line in lines)
    assert pydicom.dcmread(out / "seg.dcm").Modality == "SEG"
    report = json.loads((out / "report.json").read_text())
    assert report["task"] == "orn" and not report["lesion"]["empty"]


def test_run_json_prints_the_report(orn_patient: Path, tmp_path: Path) -> None:
    done = rtinjury("run", str(orn_patient), "--out", str(tmp_path / "o"), "--json", "--task", "orn")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["task"] == "orn"
    assert "[  2%] assemble" in done.stderr  # progress stays off stdout when it carries JSON


def test_run_refuses_bad_input_with_one_line(orn_patient: Path, tmp_path: Path) -> None:
    missing = rtinjury("run", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and missing.stderr.strip().endswith("no such file or folder")
    no_dose = tmp_path / "no-dose"
    shutil.copytree(orn_patient, no_dose)
    (no_dose / "planning" / "rtdose.dcm").unlink()
    refused = rtinjury("run", str(no_dose), "--out", str(tmp_path / "o"))
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
    assert "dose" in refused.stderr.lower()
    wrong = rtinjury("run", str(orn_patient), "--tau", "1.5")
    assert wrong.returncode == 2 and "tau" in wrong.stderr


def test_demo_makes_a_patient_and_runs_it(tmp_path: Path) -> None:
    done = rtinjury("demo", "--out", str(tmp_path / "demo"))
    assert done.returncode == 0, done.stderr
    assert {p.name for p in (tmp_path / "demo" / "results").iterdir()} == OUTPUTS
    assert "lesion volume" in done.stdout
    assert f"outputs in {tmp_path / 'demo' / 'results'}/" in done.stdout


def test_worker_refuses_an_unknown_queue() -> None:
    done = rtinjury("worker", "--queues", "cpu,tpu")
    assert done.returncode == 2 and "unknown queue(s) tpu" in done.stderr
