"""Image frames with their plane geometry, from classic single-frame and enhanced multi-frame files.

A *frame* is one 2D image plane: one classic CT/MR instance, or one frame of an enhanced
(multi-frame) instance. Geometry comes only from ImagePositionPatient, ImageOrientationPatient
and PixelSpacing (per frame or shared functional groups), never from PatientPosition,
SliceLocation or InstanceNumber.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from worker.errors import GeometryError
from worker.stages.read.files import integer_value, malformed_values

#: Largest tolerated deviation of a direction cosine vector from unit length / orthogonality.
ORTHONORMAL_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Frame:
    """One image plane and where its pixels sit in patient (LPS) coordinates.

    Pixel (r, c) lies at ``position + c * pixel_spacing[1] * row_dir + r * pixel_spacing[0] * col_dir``.
    """

    path: Path
    sop_instance_uid: str
    frame_index: int | None
    position: np.ndarray
    row_dir: np.ndarray
    col_dir: np.ndarray
    pixel_spacing: tuple[float, float]
    rows: int
    cols: int
    slope: float
    intercept: float
    instance_number: int
    stack_key: tuple[str, ...]
    is_localizer: bool

    @property
    def normal(self) -> np.ndarray:
        """Unit slice normal (row_dir × col_dir)."""
        n = np.cross(self.row_dir, self.col_dir)
        return np.asarray(n / np.linalg.norm(n))

    @property
    def orientation_key(self) -> tuple[float, ...]:
        """Direction cosines rounded so that frames of one stack compare equal."""
        return tuple(np.round(np.concatenate([self.row_dir, self.col_dir]), 4).tolist())


def frames_from_dataset(ds: Dataset, path: Path) -> list[Frame]:
    """All frames of one image instance (classic or enhanced).

    Raises
    ------
    worker.errors.GeometryError
        The instance lacks ImagePositionPatient, ImageOrientationPatient or PixelSpacing, or its
        direction cosines are not orthonormal.
    worker.errors.DicomReadError
        An attribute value cannot be read (the file is malformed).
    """
    with malformed_values(path):
        if "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds:
            return _enhanced_frames(ds, path)
        if integer_value(ds, "NumberOfFrames", path.name, default=1) > 1:
            raise GeometryError(
                f"{path.name}: multi-frame image without functional groups has no per-frame geometry"
            )
        return [_classic_frame(ds, path)]


def _classic_frame(ds: Dataset, path: Path) -> Frame:
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        if not ds.get(keyword):
            raise GeometryError(f"{path.name}: no {keyword}; the image cannot be placed in the patient")
    return _make_frame(
        ds,
        path,
        frame_index=None,
        ipp=ds.ImagePositionPatient,
        iop=ds.ImageOrientationPatient,
        spacing=ds.PixelSpacing,
        slope=ds.get("RescaleSlope", 1.0),
        intercept=ds.get("RescaleIntercept", 0.0),
        stack_key=_classic_stack_key(ds),
    )


def _classic_stack_key(ds: Dataset) -> tuple[str, ...]:
    # Echoes, temporal positions and b-values of one series are separate volumes.
    return tuple(str(ds.get(k, "")) for k in ("EchoNumbers", "TemporalPositionIdentifier", "DiffusionBValue"))


def _enhanced_frames(ds: Dataset, path: Path) -> list[Frame]:
    count = integer_value(ds, "NumberOfFrames", path.name, default=1) or 1
    return [_enhanced_frame(ds, path, i) for i in range(count)]


def _functional_group(ds: Dataset, index: int, sequence: str) -> Dataset | None:
    """A frame's functional group item, per-frame first, then shared."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and index < len(per_frame) and sequence in per_frame[index]:
        return per_frame[index][sequence][0]
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared and sequence in shared[0]:
        return shared[0][sequence][0]
    return None


