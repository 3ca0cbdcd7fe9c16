"""MR Image Storage series writer (T2-FLAIR for CE, contrast T1 for CRN)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from .dicom_common import (
    PatientInfo,
    SeriesInfo,
    StudyInfo,
    add_common,
    ds,
    new_dataset,
    write_slices,
)
from .geometry import Grid

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
_BITS_STORED = 12


@dataclass(frozen=True)
class MrProtocol:
    """Acquisition parameters written to the MR Image module.

    ``contrast_agent`` set means a post-contrast series: the Contrast/Bolus
    module is written too.
    """

    description: str
    scanning_sequence: tuple[str, ...]
    sequence_variant: tuple[str, ...]
    scan_options: str
    acquisition_type: str
    repetition_time_ms: float
    echo_time_ms: float
    echo_train_length: int
    flip_angle_deg: float
    sequence_name: str
    inversion_time_ms: float | None = None
    contrast_agent: str | None = None


FLAIR = MrProtocol(
    description="AX T2 FLAIR",
    scanning_sequence=("SE", "IR"),
    sequence_variant=("SK", "SP", "MP"),
    scan_options="SP",
    acquisition_type="2D",
    repetition_time_ms=9000.0,
    echo_time_ms=90.0,
    echo_train_length=16,
    flip_angle_deg=150.0,
    sequence_name="*tir2d1_16",
    inversion_time_ms=2500.0,
)

T1_POST = MrProtocol(
    description="AX T1 POST GAD FS",
    scanning_sequence=("SE",),
    sequence_variant=("SK", "SP"),
    scan_options="FS",
    acquisition_type="2D",
    repetition_time_ms=550.0,
    echo_time_ms=10.0,
    echo_train_length=3,
    flip_angle_deg=90.0,
    sequence_name="*tse2d1_3",
    contrast_agent="Gadoterate meglumine",
)


def signal_to_stored(signal: np.ndarray) -> np.ndarray:
    """MR signal → unsigned 12-bit stored values."""
    return np.clip(np.rint(signal), 0, 2**_BITS_STORED - 1).astype(np.uint16)


def _add_contrast(ds_: Dataset, agent: str, series: SeriesInfo) -> None:
    ds_.ContrastBolusAgent = agent
    ds_.ContrastBolusRoute = "IV"
    ds_.ContrastBolusVolume = "15"
    ds_.ContrastBolusIngredient = "GADOLINIUM"
    ds_.ContrastBolusStartTime = series.time


def _mr_template(
    patient: PatientInfo, study: StudyInfo, series: SeriesInfo, protocol: MrProtocol, grid: Grid
) -> Dataset:
    d = new_dataset(MR_IMAGE_STORAGE, "")  # per-slice UIDs set on write
    add_common(d, patient, study, series, "MR")
    d.PatientPosition = "HFS"
    d.BodyPartExamined = "HEAD"
    d.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    d.AcquisitionNumber = 1
    d.AcquisitionDate = d.ContentDate = d.SeriesDate
    d.AcquisitionTime = d.ContentTime = d.SeriesTime
    d.ScanningSequence = list(protocol.scanning_sequence)
    d.SequenceVariant = list(protocol.sequence_variant)
    d.ScanOptions = protocol.scan_options
    d.MRAcquisitionType = protocol.acquisition_type
    d.SequenceName = protocol.sequence_name
    d.RepetitionTime = ds(protocol.repetition_time_ms)
    d.EchoTime = ds(protocol.echo_time_ms)
    d.EchoTrainLength = protocol.echo_train_length
    if protocol.inversion_time_ms is not None:
        d.InversionTime = ds(protocol.inversion_time_ms)
    d.FlipAngle = ds(protocol.flip_angle_deg)
    d.MagneticFieldStrength = "3"
    d.ImagingFrequency = "123.2"
    d.ImagedNucleus = "1H"
    d.NumberOfAverages = "1"
    d.EchoNumbers = 1
    d.SpacingBetweenSlices = ds(grid.spacing[2])
    d.AngioFlag = "N"
    d.ReceiveCoilName = "Head/Neck 20"
    d.InPlanePhaseEncodingDirection = "ROW"
    if protocol.contrast_agent is not None:
        _add_contrast(d, protocol.contrast_agent, series)
    d.WindowCenter = "500"
    d.WindowWidth = "1000"
    return d


def write_mr_series(
    signal: np.ndarray,
    grid: Grid,
    protocol: MrProtocol,
    patient: PatientInfo,
    study: StudyInfo,
    series: SeriesInfo,
    folder: Path,
) -> list[Dataset]:
    """Write an MR series, one file per slice.

    Parameters
    ----------
    signal : numpy.ndarray, shape (slices, rows, columns)
        Signal in arbitrary units (0–4095) on ``grid``.
    grid : Grid
    protocol : MrProtocol
        :data:`FLAIR` or :data:`T1_POST`.
    patient, study, series
        Identity and context; ``series.frame_of_reference_uid`` is written.
    folder : pathlib.Path

    Returns
    -------
    list of pydicom.dataset.Dataset
        The written slices, in slice order.
    """
    template = _mr_template(patient, study, series, protocol, grid)
    return write_slices(template, signal_to_stored(signal), grid, _BITS_STORED, folder)
