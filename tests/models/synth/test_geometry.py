"""Synthetic patients read back with pydicom and checked in patient coordinates.

The readers here are written from the DICOM rules alone (ImagePositionPatient,
ImageOrientationPatient, PixelSpacing = row spacing \\ column spacing,
GridFrameOffsetVector, DoseGridScaling, the SEG's per-frame plane positions),
not from the generator's own geometry code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from scipy.ndimage import map_coordinates

from models.synth import apply_true_transform, load_case
from models.synth.phantom import tissue_labels
from models.synth.render import TASK_CONTRAST
from models.synth.tissues import appearance_table

TASKS = ("orn", "ce", "crn")


@dataclass
class Volume:
    """A series read back: values (slices, rows, columns) and its geometry."""

    values: np.ndarray
    origin: np.ndarray  # ImagePositionPatient of the first slice
    row_dir: np.ndarray  # IOP[:3]: direction of increasing column index
    col_dir: np.ndarray  # IOP[3:]: direction of increasing row index
    spacing_rc: tuple[float, float]  # PixelSpacing: (row spacing, column spacing)
    z: np.ndarray  # slice positions along the normal
    datasets: list

    def to_patient(self, krc: np.ndarray) -> np.ndarray:
        k, r, c = (krc[:, i] for i in range(3))
        base = self.origin[None, :] + np.outer(c * self.spacing_rc[1], self.row_dir)
        base += np.outer(r * self.spacing_rc[0], self.col_dir)
        base[:, 2] = np.interp(k, np.arange(len(self.z)), self.z)
        return base

    def to_index(self, points: np.ndarray) -> np.ndarray:
        """Fractional (slice, row, column) of patient points (axial series only)."""
        c = (points[:, 0] - self.origin[0]) / self.spacing_rc[1]
        r = (points[:, 1] - self.origin[1]) / self.spacing_rc[0]
        k = np.interp(points[:, 2], self.z, np.arange(len(self.z)), left=-1e9, right=1e9)
        return np.stack([k, r, c], axis=1)

    def sample(self, points: np.ndarray, outside: float) -> np.ndarray:
        return map_coordinates(self.values, self.to_index(points).T, order=1, cval=outside)


def _floats(values) -> np.ndarray:
    return np.array([float(v) for v in values])


def read_series(folder: Path) -> Volume:
    datasets = [pydicom.dcmread(f) for f in sorted(folder.glob("*.dcm"))]
    normal = np.cross(
        _floats(datasets[0].ImageOrientationPatient[:3]), _floats(datasets[0].ImageOrientationPatient[3:])
    )
    datasets.sort(key=lambda d: float(np.dot(_floats(d.ImagePositionPatient), normal)))
    first = datasets[0]
    values = np.stack(
        [
            d.pixel_array * float(getattr(d, "RescaleSlope", 1)) + float(getattr(d, "RescaleIntercept", 0))
            for d in datasets
        ]
    )
    iop = _floats(first.ImageOrientationPatient)
    z = np.array([float(d.ImagePositionPatient[2]) for d in datasets])
    spacing = tuple(float(v) for v in first.PixelSpacing)
    return Volume(values, _floats(first.ImagePositionPatient), iop[:3], iop[3:], spacing, z, datasets)


def read_dose(path: Path) -> tuple[Volume, pydicom.Dataset]:
    d = pydicom.dcmread(path)
    gy = d.pixel_array.astype(np.float64) * float(d.DoseGridScaling)
    origin = _floats(d.ImagePositionPatient)
    z = origin[2] + _floats(d.GridFrameOffsetVector)
    iop = _floats(d.ImageOrientationPatient)
    spacing = tuple(float(v) for v in d.PixelSpacing)
    return Volume(gy, origin, iop[:3], iop[3:], spacing, z, [d]), d


def seg_voxels(path: Path) -> tuple[np.ndarray, float, pydicom.Dataset]:
    """Patient coordinates of every segmented pixel and the voxel volume (mm³)."""
    seg = pydicom.dcmread(path)
    shared = seg.SharedFunctionalGroupsSequence[0]
    measures = shared.PixelMeasuresSequence[0]
    iop = _floats(shared.PlaneOrientationSequence[0].ImageOrientationPatient)
    d_row, d_col = (float(v) for v in measures.PixelSpacing)
    frames = seg.pixel_array.reshape(int(seg.NumberOfFrames), seg.Rows, seg.Columns)
    points = []
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        ipp = _floats(item.PlanePositionSequence[0].ImagePositionPatient)
        r, c = np.nonzero(frame)
        points.append(ipp + np.outer(c * d_col, iop[:3]) + np.outer(r * d_row, iop[3:]))
    return np.concatenate(points), d_row * d_col * float(measures.SliceThickness), seg


@pytest.fixture(scope="module")
def cases(synth_cases: dict[str, Path]) -> dict[str, dict]:
    return {task: load_case(folder) for task, folder in synth_cases.items()}


def test_rtdose_and_rtplan_headers(synth_cases, cases) -> None:
    for task in TASKS:
        folder, case = synth_cases[task], cases[task]
        volume, dose = read_dose(folder / "planning" / "rtdose.dcm")
        assert (dose.DoseUnits, dose.DoseType, dose.DoseSummationType) == ("GY", "PHYSICAL", "PLAN")
        assert dose.BitsAllocated == 32 and dose.FrameIncrementPointer == 0x3004000C
        assert float(dose.GridFrameOffsetVector[0]) == 0.0
        assert volume.values.max() == pytest.approx(case["dose"]["max_gy"], abs=1e-3)
        assert 60.0 <= case["dose"]["max_gy"] <= 70.0
        plan = pydicom.dcmread(folder / "planning" / "rtplan.dcm")
        target = float(plan.DoseReferenceSequence[0].TargetPrescriptionDose)
        assert target == case["clinical"]["prescription_gy"]
        assert plan.FractionGroupSequence[0].NumberOfFractionsPlanned == case["clinical"]["fractions"]
        assert len(plan.BeamSequence) == len(plan.FractionGroupSequence[0].ReferencedBeamSequence)


@pytest.mark.parametrize("task", TASKS)
def test_seg_centroid_and_volume_match_case_json(synth_cases, cases, task) -> None:
    for fu in cases[task]["followups"]:
        points, voxel_mm3, _ = seg_voxels(synth_cases[task] / fu["seg_file"])
        spacing = np.array(fu["grid"]["spacing_mm"])
        np.testing.assert_allclose(
            points.mean(axis=0), fu["lesion"]["centroid_followup_mm"], atol=spacing.max()
        )
        volume_cc = len(points) * voxel_mm3 / 1000.0
        assert volume_cc == pytest.approx(fu["lesion"]["volume_cc"], rel=1e-3)
        assert 0.2 <= volume_cc <= 5.0
        assert volume_cc == pytest.approx(fu["lesion"]["analytic_volume_cc"], rel=0.25)


@pytest.mark.parametrize("task", TASKS)
def test_true_transform_maps_followup_lesion_to_planning_lesion(cases, task) -> None:
    for fu in cases[task]["followups"]:
        mapped = apply_true_transform(fu["true_transform"], np.array(fu["lesion"]["centroid_followup_mm"]))
        voxel_diagonal = float(np.linalg.norm(fu["grid"]["spacing_mm"]))
        assert np.linalg.norm(mapped - fu["lesion"]["centroid_planning_mm"]) < voxel_diagonal


@pytest.mark.parametrize("task", TASKS)
def test_lesion_lies_in_high_dose_region(synth_cases, cases, task) -> None:
    case = cases[task]
    dose, _ = read_dose(synth_cases[task] / "planning" / "rtdose.dcm")
    threshold = case["dose"]["high_dose_threshold_gy"]
    assert threshold == pytest.approx(0.8 * case["dose"]["max_gy"], abs=1e-3)
    assert dose.sample(np.array([case["lesion"]["centroid_planning_mm"]]), 0.0)[0] >= threshold
    for fu in case["followups"]:
        points, _, _ = seg_voxels(synth_cases[task] / fu["seg_file"])
        planning_points = apply_true_transform(fu["true_transform"], points)
        assert dose.sample(planning_points, 0.0).min() >= threshold


def _grid_sample(volume: Volume, step: int = 3) -> np.ndarray:
    """Every ``step``-th voxel index (slice, row, column), shape (N, 3)."""
    k, r, c = np.meshgrid(*(np.arange(0, n, step) for n in volume.values.shape), indexing="ij")
    return np.stack([k.ravel(), r.ravel(), c.ravel()], axis=1).astype(float)


def _mismatch(observed: np.ndarray, points: np.ndarray, contrast: str) -> float:
    """Fraction of voxels more than 150 units from the phantom's tissue value at ``points``."""
    x, y, z = (points[:, i].astype(np.float32) for i in range(3))
    expected = appearance_table(contrast)[tissue_labels(x, y, z)]
    return float(np.mean(np.abs(observed - expected) > 150.0))


