"""Read stage: RTSTRUCT → boolean masks on the grid of the image series it references.

Contours are rasterised in patient coordinates: each CLOSED_PLANAR contour is mapped into the
image's continuous index space, assigned to the slice it lies on, and filled with the even-odd
rule; contours on one slice are combined by XOR so that holes (inner contours) stay holes.
Broken references (frame of reference, image instances) are refused with specific messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset

from worker.errors import BrokenReferenceError, InputError
from worker.stages.read.files import read_dataset
from worker.stages.read.series import ImageVolume

RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
#: A contour farther than this (in slices) from the nearest slice plane is not on the grid.
SLICE_MATCH_TOLERANCE = 0.25


@dataclass
class StructureMasks:
    """Masks of an RTSTRUCT's ROIs, shape (slices, rows, cols) like the image array."""

    masks: dict[str, np.ndarray]
    roi_numbers: dict[str, int]
    warnings: list[str] = field(default_factory=list)


def read_rtstruct_masks(path: Path, volume: ImageVolume) -> StructureMasks:
    """Rasterise every ROI of an RTSTRUCT on ``volume``'s grid.

    Raises
    ------
    worker.errors.BrokenReferenceError
        The structure set's frame of reference differs from the image's, or its contours
        reference image instances that are not in the series.
    """
    path = Path(path)
    ds = read_dataset(path)
    if ds.SOPClassUID != RT_STRUCTURE_SET_STORAGE:
        raise InputError(f"{path.name}: not an RT Structure Set (SOPClassUID {ds.SOPClassUID})")
    _check_frame_of_reference(ds, volume, path.name)
    _check_image_references(ds, volume, path.name)
    rois = _roi_names(ds, volume, path.name)
    result = StructureMasks(masks={}, roi_numbers={})
    for roi in ds.get("ROIContourSequence", []):
        number = _roi_number(roi, path.name)
        if number not in rois:
            continue
        name = rois[number]
        mask, off_grid = _rasterise_roi(roi, volume.image, f"{path.name}: ROI '{name}'")
        if mask is None:
            continue
        if off_grid:
            result.warnings.append(f"{name}: {off_grid} contour(s) outside the image slices ignored")
        result.masks[name] = mask
        result.roi_numbers[name] = number
    skipped = len(ds.get("StructureSetROISequence", [])) - len(rois)
    if skipped:
        result.warnings.append(f"{skipped} ROI(s) defined in another frame of reference ignored")
    return result


def _roi_number(item: Dataset, name: str, keyword: str = "ReferencedROINumber") -> int:
    try:
        return int(item.get(keyword))
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name}: ROI item without a valid {keyword}") from exc


def _roi_names(ds: Dataset, volume: ImageVolume, name: str) -> dict[int, str]:
    """ROI number → unique name, for the ROIs defined in the image's frame of reference."""
    names: dict[int, str] = {}
    for roi in ds.get("StructureSetROISequence", []):
        number = _roi_number(roi, name, "ROINumber")
        frame = str(roi.get("ReferencedFrameOfReferenceUID", "") or volume.frame_of_reference_uid)
        if frame != volume.frame_of_reference_uid:
            continue
        label = str(roi.get("ROIName", "") or f"ROI {number}")
        # Two ROIs may share a name; keep both, telling them apart by number.
        names[number] = f"{label} (ROI {number})" if label in names.values() else label
    return names


def _check_frame_of_reference(ds: Dataset, volume: ImageVolume, name: str) -> None:
    frames = {str(f.FrameOfReferenceUID) for f in ds.get("ReferencedFrameOfReferenceSequence", [])}
    frames |= {
        str(roi.ReferencedFrameOfReferenceUID)
        for roi in ds.get("StructureSetROISequence", [])
        if roi.get("ReferencedFrameOfReferenceUID")
    }
    if not frames:
        raise BrokenReferenceError(f"{name}: RTSTRUCT names no frame of reference")
    if volume.frame_of_reference_uid not in frames:
        raise BrokenReferenceError(
            f"{name}: RTSTRUCT frame of reference differs from the image series' "
            "(its contours are in another coordinate system)"
        )


def _check_image_references(ds: Dataset, volume: ImageVolume, name: str) -> None:
    present = set(volume.sop_instance_uids)
    referenced = {
        str(image.ReferencedSOPInstanceUID)
        for roi in ds.get("ROIContourSequence", [])
        for contour in roi.get("ContourSequence", [])
        for image in contour.get("ContourImageSequence", [])
    }
    missing = referenced - present
    if missing:
        raise BrokenReferenceError(
            f"{name}: contours reference {len(missing)} image instance(s) that are not in the "
            f"image series ({len(referenced) - len(missing)} of {len(referenced)} present)"
        )


def _rasterise_roi(roi: Dataset, image: sitk.Image, where: str) -> tuple[np.ndarray | None, int]:
    contours = [
        c
        for c in roi.get("ContourSequence", [])
        if str(c.get("ContourGeometricType", "")).upper() == "CLOSED_PLANAR"
        and len(c.get("ContourData", [])) >= 9
    ]
    if not contours:
        return None, 0
    size = image.GetSize()
    mask = np.zeros((size[2], size[1], size[0]), dtype=bool)
    off_grid = 0
    for contour in contours:
        index = physical_to_index(image, _contour_points(contour, where))
        k = int(np.round(np.median(index[:, 2])))
        if abs(np.median(index[:, 2]) - k) > SLICE_MATCH_TOLERANCE or not 0 <= k < size[2]:
            off_grid += 1
            continue
        mask[k] ^= polygon_mask(index[:, 1], index[:, 0], size[1], size[0])
    return mask, off_grid


def _contour_points(contour: Dataset, where: str) -> np.ndarray:
    try:
        values = np.asarray([float(v) for v in contour.ContourData], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{where}: ContourData is not numeric") from exc
    if values.size % 3 or not np.all(np.isfinite(values)):
        raise InputError(f"{where}: ContourData must be finite (x, y, z) triplets, got {values.size} values")
    return values.reshape(-1, 3)


def physical_to_index(image: sitk.Image, points: np.ndarray) -> np.ndarray:
    """Continuous (column, row, slice) indices of LPS points, shape (N, 3)."""
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    scaled = direction * np.asarray(image.GetSpacing())[None, :]
    return np.linalg.solve(scaled, (points - np.asarray(image.GetOrigin())).T).T


def polygon_mask(rows: np.ndarray, cols: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pixels whose centres lie inside a polygon (even-odd rule).

    Parameters
    ----------
    rows, cols: numpy.ndarray, shape (N,)
        Vertex coordinates in continuous pixel indices.
    height, width: int
        Shape of the output mask.

    Returns
    -------
    numpy.ndarray, shape (height, width), bool
    """
    mask = np.zeros((height, width), dtype=bool)
    r0, r1 = max(int(np.ceil(rows.min())), 0), min(int(np.floor(rows.max())), height - 1)
    if r1 < r0:
        return mask
    y0, x0 = rows, cols
    y1, x1 = np.roll(rows, -1), np.roll(cols, -1)
    centres = np.arange(width, dtype=np.float64)
    for r in range(r0, r1 + 1):
        # Half-open rule per edge so that a vertex exactly on a scanline counts once.
        crossing = (y0 <= r) != (y1 <= r)
        if not crossing.any():
            continue
        xs = np.sort(
            x0[crossing] + (r - y0[crossing]) * (x1[crossing] - x0[crossing]) / (y1[crossing] - y0[crossing])
        )
        mask[r] = np.searchsorted(xs, centres, side="right") % 2 == 1
    return mask
