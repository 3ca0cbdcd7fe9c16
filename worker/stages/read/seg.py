"""Read stage: DICOM-SEG → boolean masks on the grid of the image series it segments.

Each SEG frame is placed by its own PlanePositionSequence in the image's index space, so frame
order, omitted empty frames and a frame list that differs from the image's slices are all
handled. The SEG must share the image's frame of reference, orientation and pixel grid (as a
SEG written on a series does); anything else is refused with the reason.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from worker.errors import BrokenReferenceError, GeometryError, InputError
from worker.stages.read.files import read_dataset
from worker.stages.read.frames import Frame, frames_from_dataset
from worker.stages.read.pixels import decoded_pixel_array
from worker.stages.read.rtstruct import physical_to_index
from worker.stages.read.series import ImageVolume

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
#: Largest distance of a SEG frame from an image voxel position, in voxels.
GRID_MATCH_TOLERANCE = 0.05


def read_seg_masks(path: Path, volume: ImageVolume) -> dict[str, np.ndarray]:
    """Masks of every segment of a SEG, keyed by SegmentLabel, on ``volume``'s grid.

    Returns
    -------
    dict[str, numpy.ndarray]
        Boolean arrays of shape (slices, rows, cols), like ``volume.image``'s array.

    Raises
    ------
    worker.errors.BrokenReferenceError
        The SEG's frame of reference is not the image's.
    worker.errors.GeometryError
        The SEG frames do not lie on the image's voxel grid.
    """
    path = Path(path)
    ds = read_dataset(path)
    if ds.SOPClassUID != SEGMENTATION_STORAGE:
        raise InputError(f"{path.name}: not a Segmentation (SOPClassUID {ds.SOPClassUID})")
    if str(ds.get("FrameOfReferenceUID", "")) != volume.frame_of_reference_uid:
        raise BrokenReferenceError(f"{path.name}: SEG frame of reference differs from the image series'")
    labels = {int(s.SegmentNumber): str(s.get("SegmentLabel", s.SegmentNumber)) for s in ds.SegmentSequence}
    size = volume.image.GetSize()
    masks = {label: np.zeros((size[2], size[1], size[0]), dtype=bool) for label in labels.values()}
    planes = _binary_frames(ds, path.name)
    for index, frame in enumerate(frames_from_dataset(ds, path)):
        k = _slice_index(frame, volume, path.name)
        if k is None:
            continue
        masks[labels[_segment_number(ds, index, path.name)]][k] |= planes[index]
    return masks


def _binary_frames(ds: Dataset, name: str) -> np.ndarray:
    planes = decoded_pixel_array(ds, name)
    if planes.ndim == 2:
        planes = planes[None]
    if str(ds.get("SegmentationType", "BINARY")).upper() == "FRACTIONAL":
        return planes >= 0.5 * float(ds.get("MaximumFractionalValue", 255))
    return planes.astype(bool)


def _segment_number(ds: Dataset, index: int, name: str) -> int:
    # Per frame as a rule, but a SEG of one segment may share it (highdicom does).
    groups = [ds.PerFrameFunctionalGroupsSequence[index], *ds.get("SharedFunctionalGroupsSequence", [])[:1]]
    for group in groups:
        if "SegmentIdentificationSequence" in group:
            return int(group.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
    raise InputError(f"{name}: SEG frame {index + 1} has no SegmentIdentificationSequence")


def _slice_index(frame: Frame, volume: ImageVolume, name: str) -> int | None:
    """The image slice a SEG frame lies on, None if outside; refuse frames off the grid."""
    image = volume.image
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    same_plane = np.allclose(direction[:, 0], frame.row_dir, atol=1e-4) and np.allclose(
        direction[:, 1], frame.col_dir, atol=1e-4
    )
    same_pixels = np.allclose(image.GetSpacing()[:2], frame.pixel_spacing[::-1], atol=1e-4)
    index = physical_to_index(image, frame.position[None])[0]
    on_grid = np.allclose(index[:2], 0.0, atol=GRID_MATCH_TOLERANCE) and bool(
        abs(index[2] - round(index[2])) <= GRID_MATCH_TOLERANCE
    )
    if not (same_plane and same_pixels and on_grid and (frame.rows, frame.cols) == image.GetSize()[1::-1]):
        raise GeometryError(f"{name}: SEG frames do not lie on the image series' pixel grid")
    k = round(index[2])
    return k if 0 <= k < image.GetSize()[2] else None
