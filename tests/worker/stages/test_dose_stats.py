"""Dose statistics: Nelms phantom structures against analytic DVH answers; mask sampling."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from tests.conftest import SHARED_DATA
from worker.errors import InputError
from worker.stages.dose_stats import (
    contour_dose_statistics,
    cumulative_dvh,
    mask_dose_statistics,
    statistics,
)
from worker.stages.read.rtdose import read_rtdose

NELMS = SHARED_DATA / "nelms-dvh-phantom"
R = 12.0  # every Nelms shape is 24 mm across and 24 mm long
STEP = 0.005  # mm, for the analytic integrals


def _chord_area(offset: np.ndarray, radius: np.ndarray, length: np.ndarray) -> np.ndarray:
    """Area of a plane cutting a cylinder of ``radius`` parallel to its axis at ``offset``."""
    return 2.0 * np.sqrt(np.clip(radius**2 - offset**2, 0.0, None)) * length


def _cone_chord_area(offset: np.ndarray, apex: float, base: float) -> np.ndarray:
    """Area of a plane parallel to a cone's axis, ``offset`` from it (cone radius = 12 at base)."""
    s = np.linspace(apex, base, 4001)[None, :]
    radius = np.abs(s - apex) / 2.0
    width = 2.0 * np.sqrt(np.clip(radius**2 - offset[:, None] ** 2, 0.0, None))
    return np.trapezoid(width, s, axis=1) * np.sign(base - apex)


# Cross-sectional area A(t) of each shape along the gradient axis t (y for AP, z for SI), and
# the dose D(t): AP D = 10 − y, SI D = z + 10 (Gy, per fraction).
def _area(shape: str, gradient: str, t: np.ndarray) -> np.ndarray:
    along_y = gradient == "AP"
    centre = -6.0 if along_y else 6.0
    table = {
        "Sphere": lambda: np.pi * np.clip(R**2 - (t - centre) ** 2, 0.0, None),
        "Cylinder": lambda: _chord_area(t + 6.0, R, 24.0) if along_y else np.full_like(t, np.pi * R**2),
        "Cone": lambda: _cone_chord_area(t + 6.0, -6.0, 18.0) if along_y else np.pi * ((t + 6.0) / 2.0) ** 2,
        "RtCylinder": lambda: np.full_like(t, np.pi * R**2) if along_y else _chord_area(t - 6.0, R, 24.0),
        "RtCone": lambda: (
            np.pi * ((6.0 - t) / 2.0) ** 2 if along_y else _cone_chord_area(t - 6.0, 6.0, -18.0)
        ),
    }
    return table[shape]()


def _analytic(shape: str, gradient: str) -> dict[str, float]:
    t = np.arange(-18.0, 18.0 + STEP, STEP) if gradient == "AP" else np.arange(-6.0, 30.0 + STEP, STEP)
    t = t[(t >= -18.0) & (t <= 6.0)] if gradient == "AP" else t[(t >= -6.0) & (t <= 18.0)]
    area = _area(shape, gradient, t)
    dose = 10.0 - t if gradient == "AP" else t + 10.0
    order = np.argsort(-dose)
    cumulative = np.cumsum(area[order]) * STEP
    volume = cumulative[-1]

    def dose_at(fraction: float) -> float:
        return float(np.interp(fraction * volume, cumulative, dose[order]))

    return {
        "volume_cc": volume / 1000.0,
        "mean_gy": float(np.sum(area * dose) * STEP / volume),
        "d98_gy": dose_at(0.98),
        "d50_gy": dose_at(0.50),
        "d2_gy": dose_at(0.02),
        "max_gy": 28.0,
        "min_gy": 4.0,
    }


@pytest.fixture(scope="module")
def nelms_doses() -> dict[str, sitk.Image]:
    return {
        "AP": read_rtdose(NELMS / "RTDOSE/Linear_AntPost_3mm_Aligned.dcm").image,
        "SI": read_rtdose(NELMS / "RTDOSE/Linear_SupInf_3mm_Aligned.dcm").image,
    }


