"""Segmentation metrics: analytic spheres, MONAI as the reference, empty masks, spacing, cropping."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest
import torch
from monai.metrics import (
    compute_average_surface_distance,
    compute_dice,
    compute_hausdorff_distance,
    compute_iou,
)
from scipy import ndimage

from models.metrics import METRIC_NAMES, SegmentationMetrics, segmentation_metrics

# MONAI's own surface-distance code passes an argument it has deprecated; nothing this file can change.
pytestmark = pytest.mark.filterwarnings("ignore:.*always_return_as_numpy.*:FutureWarning")

# Coarse slices, fine in-plane pixels: the anisotropy of a head-and-neck CT.
SPACING = (2.0, 0.8, 0.8)
VOXEL_DIAGONAL_MM = math.hypot(*SPACING)
SPHERE_GRID = (25, 60, 60)


def _sphere(radius_mm: float, centre_mm: Sequence[float], shape: Sequence[int] = SPHERE_GRID) -> np.ndarray:
    """Voxels whose centre lies in the ball; coordinates in mm from the grid's centre."""
    axes = [(np.arange(n) - (n - 1) / 2) * s - c for n, s, c in zip(shape, SPACING, centre_mm, strict=True)]
    z, y, x = np.meshgrid(*axes, indexing="ij")
    return np.asarray(z**2 + y**2 + x**2 <= radius_mm**2)


def _lens_volume(radius_mm: float, offset_mm: float) -> float:
    """Volume shared by two balls of the same radius whose centres are ``offset_mm`` apart."""
    return math.pi * (4 * radius_mm + offset_mm) * (2 * radius_mm - offset_mm) ** 2 / 12


