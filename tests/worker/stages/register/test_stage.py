"""The register stage entry: identity for one frame, a supplied REG, else intensity registration."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from models.synth import TrueTransform, write_synthetic_patients
from tests.conftest import SHARED_DATA
from tests.worker.stages.register.conftest import body_points, tre
from worker.stages.assemble.case import assemble_cases
from worker.stages.read.case_data import read_case
from worker.stages.register.result import RegistrationMethod
from worker.stages.register.spatial_registration import (
    SeriesReference,
    read_spatial_registration,
    write_spatial_registration,
)
from worker.stages.register.stage import RegistrationOptions, register_case, write_registration_object

VALIDATE = SHARED_DATA.parent / "tools" / "dicom-validate.sh"


@pytest.fixture(scope="module")
def orn_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_patients(tmp_path_factory.mktemp("stage"), task="orn", size="small")[0]


def _case(folder: Path, work: Path):
    case = assemble_cases(folder, work).cases[0]
    return case, read_case(case)


def _truth(folder: Path) -> TrueTransform:
    return TrueTransform.from_dict(json.loads((folder / "case.json").read_text())["true_transform"])


def _rigid_truth(folder: Path) -> sitk.Euler3DTransform:
    rigid = json.loads((folder / "case.json").read_text())["true_transform"]["rigid"]
    transform = sitk.Euler3DTransform()
    transform.SetCenter(rigid["center"])
    transform.SetMatrix([float(v) for row in rigid["matrix"] for v in row])
    transform.SetTranslation(rigid["translation"])
    return transform


def _write_reg(folder: Path, transform: sitk.Transform, out: Path) -> Path:
    case = assemble_cases(folder, out.parent / "assemble").cases[0]
    headers = [i.header for i in case.followup.instances]
    return write_spatial_registration(
        transform,
        fixed=SeriesReference.from_datasets(headers),
        moving=SeriesReference.from_datasets(i.header for i in case.planning_ct.instances),
        source=headers[0],
        path=out,
    )


def test_same_frame_of_reference_is_the_identity(orn_folder: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(orn_folder, tmp_path / "same-for")
    planning_frame = pydicom.dcmread(next((copy / "planning" / "ct").iterdir())).FrameOfReferenceUID
    for path in (copy / "followup-1").rglob("*.dcm"):
        ds = pydicom.dcmread(path)
        ds.FrameOfReferenceUID = planning_frame
        ds.save_as(path)
    shutil.rmtree(copy / "ground_truth")  # its SEG still names the old frame
    case, data = _case(copy, tmp_path / "work")
    result = register_case(case, data)
    assert result.method is RegistrationMethod.IDENTITY
    assert result.transform.TransformPoint((10.0, -20.0, 30.0)) == (10.0, -20.0, 30.0)
    assert not result.needs_review


def test_supplied_reg_is_used_and_assessed(orn_folder: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(orn_folder, tmp_path / "with-reg")
    _write_reg(copy, _rigid_truth(copy), copy / "reg.dcm")
    case, data = _case(copy, tmp_path / "work")
    result = register_case(case, data)
    assert result.method is RegistrationMethod.REG_OBJECT
    assert not result.needs_review, result.flags
    assert result.qa.metric_after < result.qa.metric_before  # Mattes MI: lower is better
    assert result.qa.body_overlap_after > result.qa.body_overlap_before
    points = body_points(data.followup.image, 50)
    rigid = _rigid_truth(copy)
    expected = np.array([rigid.TransformPoint([float(v) for v in p]) for p in points])
    assert tre(result.transform, lambda _: expected, points).max() < 1e-3


def test_an_implausible_supplied_reg_is_flagged(orn_folder: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(orn_folder, tmp_path / "bad-reg")
    wrong = sitk.Euler3DTransform((0.0, 0.0, -20.0), np.radians(35.0), 0.0, 0.0, (0.0, 90.0, 0.0))
    _write_reg(copy, wrong, copy / "reg.dcm")
    case, data = _case(copy, tmp_path / "work")
    result = register_case(case, data)
    assert result.method is RegistrationMethod.REG_OBJECT
    assert result.needs_review
    assert any("rotation" in flag for flag in result.flags)
    assert any("translation" in flag for flag in result.flags)


def test_unusable_reg_falls_back_to_registration(orn_folder: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(orn_folder, tmp_path / "deformable-reg")
    path = _write_reg(copy, _rigid_truth(copy), copy / "reg.dcm")
    ds = pydicom.dcmread(path)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.66.3"
    ds.save_as(path)
    case, data = _case(copy, tmp_path / "work")
    assert len(case.reg) == 1
    result = register_case(case, data, RegistrationOptions(deformable=False))
    assert result.method is RegistrationMethod.RIGID
    assert any("supplied REG not used" in w for w in data.warnings)
    truth = _truth(copy)
    points = body_points(data.followup.image)
    assert tre(result.transform, truth.apply, points).mean() <= 1.0


@pytest.mark.tools
def test_computed_registration_is_written_as_a_valid_reg(orn_folder: Path, tmp_path: Path) -> None:
    case, data = _case(orn_folder, tmp_path / "work")
    result = register_case(case, data, RegistrationOptions(deformable=False))
    path = write_registration_object(result, case, tmp_path / "out", uid_seed="test")
    assert path is not None
    if shutil.which("dciodvfy") is None:
        pytest.fail("dciodvfy is not installed: run ../shared/tools/install-dicom-tools.sh", pytrace=False)
    check = subprocess.run(["bash", str(VALIDATE), str(path)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    back = read_spatial_registration(
        path, case.followup.first.frame_of_reference_uid, case.planning_ct.first.frame_of_reference_uid
    )
    points = body_points(data.followup.image, 30)
    expected = np.array([result.transform.TransformPoint([float(v) for v in p]) for p in points])
    assert tre(back, lambda _: expected, points).max() < 1e-3
    # The identity and a supplied REG are never written back.
    identity = type(result)(sitk.Transform(3, sitk.sitkIdentity), RegistrationMethod.IDENTITY, result.qa)
    assert write_registration_object(identity, case, tmp_path / "none") is None
