"""Axial image grids in DICOM patient coordinates (LPS, mm).

All synthetic series are head-first-supine axial stacks, so the image
orientation is always ``[1, 0, 0, 0, 1, 0]``: columns run along +x (patient
left), rows along +y (posterior), slices along +z (head).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .shapes import vec3

AXIAL_IOP = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)

# Positions are rounded before use so the value written to the DICOM header
# (a decimal string) is exactly the value the voxels were sampled at.
_DECIMALS = 3


@dataclass(frozen=True)
class Grid:
    """An axial voxel grid.

    Parameters
    ----------
    origin : tuple of float
        Patient position (x, y, z) of the centre of voxel (slice 0, row 0,
        column 0), i.e. ImagePositionPatient of the first slice.
    spacing : tuple of float
        (column spacing along x, row spacing along y, slice spacing along z)
        in mm. DICOM PixelSpacing is (row spacing, column spacing).
    shape : tuple of int
        (slices, rows, columns), the layout of the pixel arrays.
    """

    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]

    @classmethod
    def centred(
        cls,
        centre: np.ndarray | tuple[float, float, float],
        spacing: tuple[float, float, float],
        shape: tuple[int, int, int],
    ) -> Grid:
        """Build a grid whose voxel block is centred on ``centre`` (x, y, z)."""
        nz, ny, nx = shape
        counts = np.array([nx, ny, nz], dtype=float)
        origin = np.asarray(centre, float) - (counts - 1) / 2 * np.asarray(spacing)
        rounded = [round(float(v), _DECIMALS) for v in origin]
        nz_, ny_, nx_ = (int(n) for n in shape)
        return cls(vec3(rounded), vec3(spacing), (nz_, ny_, nx_))

    @property
    def pixel_spacing(self) -> tuple[float, float]:
        """DICOM PixelSpacing: (row spacing, column spacing)."""
        return (self.spacing[1], self.spacing[0])

    @property
    def voxel_volume_mm3(self) -> float:
        """Volume of one voxel in mm³."""
        return float(np.prod(self.spacing))

    def slice_z(self, k: int) -> float:
        """z of slice ``k``, rounded as written in ImagePositionPatient."""
        return round(self.origin[2] + k * self.spacing[2], _DECIMALS)

    def slice_position(self, k: int) -> tuple[float, float, float]:
        """ImagePositionPatient of slice ``k``."""
        return (self.origin[0], self.origin[1], self.slice_z(k))

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Coordinates of voxel centres along x (columns), y (rows), z (slices)."""
        nz, ny, nx = self.shape
        x = self.origin[0] + np.arange(nx) * self.spacing[0]
        y = self.origin[1] + np.arange(ny) * self.spacing[1]
        z = np.array([self.slice_z(k) for k in range(nz)])
        return x, y, z

    def points(self, dtype: type = np.float32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Voxel-centre coordinates as three arrays of shape (slices, rows, columns)."""
        x, y, z = self.axes()
        zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
        return xx.astype(dtype), yy.astype(dtype), zz.astype(dtype)

    def index_to_patient(self, index: np.ndarray) -> np.ndarray:
        """Map (slice, row, column) indices, shape (N, 3), to patient (x, y, z)."""
        idx = np.asarray(index, float)
        step = np.array([self.spacing[2], self.spacing[1], self.spacing[0]])
        kji = idx * step
        return np.stack([kji[:, 2], kji[:, 1], kji[:, 0]], axis=1) + np.asarray(self.origin)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Lowest and highest voxel-centre positions (x, y, z)."""
        x, y, z = self.axes()
        return np.array([x[0], y[0], z[0]]), np.array([x[-1], y[-1], z[-1]])