def _shifted_spheres(radius_mm: float, offset_mm: float, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Two balls ``offset_mm`` apart along ``axis``, placed symmetrically about the grid centre."""
    centre = [0.0, 0.0, 0.0]
    centre[axis] = offset_mm / 2
    return _sphere(radius_mm, centre), _sphere(radius_mm, [-c for c in centre])


# ---------------------------------------------------------------------------------------------
# Analytic geometry


@pytest.mark.parametrize(("offset_mm", "axis"), [(8.0, 0), (8.0, 1), (12.0, 2)])
def test_overlap_of_shifted_spheres_matches_the_lens_volume(offset_mm: float, axis: int) -> None:
    radius_mm = 15.0
    prediction, truth = _shifted_spheres(radius_mm, offset_mm, axis)

    metrics = segmentation_metrics(prediction, truth, SPACING)

    sphere_mm3 = 4 / 3 * math.pi * radius_mm**3
    lens_mm3 = _lens_volume(radius_mm, offset_mm)
    # A 15 mm ball on this grid is ~1700 voxels across its surface layer; counting voxel centres
    # misplaces well under 1 % of its volume, so 2 % (volume) and 3 % (ratios of two such counts)
    # are discretisation error, not a loose test.
    assert metrics.truth_cc == pytest.approx(sphere_mm3 / 1000, rel=0.02)
    assert metrics.predicted_cc == pytest.approx(sphere_mm3 / 1000, rel=0.02)
    assert metrics.dice == pytest.approx(lens_mm3 / sphere_mm3, rel=0.03)
    assert metrics.iou == pytest.approx(lens_mm3 / (2 * sphere_mm3 - lens_mm3), rel=0.03)
    # Equal volumes: precision and recall both equal the shared fraction, which is the Dice.
    assert metrics.precision == pytest.approx(metrics.dice, rel=0.01)
    assert metrics.recall == pytest.approx(metrics.dice, rel=0.01)


@pytest.mark.parametrize(("offset_mm", "axis"), [(8.0, 0), (8.0, 1), (12.0, 2)])
def test_surface_distances_of_shifted_spheres(offset_mm: float, axis: int) -> None:
    prediction, truth = _shifted_spheres(15.0, offset_mm, axis)

    metrics = segmentation_metrics(prediction, truth, SPACING)

    # The offset is a whole number of voxels, so one discrete ball is an exact translate of the
    # other: every surface voxel has a partner on the other surface exactly offset_mm away, and
    # no distance exceeds it. On continuous spheres the distance from a point of one sphere to
    # the other is uniform on [0, offset] (Archimedes' hat-box theorem), so the 95th percentile
    # is 0.95 offset and the mean offset / 2; the voxel surfaces may stray by about a voxel.
    assert 0.95 * offset_mm - VOXEL_DIAGONAL_MM <= metrics.hd95_mm <= offset_mm + 1e-9
    assert metrics.assd_mm == pytest.approx(offset_mm / 2, abs=VOXEL_DIAGONAL_MM)


@pytest.mark.parametrize(("inner_mm", "outer_mm"), [(10.0, 14.0), (9.0, 15.0)])
def test_surface_distances_of_concentric_spheres_are_the_gap(inner_mm: float, outer_mm: float) -> None:
    inner, outer = _sphere(inner_mm, (0, 0, 0)), _sphere(outer_mm, (0, 0, 0))

    metrics = segmentation_metrics(inner, outer, SPACING)

    # Every point of either sphere is exactly (outer - inner) from the other one; surface voxels
    # sit up to one voxel inside their sphere, hence the tolerance of one voxel diagonal.
    gap_mm = outer_mm - inner_mm
    assert metrics.hd95_mm == pytest.approx(gap_mm, abs=VOXEL_DIAGONAL_MM)
    assert metrics.assd_mm == pytest.approx(gap_mm, abs=VOXEL_DIAGONAL_MM)
    assert metrics.precision == 1.0  # the inner ball lies wholly inside the outer one
    assert metrics.recall == pytest.approx((inner_mm / outer_mm) ** 3, rel=0.03)


def test_identical_masks_agree_perfectly() -> None:
    mask = _sphere(9.0, (2.0, -3.2, 1.6))

    metrics = segmentation_metrics(mask, mask.copy(), SPACING)

    assert (metrics.dice, metrics.iou, metrics.precision, metrics.recall) == (1.0, 1.0, 1.0, 1.0)
    assert (metrics.hd95_mm, metrics.assd_mm) == (0.0, 0.0)
    assert metrics.predicted_cc == metrics.truth_cc == pytest.approx(mask.sum() * np.prod(SPACING) / 1000)


# ---------------------------------------------------------------------------------------------
# MONAI as the reference


def _ellipsoid_union(rng: np.random.Generator, shape: Sequence[int], count: int) -> np.ndarray:
    """A few random ellipsoids (in voxel units) merged into one irregular blob."""
    index = np.indices(shape, dtype=np.float64)
    mask = np.zeros(shape, dtype=bool)
    for _ in range(count):
        centre = rng.uniform(0.2, 0.8, size=3) * np.asarray(shape)
        semi_axes = rng.uniform(0.1, 0.3, size=3) * np.asarray(shape)
        scaled = sum(((index[a] - centre[a]) / semi_axes[a]) ** 2 for a in range(3))
        mask |= scaled <= 1.0
    return mask


def _blob_pair(seed: int, shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """A truth blob and a prediction that is mostly it, grown and shrunk in places, plus a stray blob."""
    rng = np.random.default_rng(seed)
    truth = _ellipsoid_union(rng, shape, count=3)
    prediction = ndimage.binary_dilation(truth, iterations=2) & ~_ellipsoid_union(rng, shape, count=2)
    return prediction | _ellipsoid_union(rng, shape, count=1), truth


def _monai_scores(prediction: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """MONAI's numbers for one single-channel case: (batch, channel, *spatial), background kept."""
    y_pred = torch.from_numpy(prediction[None, None].astype(np.float32))
    y = torch.from_numpy(truth[None, None].astype(np.float32))
    spacing_list = list(spacing)
    return {
        "dice": float(compute_dice(y_pred, y, include_background=True)),
        "iou": float(compute_iou(y_pred, y, include_background=True)),
        "hd95_mm": float(
            compute_hausdorff_distance(
                y_pred, y, include_background=True, percentile=95, spacing=spacing_list
            )
        ),
        "assd_mm": float(
            compute_average_surface_distance(
                y_pred, y, include_background=True, symmetric=True, spacing=spacing_list
            )
        ),
    }


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_agrees_with_monai_on_irregular_blobs(seed: int) -> None:
    spacing = (2.5, 0.7, 0.9)
    prediction, truth = _blob_pair(seed, shape=(24, 40, 36))

    ours = segmentation_metrics(prediction, truth, spacing).to_dict()
    theirs = _monai_scores(prediction, truth, spacing)

    # MONAI measures distances in float32 (KD-tree distances cast down, torch.quantile in float32),
    # ours are float64: agreement to float32 precision is exact agreement.
    for name, value in theirs.items():
        assert ours[name] == pytest.approx(value, rel=1e-6, abs=1e-6), name


def test_agrees_with_monai_when_masks_touch_the_array_edge() -> None:
    # Blobs cut by the array's faces: both sides must count the faces as surface.
    spacing = (3.0, 0.6, 0.6)
    prediction, truth = _blob_pair(7, shape=(24, 40, 36))
    prediction, truth = prediction[6:, :25, 10:], truth[6:, :25, 10:]
    assert truth[0].any() and truth[:, -1].any() and prediction[:, :, 0].any()

    ours = segmentation_metrics(prediction, truth, spacing).to_dict()
    theirs = _monai_scores(prediction, truth, spacing)

    for name, value in theirs.items():
        assert ours[name] == pytest.approx(value, rel=1e-6, abs=1e-6), name


def test_agrees_with_monai_when_masks_do_not_overlap() -> None:
    spacing = (2.0, 0.8, 0.8)
    prediction = _sphere(5.0, (-12.0, 0.0, 6.0))
    truth = _sphere(6.0, (10.0, 4.0, -8.0))

    ours = segmentation_metrics(prediction, truth, spacing)
    theirs = _monai_scores(prediction, truth, spacing)

    assert ours.dice == ours.iou == ours.precision == ours.recall == 0.0
    assert ours.hd95_mm == pytest.approx(theirs["hd95_mm"], rel=1e-6)
    assert ours.assd_mm == pytest.approx(theirs["assd_mm"], rel=1e-6)


# ---------------------------------------------------------------------------------------------
# Empty masks


def _grid_diagonal_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    return math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing, strict=True)))


