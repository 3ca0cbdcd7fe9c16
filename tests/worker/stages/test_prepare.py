"""Register → dose on the follow-up → high-dose region, end to end on synthetic patients.

The synthetic lesions are placed inside the planning high-dose region (≥ 0.8·Dmax), so a
correct chain puts the ground-truth lesion inside r on the follow-up grid.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from models.synth import write_synthetic_patients
from worker.errors import PromptError
from worker.stages.assemble.case import assemble_cases
from worker.stages.dose_stats import mask_dose_statistics
from worker.stages.prepare import prepare_case
from worker.stages.read.case_data import read_case
from worker.stages.read.seg import read_seg_masks


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("prepare")
    write_synthetic_patients(root, task="all", size="small", seed=5)
    return root


@pytest.mark.parametrize("task", ["orn", "ce", "crn"])
def test_ground_truth_lesion_lies_in_the_high_dose_region(
    synth_root: Path, task: str, tmp_path: Path
) -> None:
    folder = synth_root / f"{task}-000"
    truth = json.loads((folder / "case.json").read_text())
    case = assemble_cases(folder, tmp_path).cases[0]
    data = read_case(case)
    prepared = prepare_case(case, data)
    assert not prepared.registration.needs_review, prepared.registration.flags
    assert prepared.dose.coverage_percent > 20.0
    # The mapped dose keeps the planning maximum (to interpolation) and r is where it is high.
    assert prepared.dose.max_gy == pytest.approx(truth["dose"]["max_gy"], rel=0.03)
    lesion = next(iter(read_seg_masks(case.seg[0].files[0], data.followup).values()))
    # A 2 mm margin absorbs the registration error at the lesion's edge.
    spacing = np.asarray(data.followup.image.GetSpacing())[::-1]
    near_r = ndimage.distance_transform_edt(~prepared.region.mask, sampling=spacing) <= 2.0
    assert near_r[lesion].mean() >= 0.95
    # Dose in the lesion, through the same transform, is above the high-dose threshold on average.
    mask = sitk.GetImageFromArray(lesion.astype(np.uint8))
    mask.CopyInformation(data.followup.image)
    stats = mask_dose_statistics(mask, prepared.dose.image)
    assert stats.mean_gy >= truth["dose"]["high_dose_threshold_gy"] * 0.97
    voxel_dose = sitk.GetArrayFromImage(prepared.dose.image)[prepared.region.mask]
    assert voxel_dose.min() >= prepared.region.threshold_gy
    assert prepared.region_dose.mean_gy >= prepared.region.threshold_gy
    assert prepared.region.volume_cc > stats.volume_cc
    assert prepared.warnings == []


def test_tau_one_leaves_no_usable_region(synth_root: Path, tmp_path: Path) -> None:
    case = assemble_cases(synth_root / "orn-000", tmp_path).cases[0]
    with pytest.raises(PromptError, match="cannot frame a 3D prompt"):
        prepare_case(case, read_case(case), tau=1.0)
