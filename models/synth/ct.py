"""CT Image Storage series writer (planning CT and ORN follow-up CT)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from .dicom_common import (
    PatientInfo,
    SeriesInfo,
    StudyInfo,
    add_common,
    new_dataset,
    write_slices,
)
from .geometry import Grid

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
_INTERCEPT = -1024.0
_BITS_STORED = 12


def hu_to_stored(hu: np.ndarray) -> np.ndarray:
    """HU → unsigned 12-bit stored values (RescaleIntercept -1024, slope 1)."""
    return np.clip(np.rint(hu - _INTERCEPT), 0, 2**_BITS_STORED - 1).astype(np.uint16)


def _ct_template(patient: PatientInfo, study: StudyInfo, series: SeriesInfo, grid: Grid) -> Dataset:
    ds = new_dataset(CT_IMAGE_STORAGE, "")  # per-slice UIDs set on write
    add_common(ds, patient, study, series, "CT")
    ds.PatientPosition = "HFS"
    ds.BodyPartExamined = "HEADNECK"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.AcquisitionNumber = 1
    ds.AcquisitionDate = ds.ContentDate = ds.SeriesDate
    ds.AcquisitionTime = ds.ContentTime = ds.SeriesTime
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.KVP = "120"
    ds.ConvolutionKernel = "STANDARD"
    ds.GantryDetectorTilt = "0"
    ds.ReconstructionDiameter = f"{grid.shape[2] * grid.spacing[0]:.1f}"
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    ds.WindowCenterWidthExplanation = "SOFT TISSUE"
    return ds


def write_ct_series(
    hu: np.ndarray,
    grid: Grid,
    patient: PatientInfo,
    study: StudyInfo,
    series: SeriesInfo,
    folder: Path,
) -> list[Dataset]:
    """Write a CT series, one file per slice.

    Parameters
    ----------
    hu : numpy.ndarray, shape (slices, rows, columns)
        Hounsfield units on ``grid``.
    grid : Grid
    patient, study, series
        Identity and context; ``series.frame_of_reference_uid`` is written.
    folder : pathlib.Path
        Output folder (created).

    Returns
    -------
    list of pydicom.dataset.Dataset
        The written slices, in slice order.
    """
    template = _ct_template(patient, study, series, grid)
    return write_slices(template, hu_to_stored(hu), grid, _BITS_STORED, folder)