def test_both_masks_empty_is_perfect_agreement() -> None:
    empty = np.zeros((5, 6, 7), dtype=bool)

    metrics = segmentation_metrics(empty, empty, SPACING)

    assert metrics == SegmentationMetrics(
        dice=1.0, iou=1.0, precision=1.0, recall=1.0, hd95_mm=0.0, assd_mm=0.0, predicted_cc=0.0, truth_cc=0.0
    )


def test_empty_prediction_scores_zero_overlap_and_the_grid_diagonal() -> None:
    shape, spacing = (5, 6, 7), (3.0, 0.5, 1.25)
    truth = np.zeros(shape, dtype=bool)
    truth[1:3, 2:4, 2:5] = True

    metrics = segmentation_metrics(np.zeros(shape, dtype=bool), truth, spacing)

    diagonal_mm = math.sqrt(15**2 + 3**2 + 8.75**2)  # the array is 15 x 3 x 8.75 mm
    assert _grid_diagonal_mm(shape, spacing) == pytest.approx(diagonal_mm)
    assert metrics.to_dict() == pytest.approx(
        {
            "dice": 0.0,
            "iou": 0.0,
            "precision": 0.0,
            "recall": 0.0,
            "hd95_mm": diagonal_mm,
            "assd_mm": diagonal_mm,
            "predicted_cc": 0.0,
            "truth_cc": 12 * 3.0 * 0.5 * 1.25 / 1000,
        }
    )


def test_empty_truth_scores_zero_overlap_and_the_grid_diagonal() -> None:
    shape, spacing = (4, 9, 3), (2.0, 0.8, 0.8)
    prediction = np.zeros(shape, dtype=np.uint8)
    prediction[0, 0, 0] = 1

    metrics = segmentation_metrics(prediction, np.zeros(shape, dtype=np.uint8), spacing)

    assert metrics.to_dict() == pytest.approx(
        {
            "dice": 0.0,
            "iou": 0.0,
            "precision": 0.0,
            "recall": 0.0,
            "hd95_mm": _grid_diagonal_mm(shape, spacing),
            "assd_mm": _grid_diagonal_mm(shape, spacing),
            "predicted_cc": 2.0 * 0.8 * 0.8 / 1000,
            "truth_cc": 0.0,
        }
    )


# ---------------------------------------------------------------------------------------------
# Spacing, cropping, input checks


def test_doubling_the_spacing_doubles_distances_and_multiplies_volumes_by_eight() -> None:
    prediction, truth = _blob_pair(5, shape=(20, 30, 28))
    spacing = (2.5, 0.7, 0.9)

    base = segmentation_metrics(prediction, truth, spacing)
    doubled = segmentation_metrics(prediction, truth, [2 * s for s in spacing])

    assert base.hd95_mm > 0 and base.assd_mm > 0
    assert doubled.hd95_mm == pytest.approx(2 * base.hd95_mm, rel=1e-12)
    assert doubled.assd_mm == pytest.approx(2 * base.assd_mm, rel=1e-12)
    assert doubled.predicted_cc == pytest.approx(8 * base.predicted_cc, rel=1e-12)
    assert doubled.truth_cc == pytest.approx(8 * base.truth_cc, rel=1e-12)
    for name in ("dice", "iou", "precision", "recall"):
        assert getattr(doubled, name) == getattr(base, name)