def _contours(shape: str) -> list[np.ndarray]:
    ds = pydicom.dcmread(NELMS / f"RTSTRUCT/{shape}_30_0.dcm")
    roi = ds.ROIContourSequence[-1]
    return [np.asarray(c.ContourData, dtype=float).reshape(-1, 3) for c in roi.ContourSequence]


# Where the 3 mm contour stack cannot carry the true shape, the figure is excluded here and the
# reason is in docs/dvh-validation.md: the RtCone's poles are single points on the outermost
# planes, so its Dmin/Dmax along SI are under-sampled by 1 Gy.
DOCUMENTED_EXCEPTIONS = {("RtCone", "SI", "max_gy"), ("RtCone", "SI", "min_gy")}
SHAPES = ["Sphere", "Cylinder", "Cone", "RtCylinder", "RtCone"]


@pytest.mark.parametrize("gradient", ["AP", "SI"])
@pytest.mark.parametrize("shape", SHAPES)
def test_nelms_dvh_agrees_with_the_analytic_answer(nelms_doses, shape: str, gradient: str) -> None:
    ours = contour_dose_statistics(_contours(shape), nelms_doses[gradient])
    truth = _analytic(shape, gradient)
    for name in ("mean_gy", "d98_gy", "d50_gy", "d2_gy", "max_gy", "min_gy"):
        if (shape, gradient, name) in DOCUMENTED_EXCEPTIONS:
            continue
        value, expected = getattr(ours, name), truth[name]
        assert abs(value - expected) <= max(0.5, 0.02 * expected), (shape, gradient, name, value, expected)
    # Volume: the contour stack loses a little of every curved cap (≤ 4 %, see the notes).
    assert ours.volume_cc == pytest.approx(truth["volume_cc"], rel=0.04)


def test_analytic_reference_is_itself_right() -> None:
    """The sphere's analytic figures in closed form: V = 4/3 π R³, mean = dose at the centre."""
    truth = _analytic("Sphere", "AP")
    assert truth["volume_cc"] == pytest.approx(4.0 / 3.0 * np.pi * R**3 / 1000.0, rel=1e-4)
    assert truth["mean_gy"] == pytest.approx(16.0, abs=1e-3)
    assert _analytic("Cone", "SI")["mean_gy"] == pytest.approx(22.0, abs=0.01)  # centroid 3/4 up


def _grid(size=(20, 16, 12), spacing=(2.0, 2.5, 3.0), origin=(-20.0, -20.0, -18.0), direction=None):
    image = sitk.Image(size, sitk.sitkUInt8)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    return image


def _linear_dose(reference: sitk.Image) -> sitk.Image:
    """Dose = 30 + x + 0.5 y (Gy) on a 1 mm grid around ``reference``."""
    dose = sitk.Image((80, 80, 80), sitk.sitkFloat64)
    dose.SetOrigin((-40.0, -40.0, -40.0))
    idx = np.indices((80, 80, 80)).astype(float)  # z, y, x
    values = 30.0 + (idx[2] - 40.0) + 0.5 * (idx[1] - 40.0)
    array = sitk.GetImageFromArray(values)
    array.CopyInformation(dose)
    return array


def test_box_mask_mean_is_the_dose_at_its_centroid_and_volume_exact() -> None:
    mask = _grid()
    array = np.zeros((12, 16, 20), dtype=np.uint8)
    array[3:7, 4:10, 5:12] = 1  # z, y, x voxels
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(mask)
    stats = mask_dose_statistics(image, _linear_dose(mask))
    # Voxel centres x = −20 + 2i, i = 5…11 (mean −4, edges −11…3);
    # y = −20 + 2.5j, j = 4…9 (mean −3.75, edges −11.25…3.75).
    assert stats.volume_cc == pytest.approx(4 * 6 * 7 * 2.0 * 2.5 * 3.0 / 1000.0)
    assert stats.mean_gy == pytest.approx(30.0 - 4.0 + 0.5 * -3.75, abs=1e-6)
    assert stats.max_gy == pytest.approx(30.0 + 3.0 + 0.5 * 3.75, abs=0.6)
    assert stats.min_gy == pytest.approx(30.0 - 11.0 + 0.5 * -11.25, abs=0.6)


