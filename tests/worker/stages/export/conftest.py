"""Shared fixtures of the export tests.

- ``export_orn_case``: a real synthetic ORN patient taken through assemble → read → prepare,
  with its ground-truth lesion (the SEG) on the follow-up grid.
- ``export_grid_kit``: analytic images on arbitrary follow-up grids (oblique, feet-first,
  non-square), for answers known without the code under test.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from models.synth import write_synthetic_patients
from worker.stages.assemble.case import assemble_cases
from worker.stages.prepare import PreparedCase, prepare_case
from worker.stages.read.case_data import CaseData, read_case
from worker.stages.read.seg import read_seg_masks


@dataclass(frozen=True)
class ExportOrnCase:
    """A prepared synthetic ORN case, its true lesion, and the identifiers that must not leak."""

    data: CaseData
    prepared: PreparedCase
    truth: dict[str, Any]  # the case.json the synthetic patient was written with
    lesion: sitk.Image
    region: sitk.Image
    patient_name: str
    patient_id: str
    birth_date: str
    study_date: str
    series_description: str


@pytest.fixture(scope="session")
def export_orn_case(tmp_path_factory: pytest.TempPathFactory) -> ExportOrnCase:
    root = tmp_path_factory.mktemp("export-orn")
    folder = write_synthetic_patients(root / "synth", task="orn", size="small", seed=3)[0]
    case = assemble_cases(folder, root / "work").cases[0]
    data = read_case(case)
    prepared = prepare_case(case, data)
    truth = next(iter(read_seg_masks(case.seg[0].files[0], data.followup).values()))
    header = pydicom.dcmread(case.followup.instances[0].path, stop_before_pixels=True)
    return ExportOrnCase(
        data=data,
        prepared=prepared,
        truth=json.loads((folder / "case.json").read_text()),
        lesion=ExportGridKit.like(data.followup.image, truth),
        region=ExportGridKit.like(data.followup.image, prepared.region.mask),
        patient_name=str(header.PatientName),
        patient_id=str(header.PatientID),
        birth_date=str(header.PatientBirthDate),
        study_date=str(header.StudyDate),
        series_description=str(header.SeriesDescription),
    )


class ExportGridKit:
    """Images on a grid of any geometry, from functions of the LPS position (mm)."""

    #: Feet-first supine: rows run to patient right, slices towards the feet.
    FFS = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
    HFS = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    @staticmethod
    def oblique(z_degrees: float = 25.0, x_degrees: float = 15.0) -> tuple[float, ...]:
        """A direction matrix rotated about z then x (a tilted gantry on a turned head)."""
        a, b = np.radians(z_degrees), np.radians(x_degrees)
        rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
        rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
        return tuple(float(v) for v in (rx @ rz).ravel())

    @staticmethod
    def grid(
        size: Sequence[int],
        spacing: Sequence[float],
        direction: Sequence[float],
        centre: Sequence[float] = (0.0, 0.0, 0.0),
    ) -> sitk.Image:
        """An empty float image whose voxel grid is centred on ``centre`` (LPS, mm)."""
        image = sitk.Image([int(n) for n in size], sitk.sitkFloat32)
        image.SetSpacing([float(s) for s in spacing])
        image.SetDirection([float(d) for d in direction])
        half = (np.asarray(size, float) - 1.0) / 2.0 * np.asarray(spacing, float)
        origin = np.asarray(centre, float) - np.asarray(direction, float).reshape(3, 3) @ half
        image.SetOrigin([float(v) for v in origin])
        return image

    @staticmethod
    def points(image: sitk.Image) -> np.ndarray:
        """LPS centre of every voxel, shape (slices, rows, cols, 3)."""
        k, j, i = np.meshgrid(*(np.arange(n) for n in image.GetSize()[::-1]), indexing="ij")
        index = np.stack([i, j, k], axis=-1).astype(float) * np.asarray(image.GetSpacing())
        return np.asarray(image.GetOrigin()) + index @ np.asarray(image.GetDirection()).reshape(3, 3).T

    @classmethod
    def field(cls, geometry: sitk.Image, function: Callable[[np.ndarray], np.ndarray]) -> sitk.Image:
        """A float32 image with ``function(points)`` at each voxel centre."""
        return cls.like(geometry, np.asarray(function(cls.points(geometry)), dtype=np.float32))

    @classmethod
    def sphere(cls, geometry: sitk.Image, centre: Sequence[float], radius: float) -> sitk.Image:
        """A UInt8 mask of the voxels whose centres lie within ``radius`` mm of ``centre``."""
        distance = np.linalg.norm(cls.points(geometry) - np.asarray(centre, float), axis=-1)
        return cls.like(geometry, (distance <= radius).astype(np.uint8))

    @staticmethod
    def like(geometry: sitk.Image, array: np.ndarray) -> sitk.Image:
        """``array`` (slices, rows, cols) as an image on ``geometry``'s grid; bools become UInt8."""
        image = sitk.GetImageFromArray(array.astype(np.uint8) if array.dtype == bool else array)
        image.CopyInformation(geometry)
        return image


@pytest.fixture(scope="session")
def export_grid_kit() -> type[ExportGridKit]:
    return ExportGridKit


@pytest.fixture(scope="session")
def export_artefacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the export tests leave files worth looking at (rendered previews, reports)."""
    return tmp_path_factory.mktemp("export-artefacts")
