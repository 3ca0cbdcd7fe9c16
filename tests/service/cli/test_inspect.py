"""``rtinjury inspect`` as a user runs it: a real process, real files, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.patients import write_patient
from tests.service.cli.runner import rtinjury


def test_inspect_json_lists_roles_dose_and_prescription(tmp_path: Path) -> None:
    write_patient(tmp_path / "p")
    result = rtinjury("inspect", str(tmp_path / "p"), "--json")
    assert result.returncode == 0, result.stderr
    case = json.loads(result.stdout)["cases"][0]
    assert (case["task"], case["followup_kind"]) == ("ce", "flair")
    assert case["followup"]["modality"] == "MR" and case["followup"]["size"] == [20, 16, 6]
    assert case["planning_ct"]["description"] == "Planning CT"
    assert case["rtdose"]["summation_type"] == "PLAN" and case["rtdose"]["max_gy"] > 25
    assert case["rtplan"]["prescription_gy"] == 70.0 and case["rtplan"]["fractions"] == 35
    assert case["registration_needed"] is True
    assert "TEST001" not in result.stdout, "the patient is shown by alias only"


def test_inspect_text_report(tmp_path: Path) -> None:
    write_patient(tmp_path / "p")
    result = rtinjury("inspect", str(tmp_path / "p"))
    assert result.returncode == 0, result.stderr
    assert "Case 1 of 1: task CE (follow-up flair)" in result.stdout
    assert "prescription 70 Gy in 35 fraction(s)" in result.stdout


def _assert_one_line_error(result: subprocess.CompletedProcess[str], words: str) -> None:
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rtinjury: error: "), result.stderr
    assert words in lines[0]
    assert "Traceback" not in result.stderr


def test_mixed_patients_give_one_line(tmp_path: Path) -> None:
    write_patient(tmp_path / "a", patient_id="A1")
    write_patient(tmp_path / "b", patient_id="B2")
    _assert_one_line_error(rtinjury("inspect", str(tmp_path)), "2 different patients")


def test_missing_path_gives_one_line(tmp_path: Path) -> None:
    _assert_one_line_error(rtinjury("inspect", str(tmp_path / "nothing")), "no such file or folder")


def test_non_dicom_folder_gives_one_line(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("hello")
    _assert_one_line_error(rtinjury("inspect", str(tmp_path)), "no DICOM instances found")


def test_corrupt_dicom_gives_one_line(tmp_path: Path) -> None:
    write_patient(tmp_path / "p")
    victim = sorted((tmp_path / "p" / "planning").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:200])
    _assert_one_line_error(rtinjury("inspect", str(tmp_path / "p")), victim.name)


def test_site_rules_from_the_environment_are_used(tmp_path: Path) -> None:
    write_patient(tmp_path / "p")
    broken = tmp_path / "rules.yaml"
    broken.write_text("version: 2\n")
    result = rtinjury("inspect", str(tmp_path / "p"), env={**os.environ, "RTINJURY_ROLE_RULES": str(broken)})
    _assert_one_line_error(result, "role rules")