def _enhanced_frame(ds: Dataset, path: Path, index: int) -> Frame:
    position = _functional_group(ds, index, "PlanePositionSequence")
    orientation = _functional_group(ds, index, "PlaneOrientationSequence")
    measures = _functional_group(ds, index, "PixelMeasuresSequence")
    if position is None or orientation is None or measures is None:
        raise GeometryError(
            f"{path.name}: enhanced image frame {index + 1} has no plane position, plane "
            "orientation or pixel measures functional group; the image cannot be placed"
        )
    transform = _functional_group(ds, index, "PixelValueTransformationSequence")
    content = _functional_group(ds, index, "FrameContentSequence")
    return _make_frame(
        ds,
        path,
        frame_index=index,
        ipp=position.get("ImagePositionPatient"),
        iop=orientation.get("ImageOrientationPatient"),
        spacing=measures.get("PixelSpacing"),
        slope=transform.get("RescaleSlope", 1.0) if transform is not None else 1.0,
        intercept=transform.get("RescaleIntercept", 0.0) if transform is not None else 0.0,
        stack_key=_enhanced_stack_key(ds, index, content),
    )


def _enhanced_stack_key(ds: Dataset, index: int, content: Dataset | None) -> tuple[str, ...]:
    # As for classic images: stacks, temporal positions, echoes and b-values are separate volumes.
    echo = _functional_group(ds, index, "MREchoSequence")
    diffusion = _functional_group(ds, index, "MRDiffusionSequence")
    return (
        str(content.get("StackID", "")) if content is not None else "",
        str(content.get("TemporalPositionIndex", "")) if content is not None else "",
        str(echo.get("EffectiveEchoTime", "")) if echo is not None else "",
        str(diffusion.get("DiffusionBValue", "")) if diffusion is not None else "",
    )


def _make_frame(
    ds: Dataset,
    path: Path,
    *,
    frame_index: int | None,
    ipp: Sequence[float] | None,
    iop: Sequence[float] | None,
    spacing: Sequence[float] | None,
    slope: float,
    intercept: float,
    stack_key: tuple[str, ...],
) -> Frame:
    where = path.name if frame_index is None else f"{path.name} frame {frame_index + 1}"
    position = _vector(ipp, 3, "ImagePositionPatient", where)
    cosines = _vector(iop, 6, "ImageOrientationPatient", where)
    pixel_spacing = _vector(spacing, 2, "PixelSpacing", where)
    if np.any(pixel_spacing <= 0):
        raise GeometryError(f"{where}: PixelSpacing must be positive, got {pixel_spacing.tolist()}")
    row_dir, col_dir = _orthonormal(cosines, where)
    image_type = [str(v).upper() for v in ds.get("ImageType", [])]
    return Frame(
        path=path,
        sop_instance_uid=str(ds.SOPInstanceUID),
        frame_index=frame_index,
        position=position,
        row_dir=row_dir,
        col_dir=col_dir,
        pixel_spacing=(float(pixel_spacing[0]), float(pixel_spacing[1])),
        rows=integer_value(ds, "Rows", where),
        cols=integer_value(ds, "Columns", where),
        slope=float(slope if slope not in (None, "") else 1.0),
        intercept=float(intercept if intercept not in (None, "") else 0.0),
        instance_number=integer_value(ds, "InstanceNumber", where, default=0),
        stack_key=stack_key,
        is_localizer="LOCALIZER" in image_type,
    )


def _vector(values: Sequence[float] | None, length: int, keyword: str, where: str) -> np.ndarray:
    if values is not None and not isinstance(values, Sequence):
        values = [values]  # pydicom gives a lone value (VM 1) as a number, not a list
    if values is None or len(values) != length:
        raise GeometryError(f"{where}: {keyword} must have {length} values, got {values!r}")
    try:
        vector = np.array([float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise GeometryError(f"{where}: {keyword} is not numeric: {values!r}") from exc
    if not np.all(np.isfinite(vector)):
        raise GeometryError(f"{where}: {keyword} has non-finite values")
    return vector


def _orthonormal(cosines: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    row_dir, col_dir = cosines[:3], cosines[3:]
    norms_ok = np.allclose(
        [np.linalg.norm(row_dir), np.linalg.norm(col_dir)], 1.0, atol=ORTHONORMAL_TOLERANCE
    )
    if not norms_ok or abs(float(row_dir @ col_dir)) > ORTHONORMAL_TOLERANCE:
        raise GeometryError(
            f"{where}: ImageOrientationPatient {cosines.tolist()} is not two orthonormal vectors"
        )
    # Re-orthonormalise so that round-off in the header does not skew the volume.
    row_dir = row_dir / np.linalg.norm(row_dir)
    col_dir = col_dir - (col_dir @ row_dir) * row_dir
    return row_dir, col_dir / np.linalg.norm(col_dir)