def test_planning_ct_matches_the_phantom(synth_cases) -> None:
    ct = read_series(synth_cases["orn"] / "planning" / "ct")
    idx = _grid_sample(ct)
    observed = ct.values[tuple(idx.astype(int).T)]
    # Only partial-volume voxels at tissue edges differ (blur + noise).
    assert _mismatch(observed, ct.to_patient(idx), "ct") < 0.01


@pytest.mark.parametrize("task", TASKS)
def test_followup_matches_the_phantom_through_true_transform(synth_cases, cases, task) -> None:
    # Geometry end to end: follow-up voxel → patient point (from the header) →
    # true transform → analytic anatomy. Rows != columns on every follow-up
    # grid, so a transposed reader fails here too.
    for fu in cases[task]["followups"]:
        image = read_series(synth_cases[task] / fu["image_dir"])
        assert image.values.shape[1] != image.values.shape[2]
        idx = _grid_sample(image)
        points = image.to_patient(idx)
        far = np.linalg.norm(points - fu["lesion"]["centroid_followup_mm"], axis=1) > 30.0
        observed = image.values[tuple(idx[far].astype(int).T)]
        aligned = apply_true_transform(fu["true_transform"], points[far])
        contrast = TASK_CONTRAST[task]
        assert _mismatch(observed, aligned, contrast) < 0.01
        assert _mismatch(observed, points[far], contrast) > 0.03