def test_a_transform_moves_the_dose_sampled() -> None:
    mask = _grid()
    array = np.zeros((12, 16, 20), dtype=np.uint8)
    array[5, 8, 10] = 1
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(mask)
    shift = sitk.TranslationTransform(3, (4.0, 0.0, 0.0))  # mask point x → dose point x + 4
    plain = mask_dose_statistics(image, _linear_dose(mask))
    moved = mask_dose_statistics(image, _linear_dose(mask), shift)
    assert moved.mean_gy - plain.mean_gy == pytest.approx(4.0, abs=1e-6)


def test_tiny_structures_get_enough_samples() -> None:
    """One voxel of a 3 mm grid still yields thousands of dose samples (partial volume)."""
    mask = _grid(spacing=(3.0, 3.0, 3.0))
    array = np.zeros((12, 16, 20), dtype=np.uint8)
    array[5, 8, 10] = 1
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(mask)
    stats = mask_dose_statistics(image, _linear_dose(mask))
    assert stats.volume_cc == pytest.approx(0.027)
    assert stats.max_gy - stats.min_gy == pytest.approx(1.5 * 3.0 * (1 - 1 / 8), abs=1e-6)


def test_oblique_mask_grid() -> None:
    angle = np.radians(30.0)
    direction = (np.cos(angle), -np.sin(angle), 0.0, np.sin(angle), np.cos(angle), 0.0, 0.0, 0.0, 1.0)
    mask = _grid(origin=(-5.0, -5.0, -10.0), direction=direction)
    array = np.zeros((12, 16, 20), dtype=np.uint8)
    array[2:5, 3:6, 4:8] = 1
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(mask)
    centroid = np.mean(
        [image.TransformIndexToPhysicalPoint((int(x), int(y), int(z))) for z, y, x in np.argwhere(array)],
        axis=0,
    )
    stats = mask_dose_statistics(image, _linear_dose(mask))
    assert stats.mean_gy == pytest.approx(30.0 + centroid[0] + 0.5 * centroid[1], abs=1e-6)


def test_statistics_definitions() -> None:
    doses = np.linspace(0.0, 99.0, 100)  # 100 samples of 100 mm³ = 10 cc
    stats = statistics(doses, 100.0)
    assert stats.volume_cc == pytest.approx(10.0)
    # Each sample stands for its volume; 2 cc ends between the 20th (80 Gy) and 21st (79 Gy) hottest.
    assert stats.d2cc_gy == pytest.approx(79.5)
    assert stats.d98_gy == pytest.approx(1.5)
    assert stats.d50_gy == pytest.approx(49.5)
    assert stats.v_percent == {"V50Gy": 50.0, "V60Gy": 40.0, "V70Gy": 30.0}
    assert stats.v_cc["V60Gy"] == pytest.approx(4.0)
    assert statistics(doses[:10], 100.0).d2cc_gy is None  # 1 cc structure


def test_cumulative_dvh_is_monotone_from_100_percent() -> None:
    dvh = cumulative_dvh(np.array([1.0, 2.0, 3.0, 4.0]), step_gy=0.5)
    assert dvh[0] == (0.0, 100.0)
    assert [v for _, v in dvh] == sorted((v for _, v in dvh), reverse=True)
    assert dict(dvh)[2.5] == 50.0


def test_empty_structures_are_refused() -> None:
    mask = _grid()
    with pytest.raises(InputError, match="empty"):
        mask_dose_statistics(mask, _linear_dose(mask))
    with pytest.raises(InputError, match="three points"):
        contour_dose_statistics([np.zeros((2, 3))], _linear_dose(mask))
