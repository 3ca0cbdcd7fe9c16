"""The follow-up series the outputs reference, and masks sampled on its own planes.

Outputs must sit on the *source* instances (their SOP Instance UIDs, their planes), not on the
grid the read stage may have resampled an uneven or tilted stack onto. Each plane's pixels are
placed from its own ImagePositionPatient / ImageOrientationPatient / PixelSpacing (the
:class:`~worker.stages.read.frames.Frame`), so oblique, non-square and feet-first series need no
special case.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset

from worker.errors import DicomReadError, GeometryError
from worker.logs import register_identifiers
from worker.stages.read.frames import Frame
from worker.stages.read.series import ImageVolume


@dataclass
class SourceSeries:
    """Headers of the follow-up instances and their planes in stack order."""

    datasets: list[Dataset]
    frames: list[Frame]
    _by_uid: dict[str, Dataset] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._by_uid = {str(ds.SOPInstanceUID): ds for ds in self.datasets}

    @property
    def first(self) -> Dataset:
        return self.datasets[0]

    @property
    def is_multiframe(self) -> bool:
        return any(f.frame_index is not None for f in self.frames)

    def dataset_of(self, frame: Frame) -> Dataset:
        return self._by_uid[frame.sop_instance_uid]


def source_series(volume: ImageVolume) -> SourceSeries:
    """Read the headers (no pixel data) of the instances ``volume`` was built from."""
    if not volume.frames:
        raise GeometryError("the follow-up image carries no source planes; it was not read from DICOM")
    datasets: dict[str, Dataset] = {}
    for frame in volume.frames:
        if frame.sop_instance_uid not in datasets:
            datasets[frame.sop_instance_uid] = _header(frame)
    return SourceSeries(datasets=list(datasets.values()), frames=list(volume.frames))


def _header(frame: Frame) -> Dataset:
    try:
        dataset = pydicom.dcmread(frame.path, stop_before_pixels=True)
    except (OSError, pydicom.errors.InvalidDicomError) as exc:
        raise DicomReadError(f"{frame.path.name}: the follow-up file cannot be read again ({exc})") from exc
    # This stage may run in a worker that read no header before (export queue): the filter
    # must know the patient's identifiers here too.
    register_identifiers(dataset)
    return dataset


def mask_on_frames(mask: sitk.Image, frames: Sequence[Frame]) -> np.ndarray:
    """``mask`` (any grid) sampled at every pixel centre of each plane: (planes, rows, cols) bool.

    Nearest neighbour: where the mask is on these planes already (the usual case) this is an exact
    copy; where the read stage resampled the stack, each plane takes the mask voxel it lies in.
    """
    binary = sitk.Cast(mask > 0, sitk.sitkUInt8)
    planes = [_sample_plane(binary, frame) for frame in frames]
    return np.stack(planes).astype(bool) if planes else np.zeros((0, 0, 0), dtype=bool)


def _sample_plane(mask: sitk.Image, frame: Frame) -> np.ndarray:
    reference = sitk.Image([frame.cols, frame.rows, 1], sitk.sitkUInt8)
    reference.SetOrigin(frame.position.tolist())
    reference.SetSpacing([frame.pixel_spacing[1], frame.pixel_spacing[0], 1.0])
    direction = np.column_stack([frame.row_dir, frame.col_dir, frame.normal])
    reference.SetDirection(direction.flatten().tolist())
    sampled = sitk.Resample(mask, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(sampled)[0]