def test_followup_ct_matches_planning_ct_through_true_transform(synth_cases, cases) -> None:
    # Image to image, as a registration would see it: the planning CT sampled
    # through the true transform resembles the follow-up better than unaligned.
    folder, fu = synth_cases["orn"], cases["orn"]["followups"][0]
    planning = read_series(folder / "planning" / "ct")
    followup = read_series(folder / fu["image_dir"])
    idx = _grid_sample(followup)
    points = followup.to_patient(idx)
    observed = followup.values[tuple(idx.astype(int).T)]
    aligned = planning.sample(apply_true_transform(fu["true_transform"], points), -1000.0)
    unaligned = planning.sample(points, -1000.0)
    assert np.corrcoef(observed, aligned)[0, 1] > np.corrcoef(observed, unaligned)[0, 1]
    assert np.mean(np.abs(observed - aligned)) < 0.9 * np.mean(np.abs(observed - unaligned))


def _truth_values(folder: Path, fu: dict) -> np.ndarray:
    image = read_series(folder / fu["image_dir"])
    points, _, _ = seg_voxels(folder / fu["seg_file"])
    return image.values[tuple(np.rint(image.to_index(points)).astype(int).T)]


def test_ground_truth_shows_the_lesion(synth_cases, cases) -> None:
    orn = _truth_values(synth_cases["orn"], cases["orn"]["followups"][0])
    assert np.median(orn) < 250  # lytic: bone (≥ 320 HU) replaced by soft tissue
    ce = _truth_values(synth_cases["ce"], cases["ce"]["followups"][0])
    assert np.median(ce) > 500  # FLAIR-bright: white matter ≈ 340, grey ≈ 430
    crn = _truth_values(synth_cases["crn"], cases["crn"]["followups"][0])
    assert np.percentile(crn, 90) > 800 and np.percentile(crn, 5) < 350  # bright rim, dark core
