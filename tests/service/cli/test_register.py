"""``rtinjury register`` as a user runs it: a real process, real files, one-line errors."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from models.synth import TrueTransform, write_synthetic_patients
from tests.conftest import SHARED_DATA
from tests.service.cli.runner import rtinjury

STS_002 = SHARED_DATA / "ibsi2-sts-ct-mr" / "STS_002"


@pytest.fixture(scope="module")
def orn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_patients(tmp_path_factory.mktemp("cli-register"), task="orn", size="small")[0]


def test_register_two_series_folders_writes_the_transform_and_json_qa(orn: Path, tmp_path: Path) -> None:
    out = tmp_path / "followup-to-planning.tfm"
    result = rtinjury(
        "register",
        str(orn / "followup-1" / "ct"),
        str(orn / "planning" / "ct"),
        "--out",
        str(out),
        "--rigid-only",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["method"] == "rigid" and report["fixed_modality"] == "CT"
    assert report["needs_review"] is False and report["flags"] == []
    qa = report["qa"]
    assert set(qa) >= {"metric_before", "metric_after", "body_overlap_before", "body_overlap_after"}
    assert set(qa) >= {"rotation_degrees", "translation_mm", "jacobian_min", "jacobian_max", "seconds"}
    assert qa["metric_after"] < qa["metric_before"] and qa["body_overlap_after"] > 0.95
    # The written file maps follow-up points onto the planning CT as the synthetic truth does,
    # up to the truth's smooth deformation (2.3 mm at the lesion), which a rigid one cannot follow.
    case = json.loads((orn / "case.json").read_text())
    truth = TrueTransform.from_dict(case["true_transform"])
    point = np.array(case["lesion"]["centroid_followup_mm"])
    mapped = np.array(sitk.ReadTransform(str(out)).TransformPoint(point.tolist()))
    assert np.linalg.norm(mapped - truth.apply(point)) < 3.0


def test_register_image_files_prints_the_qa_lines(tmp_path: Path) -> None:
    out = tmp_path / "mr-to-ct.h5"
    result = rtinjury(
        "register", str(STS_002 / "MR_T1_image.nii.gz"), str(STS_002 / "CT_image.nii.gz"), "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    assert out.is_file()
    lines = result.stdout.splitlines()
    assert lines[0].startswith("method       rigid (MR follow-up")  # MR guessed: no HU air values
    assert any(line.startswith("body Dice") for line in lines)
    assert any(line.startswith("note: deformable refinement not tried") for line in lines)
    assert result.stderr == ""


def _assert_one_line_error(result: subprocess.CompletedProcess[str], words: str) -> None:
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rtinjury: error: "), result.stderr
    assert words in lines[0]
    assert "Traceback" not in result.stderr


def test_missing_folder_gives_one_line(orn: Path, tmp_path: Path) -> None:
    result = rtinjury(
        "register", str(tmp_path / "nothing"), str(orn / "planning" / "ct"), "--out", str(tmp_path / "t.tfm")
    )
    _assert_one_line_error(result, "no such file or folder")


def test_folder_with_two_series_gives_one_line(orn: Path, tmp_path: Path) -> None:
    mixed = tmp_path / "mixed"
    shutil.copytree(orn / "planning" / "ct", mixed / "a")
    shutil.copytree(orn / "followup-1" / "ct", mixed / "b")
    result = rtinjury("register", str(mixed), str(orn / "planning" / "ct"), "--out", str(tmp_path / "t.tfm"))
    _assert_one_line_error(result, "holds 2 image series")


def test_non_image_file_gives_one_line(orn: Path, tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image\n")
    result = rtinjury("register", str(notes), str(orn / "planning" / "ct"), "--out", str(tmp_path / "t.tfm"))
    _assert_one_line_error(result, "notes.txt: not an image file")


def test_unreadable_image_file_gives_one_line(orn: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"\x1f\x8b not really gzip")
    result = rtinjury("register", str(broken), str(orn / "planning" / "ct"), "--out", str(tmp_path / "t.tfm"))
    _assert_one_line_error(result, "broken.nii.gz: not a readable image file")


def test_wrong_transform_suffix_gives_one_line(orn: Path, tmp_path: Path) -> None:
    result = rtinjury(
        "register",
        str(orn / "followup-1" / "ct"),
        str(orn / "planning" / "ct"),
        "--out",
        str(tmp_path / "t.json"),
    )
    _assert_one_line_error(result, "--out must end in one of .tfm")


def test_images_that_cannot_be_registered_give_one_line(orn: Path, tmp_path: Path) -> None:
    blank = sitk.Image([40, 40, 20], sitk.sitkFloat32)
    sitk.WriteImage(blank, str(tmp_path / "blank.nii.gz"))
    result = rtinjury(
        "register",
        str(tmp_path / "blank.nii.gz"),
        str(orn / "planning" / "ct"),
        "--out",
        str(tmp_path / "t.tfm"),
    )
    _assert_one_line_error(result, "no body found in the follow-up image")
    assert not (tmp_path / "t.tfm").exists()
