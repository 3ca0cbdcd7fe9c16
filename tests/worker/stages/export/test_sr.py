"""TID 1500 measurement report: readable by highdicom, valid for dciodvfy, pointing at our SEG."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
import SimpleITK as sitk

from tests.conftest import SHARED_DATA
from tests.worker.stages.export.grids import Written, physical_points, sphere, write_grids
from worker.stages.dose_stats import mask_dose_statistics
from worker.stages.export.algorithm import AlgorithmInfo
from worker.stages.export.report import dose_summary
from worker.stages.export.seg import Finding, write_segmentation
from worker.stages.export.source import source_series
from worker.stages.export.sr import SegmentMeasurements, write_measurement_report

ALGORITHM = AlgorithmInfo(model_id="small@0123456789ab", weights_sha256="0123456789ab" + "cd" * 26)
VALIDATE = SHARED_DATA.parent / "tools" / "dicom-validate.sh"


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Written:
    return write_grids(tmp_path_factory.mktemp("sr-grids"))["mr-oblique"]


def _ramp_dose(written: Written) -> sitk.Image:
    """Dose rising 1 Gy per mm along LPS z around 60 Gy at the lesion centre plane."""
    z = physical_points(written.volume.image)[..., 2]
    dose = sitk.GetImageFromArray((60.0 + (z - 22.0)).astype(np.float32))
    dose.CopyInformation(written.volume.image)
    return dose


def _files(written: Written, tmp_path: Path) -> tuple[Path, Path, SegmentMeasurements]:
    mask = sphere(written.volume, 3.0)
    seg = write_segmentation(source_series(written.volume), [Finding("crn", mask)], ALGORITHM)
    stats = mask_dose_statistics(mask, _ramp_dose(written))
    measured = SegmentMeasurements("crn", 1, stats.volume_cc, dose_summary(stats))
    sr = write_measurement_report(seg, [measured], ALGORITHM)
    seg_path, sr_path = tmp_path / "seg.dcm", tmp_path / "sr.dcm"
    seg.save_as(seg_path)
    sr.save_as(sr_path)
    return seg_path, sr_path, measured


def test_report_reads_back_with_the_measurements(written: Written, tmp_path: Path) -> None:
    seg_path, sr_path, measured = _files(written, tmp_path)
    sr = hd.sr.srread(sr_path)
    groups = hd.sr.MeasurementReport.from_sequence([sr]).get_volumetric_roi_measurement_groups()
    assert len(groups) == 1
    group = groups[0]
    assert group.referenced_segment.referenced_sop_instance_uid == hd.seg.segread(seg_path).SOPInstanceUID
    values = {
        (m.name.meaning, m.derivation.meaning if m.derivation else None): m.value
        for m in group.get_measurements()
    }
    assert values[("Volume", None)] == pytest.approx(measured.volume_cc)
    assert measured.dose is not None
    assert values[("Absorbed Dose", "Mean")] == pytest.approx(measured.dose.dmean_gy)
    # A symmetric sphere in a linear ramp: mean dose = dose at the centre, max ≈ centre + radius.
    radius = (3 * 3000 / (4 * np.pi)) ** (1 / 3)
    assert measured.dose.dmean_gy == pytest.approx(60.0, abs=0.2)
    assert values[("Absorbed Dose", "Maximum")] == pytest.approx(60.0 + radius, abs=1.0)
    # The hottest 2 cc of 3 cc reach below the centre plane: D2cc lies between the minimum and the mean.
    assert measured.dose.dmin_gy < values[("Dose to the hottest 2 cc", None)] < measured.dose.dmean_gy
    assert values[("Volume receiving at least 60 Gy", None)] == pytest.approx(50.0, abs=3.0)
    assert sr.CompletionFlag == "PARTIAL" and sr.VerificationFlag == "UNVERIFIED"


@pytest.mark.tools
def test_report_passes_dciodvfy(written: Written, tmp_path: Path) -> None:
    if shutil.which("dciodvfy") is None:
        pytest.fail("dciodvfy is not installed (.ci/run installs it)", pytrace=False)
    _, sr_path, _ = _files(written, tmp_path)
    done = subprocess.run(["bash", str(VALIDATE), "-v", str(sr_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
