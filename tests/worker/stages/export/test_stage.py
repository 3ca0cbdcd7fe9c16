"""The export stage end to end on a synthetic patient: every file written, valid and consistent."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import jsonschema
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from PIL import Image

from tests.conftest import SHARED_DATA
from worker.stages.export.algorithm import AlgorithmInfo
from worker.stages.export.stage import OUTPUT_FILES, ExportInputs, export_results
from worker.stages.read.rtstruct import read_rtstruct_masks
from worker.stages.read.seg import read_seg_masks

ALGORITHM = AlgorithmInfo(model_id="small@0123456789ab", weights_sha256="0123456789ab" + "cd" * 26)
VALIDATE = SHARED_DATA.parent / "tools" / "dicom-validate.sh"
SCHEMA = Path(__file__).resolve().parents[4] / "schemas" / "report.schema.json"


@pytest.fixture(scope="module")
def exported(export_orn_case, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    case = export_orn_case
    inputs = ExportInputs(
        task="orn",
        followup=case.data.followup,
        lesion_mask=case.lesion,
        prepared=case.prepared,
        algorithm=ALGORITHM,
        patient_alias="pt-test",
        study_date=case.study_date,
        followup_description=case.series_description,
        timings={"register": 1.5, "infer": 0.7},
    )
    return case, export_results(inputs, tmp_path_factory.mktemp("export") / "job-1")


def test_every_output_is_written_and_named_in_the_report(exported) -> None:  # type: ignore[no-untyped-def]
    _, files = exported
    assert sorted(p.name for p in files.folder.iterdir()) == sorted(OUTPUT_FILES.values())
    document = json.loads(files.paths["report"].read_text())
    jsonschema.validate(document, json.loads(SCHEMA.read_text()))
    assert document["outputs"] == {k: v for k, v in OUTPUT_FILES.items() if k != "report"}
    assert set(document["timings_s"]) == {"register", "infer", "export"}
    assert Image.open(files.paths["preview"]).size[0] >= 1000


def test_outputs_agree_with_the_mask_and_each_other(exported) -> None:  # type: ignore[no-untyped-def]
    case, files = exported
    truth = sitk.GetArrayFromImage(case.lesion).astype(bool)
    (seg_mask,) = read_seg_masks(files.paths["seg"], case.data.followup).values()
    assert np.array_equal(seg_mask, truth)
    masks = read_rtstruct_masks(files.paths["rtstruct"], case.data.followup).masks
    assert np.array_equal(masks["ORN_AI"], truth)
    assert np.array_equal(masks["HighDose_AI"], case.prepared.region.mask)
    sr = hd.sr.srread(files.paths["sr"])
    (group,) = hd.sr.MeasurementReport.from_sequence([sr]).get_volumetric_roi_measurement_groups()
    volume = next(m.value for m in group.get_measurements() if m.name.meaning == "Volume")
    assert volume == pytest.approx(files.report.lesion.volume_cc)
    assert (
        group.referenced_segment.referenced_sop_instance_uid
        == pydicom.dcmread(files.paths["seg"]).SOPInstanceUID
    )
    # The three DICOM objects belong to the follow-up's patient, study and frame of reference.
    followup = pydicom.dcmread(case.data.followup.frames[0].path, stop_before_pixels=True)
    for name in ("seg", "rtstruct", "sr"):
        ds = pydicom.dcmread(files.paths[name])
        assert (ds.PatientID, ds.StudyInstanceUID) == (followup.PatientID, followup.StudyInstanceUID)


def test_report_keeps_patient_identifiers_out(exported) -> None:  # type: ignore[no-untyped-def]
    case, files = exported
    text = files.paths["report"].read_text()
    for identifier in (case.patient_name, case.patient_id, case.birth_date):
        assert identifier not in text


@pytest.mark.tools
def test_dicom_outputs_pass_dciodvfy(exported) -> None:  # type: ignore[no-untyped-def]
    _, files = exported
    if shutil.which("dciodvfy") is None:
        pytest.fail("dciodvfy is not installed (.ci/run installs it)", pytrace=False)
    paths = [str(files.paths[name]) for name in ("seg", "rtstruct", "sr")]
    done = subprocess.run(["bash", str(VALIDATE), "-v", *paths], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