def test_spacing_follows_the_array_axes() -> None:
    # A one-voxel shift along axis 0 is 3 mm with this spacing, and would be 1 mm if the spacing
    # were read in the reverse (x, y, z) order.
    truth = np.zeros((10, 10, 10), dtype=bool)
    truth[3:6, 3:6, 3:6] = True
    prediction = np.roll(truth, 1, axis=0)

    metrics = segmentation_metrics(prediction, truth, (3.0, 1.0, 1.0))

    assert metrics.hd95_mm == pytest.approx(3.0)


def _full_volume_distances(
    prediction: np.ndarray, truth: np.ndarray, spacing: Sequence[float]
) -> tuple[float, float]:
    """HD95 and ASSD straight from the definition on the whole array, with no cropping."""
    surfaces = [mask ^ ndimage.binary_erosion(mask) for mask in (prediction, truth)]
    directed = [
        ndimage.distance_transform_edt(~to_surface, sampling=spacing)[from_surface]
        for from_surface, to_surface in (surfaces, surfaces[::-1])
    ]
    hd95 = max(np.percentile(distances, 95) for distances in directed)
    return float(hd95), float(np.concatenate(directed).mean())


@pytest.mark.parametrize("placement", ["low corner", "middle", "high corner"])
def test_cropping_to_the_masks_changes_no_number(placement: str) -> None:
    spacing = (2.5, 0.7, 0.9)
    tight_prediction, tight_truth = _blob_pair(11, shape=(16, 24, 20))
    assert tight_truth[0].any() or tight_prediction[0].any()  # the blobs reach the tight array's faces
    large_shape = (60, 90, 80)
    starts = {
        "low corner": (0, 0, 0),
        "middle": (20, 30, 25),
        "high corner": tuple(big - n for n, big in zip(tight_truth.shape, large_shape, strict=True)),
    }[placement]
    where = tuple(slice(start, start + n) for start, n in zip(starts, tight_truth.shape, strict=True))
    large_prediction = np.zeros(large_shape, dtype=bool)
    large_truth = np.zeros(large_shape, dtype=bool)
    large_prediction[where], large_truth[where] = tight_prediction, tight_truth

    tight = segmentation_metrics(tight_prediction, tight_truth, spacing)
    large = segmentation_metrics(large_prediction, large_truth, spacing)

    assert large == tight
    assert (large.hd95_mm, large.assd_mm) == pytest.approx(
        _full_volume_distances(large_prediction, large_truth, spacing), rel=1e-12
    )


def test_to_dict_holds_every_metric_name() -> None:
    metrics = segmentation_metrics(_sphere(6.0, (0, 0, 0)), _sphere(7.0, (0, 0, 0)), SPACING)

    as_dict = metrics.to_dict()

    assert set(METRIC_NAMES) <= set(as_dict)
    assert as_dict["dice"] == metrics.dice and as_dict["truth_cc"] == metrics.truth_cc


@pytest.mark.parametrize(
    ("prediction", "truth", "spacing", "message"),
    [
        (np.zeros((4, 5, 6), bool), np.zeros((4, 5, 7), bool), (1.0, 1.0, 1.0), "differs"),
        (np.zeros((4, 5), bool), np.zeros((4, 5), bool), (1.0, 1.0, 1.0), "3D"),
        (np.zeros((4, 5, 6), bool), np.zeros((4, 5, 6), bool), (1.0, 0.0, 1.0), "positive"),
        (np.zeros((4, 5, 6), bool), np.zeros((4, 5, 6), bool), (1.0, -2.0, 1.0), "positive"),
        (np.zeros((4, 5, 6), bool), np.zeros((4, 5, 6), bool), (1.0, 1.0), "one value per array axis"),
        (np.full((4, 5, 6), 0.7), np.zeros((4, 5, 6), bool), (1.0, 1.0, 1.0), "only 0 and 1"),
    ],
)
def test_bad_input_is_refused(
    prediction: np.ndarray, truth: np.ndarray, spacing: Sequence[float], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        segmentation_metrics(prediction, truth, spacing)
