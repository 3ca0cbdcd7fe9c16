"""Read stage: one RTDOSE instance → a dose image in Gy on its own grid.

SimpleITK/GDCM neither applies DoseGridScaling nor checks GridFrameOffsetVector (it reads
[0, 3, 9] as a uniform 3 mm grid), so both are done here: the scaling is applied in float64, the
offset vector is parsed in its relative form (first value 0) and its absolute form (first value
equal to the z of ImagePositionPatient, axial grids only), and uneven offsets are resampled or
refused by policy.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag

from worker.errors import DoseError
from worker.stages.read.files import malformed_values, read_dataset
from worker.stages.read.frames import Frame, frames_from_dataset
from worker.stages.read.geometry import (
    GeometryPolicy,
    StackReport,
    analyse_stack,
    build_image,
    sort_frames,
)
from worker.stages.read.pixels import decoded_pixel_array

RT_DOSE_STORAGE = "1.2.840.10008.5.1.4.1.1.481.2"
GRID_FRAME_OFFSET_VECTOR = Tag(0x3004, 0x000C)
#: Tolerance for matching the first offset to 0 or to the z of ImagePositionPatient, in mm.
OFFSET_TOLERANCE_MM = 0.01
#: Above this a RELATIVE dose looks like a percentage rather than a fraction of the prescription.
MAX_RELATIVE_DOSE = 5.0


@dataclass
class DoseGrid:
    """An RTDOSE read into patient space, in Gy."""

    image: sitk.Image
    sop_instance_uid: str
    frame_of_reference_uid: str
    summation_type: str
    dose_type: str
    units: str
    referenced_plan_uid: str | None
    referenced_beam_numbers: list[int]
    offsets_form: str
    report: StackReport
    warnings: list[str] = field(default_factory=list)

    @property
    def max_gy(self) -> float:
        """Largest dose value on the grid."""
        return float(sitk.GetArrayViewFromImage(self.image).max())


def read_rtdose(
    path: Path,
    *,
    prescription_gy: float | None = None,
    policy: GeometryPolicy | None = None,
) -> DoseGrid:
    """Read an RTDOSE file into a :class:`DoseGrid` in Gy.

    Parameters
    ----------
    path: pathlib.Path
    prescription_gy: float, optional
        Prescription dose; needed only to turn ``DoseUnits`` RELATIVE into Gy (1.0 = prescription).
    policy: GeometryPolicy, optional
        Whether uneven frame offsets are resampled (default) or refused.

    Raises
    ------
    worker.errors.DoseError
        Not an RTDOSE, missing or inconsistent attributes, unsupported units or dose type.
    worker.errors.DicomReadError
        The file is truncated, an attribute value cannot be read, or its pixel data cannot be
        decoded.
    """
    ds = read_dataset(Path(path))
    with malformed_values(Path(path)):
        return _dose_grid(ds, Path(path), prescription_gy, policy)


def _dose_grid(
    ds: Dataset, path: Path, prescription_gy: float | None, policy: GeometryPolicy | None
) -> DoseGrid:
    name = path.name
    if ds.SOPClassUID != RT_DOSE_STORAGE:
        raise DoseError(f"{name}: not an RT Dose instance (SOPClassUID {ds.SOPClassUID})")
    warnings: list[str] = []
    dose_type = _check_dose_type(ds, name, warnings)
    offsets, form = grid_frame_offsets(ds, name)
    frames = _dose_frames(ds, path, offsets)
    stack, duplicates = sort_frames(frames)
    if duplicates:
        raise DoseError(f"{name}: GridFrameOffsetVector repeats positions")
    report = analyse_stack(stack, None)
    if not report.uniform:
        warnings.append(
            f"{name}: uneven GridFrameOffsetVector; dose resampled to {report.slice_spacing:g} mm"
        )
    gray = _dose_in_gray(ds, name, prescription_gy)
    ordered = gray[[f.frame_index or 0 for f in stack.frames]]
    image = build_image(ordered, stack, report, policy or GeometryPolicy())
    return DoseGrid(
        image=image,
        sop_instance_uid=str(ds.SOPInstanceUID),
        frame_of_reference_uid=str(ds.get("FrameOfReferenceUID", "")),
        summation_type=str(ds.get("DoseSummationType", "")).upper(),
        dose_type=dose_type,
        units=str(ds.get("DoseUnits", "")).upper(),
        referenced_plan_uid=_referenced_plan(ds),
        referenced_beam_numbers=_referenced_beams(ds),
        offsets_form=form,
        report=report,
        warnings=warnings,
    )


def _check_dose_type(ds: Dataset, name: str, warnings: list[str]) -> str:
    dose_type = str(ds.get("DoseType", "")).upper()
    if dose_type == "ERROR":
        raise DoseError(f"{name}: DoseType ERROR is a dose-difference grid, not a dose")
    if dose_type == "EFFECTIVE":
        warnings.append(f"{name}: DoseType EFFECTIVE (biologically weighted) used as dose")
    elif dose_type != "PHYSICAL":
        raise DoseError(f"{name}: unsupported DoseType {dose_type or '(empty)'}")
    return dose_type


def grid_frame_offsets(ds: Dataset, name: str) -> tuple[np.ndarray, str]:
    """Frame offsets along the normal relative to ImagePositionPatient, and the form found.

    Returns
    -------
    (numpy.ndarray, str)
        Offsets in mm with the first frame at ImagePositionPatient's plane; "relative" or
        "absolute".
    """
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    raw = ds.get("GridFrameOffsetVector")
    if raw is None:
        if frames == 1:
            return np.zeros(1), "relative"
        raise DoseError(f"{name}: multi-frame RTDOSE without GridFrameOffsetVector")
    pointer = ds.get("FrameIncrementPointer")
    if frames > 1 and pointer is not None and Tag(pointer) != GRID_FRAME_OFFSET_VECTOR:
        raise DoseError(f"{name}: FrameIncrementPointer is {Tag(pointer)}, not GridFrameOffsetVector")
    values = raw if isinstance(raw, MultiValue) else [raw]
    offsets = np.array([float(v) for v in values], dtype=np.float64)
    if offsets.size != frames:
        raise DoseError(f"{name}: GridFrameOffsetVector has {offsets.size} values for {frames} frames")
    return _relative_offsets(ds, name, offsets)


def _relative_offsets(ds: Dataset, name: str, offsets: np.ndarray) -> tuple[np.ndarray, str]:
    if abs(offsets[0]) <= OFFSET_TOLERANCE_MM:
        return offsets - offsets[0], "relative"
    ipp, iop = ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient")
    if not (isinstance(ipp, MultiValue) and isinstance(iop, MultiValue) and (len(ipp), len(iop)) == (3, 6)):
        raise DoseError(
            f"{name}: GridFrameOffsetVector starts at {offsets[0]:g}, but ImagePositionPatient and "
            "ImageOrientationPatient are needed to read it and one is missing or malformed"
        )
    ipp_z = float(ipp[2])
    axial = np.allclose([float(v) for v in iop], [1, 0, 0, 0, 1, 0], atol=1e-4)
    if axial and abs(offsets[0] - ipp_z) <= OFFSET_TOLERANCE_MM:
        # Absolute form: the values are patient z coordinates of each frame.
        return offsets - ipp_z, "absolute"
    raise DoseError(
        f"{name}: GridFrameOffsetVector starts at {offsets[0]:g}, which is neither 0 (relative "
        f"form) nor the ImagePositionPatient z {ipp_z:g} of an axial grid (absolute form)"
    )


def _dose_frames(ds: Dataset, path: Path, offsets: np.ndarray) -> list[Frame]:
    template = frames_from_dataset(_single_plane_view(ds), path)[0]
    # Frames lie along the normal by definition of the offset vector, so a dose grid is
    # never tilted.
    return [
        replace(template, frame_index=k, position=template.position + offset * template.normal)
        for k, offset in enumerate(offsets)
    ]


def _single_plane_view(ds: Dataset) -> Dataset:
    """A header-only copy that reads as one classic plane (the dose's first frame)."""
    view = Dataset()
    for keyword in (
        "SOPInstanceUID",
        "ImagePositionPatient",
        "ImageOrientationPatient",
        "PixelSpacing",
        "Rows",
        "Columns",
    ):
        if keyword in ds:
            setattr(view, keyword, ds[keyword].value)
    return view


def _dose_in_gray(ds: Dataset, name: str, prescription_gy: float | None) -> np.ndarray:
    if "DoseGridScaling" not in ds or ds.DoseGridScaling in (None, ""):
        raise DoseError(f"{name}: DoseGridScaling missing; stored values cannot be turned into dose")
    values = decoded_pixel_array(ds, name).astype(np.float64)
    if values.ndim == 2:
        values = values[None]
    dose = values * float(ds.DoseGridScaling)
    units = str(ds.get("DoseUnits", "")).upper()
    if units == "GY":
        return dose
    if units == "RELATIVE":
        return _relative_to_gray(dose, name, prescription_gy)
    raise DoseError(f"{name}: unsupported DoseUnits {units or '(empty)'}; expected GY or RELATIVE")


def _relative_to_gray(dose: np.ndarray, name: str, prescription_gy: float | None) -> np.ndarray:
    if prescription_gy is None:
        raise DoseError(
            f"{name}: DoseUnits RELATIVE cannot be turned into Gy without a prescription dose "
            "(give an RTPLAN with TargetPrescriptionDose or a prescription)"
        )
    if float(dose.max()) > MAX_RELATIVE_DOSE:
        raise DoseError(
            f"{name}: RELATIVE dose up to {float(dose.max()):g} looks like a percentage; only "
            "fractions of the prescription (1.0 = prescription) are supported"
        )
    return dose * float(prescription_gy)


def _referenced_plan(ds: Dataset) -> str | None:
    refs = ds.get("ReferencedRTPlanSequence")
    return str(refs[0].ReferencedSOPInstanceUID) if refs else None


def _referenced_beams(ds: Dataset) -> list[int]:
    beams: list[int] = []
    for plan in ds.get("ReferencedRTPlanSequence", []):
        for group in plan.get("ReferencedFractionGroupSequence", []):
            beams.extend(int(b.ReferencedBeamNumber) for b in group.get("ReferencedBeamSequence", []))
    return beams
