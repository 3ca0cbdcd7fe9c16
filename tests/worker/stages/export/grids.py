"""Follow-up series of every geometry the outputs must survive, and lesions placed in them.

Each grid is a real series written to disk (tests/factories.py) and read by the read stage, so
the outputs are built exactly as in the product: from an ImageVolume and its source planes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from tests.factories import SeriesSpec, uid, write_enhanced_mr, write_series
from worker.stages.read.series import ImageVolume, read_image_series

LESION_CENTRE = np.array([6.0, -14.0, 22.0])


def _rotation(axis: tuple[float, float, float], degrees: float) -> np.ndarray:
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    t = np.deg2rad(degrees)
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k


@dataclass(frozen=True)
class Grid:
    modality: str
    row_dir: tuple[float, float, float]
    col_dir: tuple[float, float, float]
    pixel_spacing: tuple[float, float]  # (between rows, between columns)
    slice_spacing: float
    size: int  # rows = cols
    slices: int
    patient_position: str = "HFS"
    enhanced: bool = False

    def spec(self, name: str) -> SeriesSpec:
        row, col = np.asarray(self.row_dir, float), np.asarray(self.col_dir, float)
        normal = np.cross(row, col)
        half_extent = (
            row * self.pixel_spacing[1] * (self.size - 1) / 2
            + col * self.pixel_spacing[0] * (self.size - 1) / 2
            + normal * self.slice_spacing * (self.slices - 1) / 2
        )
        # A centre a third of a voxel off the lesion centre: lesions don't align with voxels.
        origin = (
            LESION_CENTRE + 0.31 * np.asarray((*self.pixel_spacing[::-1], self.slice_spacing)) - half_extent
        )
        positions = [list(origin + k * self.slice_spacing * normal) for k in range(self.slices)]
        return SeriesSpec(
            positions=positions,
            orientation=(*self.row_dir, *self.col_dir),
            pixel_spacing=self.pixel_spacing,
            rows=self.size,
            cols=self.size,
            modality=self.modality,
            patient_position=self.patient_position,
            series_description=f"follow-up {name}",
            series_instance_uid=uid("followup", name),
            name=name,
        )

    def write(self, folder: Path, name: str) -> ImageVolume:
        spec = self.spec(name)
        if self.enhanced:
            paths = [write_enhanced_mr(spec, folder / f"{name}.dcm", frame_order=range(self.slices)[::-1])]
        else:
            paths = write_series(spec, folder / name)
        return read_image_series(paths)


_OBLIQUE = _rotation((0.3, 1.0, 0.4), 25.0)
GRIDS: dict[str, Grid] = {
    "ct-axial": Grid("CT", (1, 0, 0), (0, 1, 0), (0.8, 0.8), 2.0, 40, 16),
    "ct-nonsquare": Grid("CT", (1, 0, 0), (0, 1, 0), (0.6, 1.1), 2.5, 44, 14),
    "ct-feet-first": Grid("CT", (-1, 0, 0), (0, 1, 0), (0.9, 0.9), 2.0, 36, 16, patient_position="FFS"),
    "mr-oblique": Grid("MR", tuple(_OBLIQUE[:, 0]), tuple(_OBLIQUE[:, 1]), (0.9, 0.9), 1.5, 36, 20),
    "mr-sagittal-nonsquare": Grid("MR", (0, 1, 0), (0, 0, -1), (1.2, 0.7), 2.0, 44, 16),
    "mr-enhanced": Grid("MR", (1, 0, 0), (0, 1, 0), (1.0, 1.0), 2.0, 32, 16, enhanced=True),
}


def physical_points(image: sitk.Image) -> np.ndarray:
    """LPS centre of every voxel, shape (slices, rows, cols, 3) like the image array."""
    size = image.GetSize()
    k, j, i = np.meshgrid(*(np.arange(n) for n in size[::-1]), indexing="ij")
    index = np.stack([i, j, k], axis=-1).reshape(-1, 3).astype(np.float64)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    points = np.asarray(image.GetOrigin()) + (index * np.asarray(image.GetSpacing())) @ direction.T
    return points.reshape(size[2], size[1], size[0], 3)


def mask_image(volume: ImageVolume, inside: Callable[[np.ndarray], np.ndarray]) -> sitk.Image:
    """A UInt8 mask on the volume's grid: voxels whose centres satisfy ``inside``."""
    array = inside(physical_points(volume.image)).astype(np.uint8)
    mask = sitk.GetImageFromArray(array)
    mask.CopyInformation(volume.image)
    return mask


def sphere(volume: ImageVolume, cc: float, centre: np.ndarray = LESION_CENTRE) -> sitk.Image:
    radius = (3 * cc * 1000 / (4 * np.pi)) ** (1 / 3)
    return mask_image(volume, lambda p: np.linalg.norm(p - centre, axis=-1) <= radius)


def ring_and_island(volume: ImageVolume) -> sitk.Image:
    """A hollow sphere (a hole on the middle slices) and a separate small island."""

    def inside(p: np.ndarray) -> np.ndarray:
        d = np.linalg.norm(p - LESION_CENTRE, axis=-1)
        island = np.linalg.norm(p - (LESION_CENTRE + np.array([0.0, 0.0, 0.0]) + 11.0), axis=-1) <= 3.0
        return ((d <= 8.0) & (d >= 4.0)) | island

    return mask_image(volume, inside)


@dataclass
class Written:
    """A grid written to disk and read back: the volume, its source headers and its folder."""

    name: str
    grid: Grid
    volume: ImageVolume
    folder: Path


def write_grids(root: Path) -> dict[str, Written]:
    written = {}
    for name, grid in GRIDS.items():
        volume = grid.write(root, name)
        folder = root / name if not grid.enhanced else root
        written[name] = Written(name, grid, volume, folder)
    return written


def task_for(grid: Grid) -> str:
    return "orn" if grid.modality == "CT" else "crn"
