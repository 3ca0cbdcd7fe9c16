"""Where an image series or a dose grid lies in patient space, from header values alone.

Assembly uses it to refuse an RTDOSE whose grid lies entirely outside the planning CT it shares
a frame of reference with: such a dose cannot be placed on the patient, and a few header values
say so before any pixel is read or a job is queued. The boxes are axis-aligned (LPS, mm) and
padded by half a voxel, so two grids that touch count as overlapping; geometry that cannot be
read here is left to the read stage, which names what is wrong with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

from worker.errors import InputError
from worker.stages.assemble.index import Instance
from worker.stages.read.frames import Frame, frames_from_dataset
from worker.stages.read.rtdose import grid_frame_offsets


@dataclass(frozen=True)
class Extent:
    """An axis-aligned box in patient coordinates (LPS, mm)."""

    low: np.ndarray
    high: np.ndarray

    def overlaps(self, other: Extent) -> bool:
        return bool(np.all(self.low <= other.high) and np.all(other.low <= self.high))

    def __str__(self) -> str:
        return (
            ", ".join(
                f"{axis} {low:.0f}…{high:.0f}"
                for axis, low, high in zip("xyz", self.low, self.high, strict=True)
            )
            + " mm"
        )


def image_extent(instances: Sequence[Instance]) -> Extent | None:
    """The box of every frame of an image series; None when its geometry cannot be read."""
    try:
        frames = [frame for i in instances for frame in frames_from_dataset(i.header, i.path)]
    except InputError:
        return None
    if not frames:
        return None
    normal = frames[0].normal
    distances = sorted(float(f.position @ normal) for f in frames)
    depth = float(np.median(np.diff(distances))) if len(distances) > 1 else 0.0
    return _box([_plane_corners(f, depth) for f in frames])


def dose_extent(instance: Instance) -> Extent | None:
    """The box of an RTDOSE grid (its frames along the normal); None when unreadable."""
    ds = instance.header
    try:
        plane = frames_from_dataset(_first_plane(ds), instance.path)[0]
        offsets, _ = grid_frame_offsets(ds, instance.path.name)
    except (InputError, KeyError, AttributeError, TypeError, ValueError):
        return None
    depth = float(np.median(np.diff(offsets))) if offsets.size > 1 else 0.0
    return _box([_plane_corners(plane, depth, shift) for shift in (offsets.min(), offsets.max())])


def _first_plane(ds: Dataset) -> Dataset:
    """A header-only view of an RTDOSE that reads as its first plane (a classic image)."""
    view = Dataset()
    for keyword in ("SOPInstanceUID", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        setattr(view, keyword, ds[keyword].value)
    view.Rows, view.Columns = ds.Rows, ds.Columns
    return view


def _plane_corners(frame: Frame, depth: float, shift: float = 0.0) -> np.ndarray:
    """The corners of a plane's pixels (half a pixel beyond the centres), half ``depth`` thick."""
    row_spacing, col_spacing = frame.pixel_spacing
    across = (-0.5 * col_spacing, (frame.cols - 0.5) * col_spacing)
    down = (-0.5 * row_spacing, (frame.rows - 0.5) * row_spacing)
    along = (shift - 0.5 * depth, shift + 0.5 * depth)
    return np.array(
        [
            frame.position + a * frame.row_dir + d * frame.col_dir + n * frame.normal
            for a in across
            for d in down
            for n in along
        ]
    )


def _box(corners: list[np.ndarray]) -> Extent:
    points = np.concatenate(corners)
    return Extent(points.min(axis=0), points.max(axis=0))
