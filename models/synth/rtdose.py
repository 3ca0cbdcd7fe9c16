"""RT Dose Storage writer: one multi-frame physical plan dose grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from .dicom_common import (
    PatientInfo,
    SeriesInfo,
    StudyInfo,
    add_common,
    add_pixels,
    ds,
    new_dataset,
    write,
)
from .geometry import AXIAL_IOP, Grid
from .rtplan import RT_PLAN_STORAGE

RT_DOSE_STORAGE = "1.2.840.10008.5.1.4.1.1.481.2"
# Largest stored value: leaves headroom below 2**32 like clinical TPS exports.
_MAX_STORED = 4_000_000


def quantize_dose(dose_gy: np.ndarray) -> tuple[np.ndarray, float]:
    """Dose (Gy) → uint32 pixels and the DoseGridScaling that restores Gy.

    The scaling is rounded to what its decimal string holds, so that
    ``pixels * float(DoseGridScaling)`` is exactly what a reader computes.
    """
    scaling = float(ds(max(float(dose_gy.max()), 1e-3) / _MAX_STORED))
    pixels = np.rint(dose_gy / scaling).astype(np.uint32)
    return pixels, scaling


def _add_geometry(d: Dataset, grid: Grid) -> None:
    nz = grid.shape[0]
    d.ImagePositionPatient = [ds(v) for v in grid.slice_position(0)]
    d.ImageOrientationPatient = [ds(v) for v in AXIAL_IOP]
    d.PixelSpacing = [ds(v) for v in grid.pixel_spacing]
    d.SliceThickness = ds(grid.spacing[2])
    d.NumberOfFrames = nz
    d.FrameIncrementPointer = Tag(0x3004, 0x000C)
    # Relative form: offsets from the first frame, starting at 0.
    d.GridFrameOffsetVector = [ds(grid.slice_z(k) - grid.slice_z(0)) for k in range(nz)]


def _plan_reference(plan_uid: str) -> Sequence:
    ref = Dataset()
    ref.ReferencedSOPClassUID = RT_PLAN_STORAGE
    ref.ReferencedSOPInstanceUID = plan_uid
    return Sequence([ref])


def write_rtdose(
    dose_gy: np.ndarray,
    grid: Grid,
    plan_uid: str,
    sop_instance_uid: str,
    patient: PatientInfo,
    study: StudyInfo,
    series: SeriesInfo,
    path: Path,
) -> tuple[Dataset, float]:
    """Write the planned dose and return it with the maximum dose as stored (Gy).

    Parameters
    ----------
    dose_gy : numpy.ndarray, shape (frames, rows, columns)
        Physical dose in Gy on ``grid``.
    grid : Grid
    plan_uid : str
        SOPInstanceUID of the RT Plan this dose belongs to.
    sop_instance_uid : str
    patient, study, series
        ``series.frame_of_reference_uid`` must be the planning CT's.
    path : pathlib.Path
    """
    pixels, scaling = quantize_dose(dose_gy)
    d = new_dataset(RT_DOSE_STORAGE, sop_instance_uid)
    add_common(d, patient, study, series, "RTDOSE")
    d.InstanceNumber = 1
    d.ContentDate = d.SeriesDate
    d.ContentTime = d.SeriesTime
    _add_geometry(d, grid)
    add_pixels(d, pixels, bits_stored=32)
    d.DoseUnits = "GY"
    d.DoseType = "PHYSICAL"
    d.DoseSummationType = "PLAN"
    d.DoseComment = "Synthetic planned dose"
    d.DoseGridScaling = ds(scaling)
    d.TissueHeterogeneityCorrection = "IMAGE"
    d.ReferencedRTPlanSequence = _plan_reference(plan_uid)
    write(d, path)
    return d, float(pixels.max()) * scaling
