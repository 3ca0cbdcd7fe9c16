"""Analytic solids used to build the phantom.

Every solid answers ``contains(x, y, z)`` for arrays of patient coordinates
(mm, any matching shape) and gives an axis-aligned bounding box, so callers can
skip solids that cannot touch a block of points. ``grown(d)`` returns the solid
offset outward by ``d`` mm (inward for negative ``d``); for ellipsoids this
scales the semi-axes, which is close to a true offset surface for the
near-spherical shapes used here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import ArrayLike

Vec3 = tuple[float, float, float]


class Solid(Protocol):
    """What every solid of the phantom answers."""

    def contains(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray: ...

    def bbox(self) -> tuple[np.ndarray, np.ndarray]: ...

    def grown(self, d: float) -> Solid: ...


def vec3(values: Iterable[float]) -> Vec3:
    """Three floats as a typed (x, y, z) tuple."""
    x, y, z = (float(v) for v in values)
    return (x, y, z)


def _box(lo: ArrayLike, hi: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(lo, float), np.asarray(hi, float)


@dataclass(frozen=True)
class Ellipsoid:
    """Axis-aligned ellipsoid."""

    centre: Vec3
    semi: Vec3

    def contains(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        (cx, cy, cz), (a, b, c) = self.centre, self.semi
        return ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 + ((z - cz) / c) ** 2 <= 1.0

    def bbox(self) -> tuple[np.ndarray, np.ndarray]:
        c, s = np.asarray(self.centre), np.asarray(self.semi)
        return _box(c - s, c + s)

    def grown(self, d: float) -> Ellipsoid:
        return Ellipsoid(self.centre, vec3(s + d for s in self.semi))


@dataclass(frozen=True)
class Cylinder:
    """Elliptic cylinder along z, between ``z_range[0]`` and ``z_range[1]``."""

    centre_xy: tuple[float, float]
    semi_xy: tuple[float, float]
    z_range: tuple[float, float]

    def contains(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        (cx, cy), (a, b) = self.centre_xy, self.semi_xy
        inside = ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 <= 1.0
        return inside & (z >= self.z_range[0]) & (z <= self.z_range[1])

    def bbox(self) -> tuple[np.ndarray, np.ndarray]:
        (cx, cy), (a, b) = self.centre_xy, self.semi_xy
        return _box([cx - a, cy - b, self.z_range[0]], [cx + a, cy + b, self.z_range[1]])

    def grown(self, d: float) -> Cylinder:
        semi = (self.semi_xy[0] + d, self.semi_xy[1] + d)
        return Cylinder(self.centre_xy, semi, (self.z_range[0] - d, self.z_range[1] + d))


@dataclass(frozen=True)
class Box:
    """Axis-aligned box."""

    lo: Vec3
    hi: Vec3

    def contains(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        (x0, y0, z0), (x1, y1, z1) = self.lo, self.hi
        return (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1) & (z >= z0) & (z <= z1)

    def bbox(self) -> tuple[np.ndarray, np.ndarray]:
        return _box(self.lo, self.hi)

    def grown(self, d: float) -> Box:
        return Box(vec3(v - d for v in self.lo), vec3(v + d for v in self.hi))


@dataclass(frozen=True)
class Arch:
    """A U-shaped bar: the anterior half of an elliptic arc in the axial plane.

    Points within ``half_width`` of the arc (measured along the ray from the arc
    centre) and between ``z_range`` belong to it. This is the mandibular body.
    """

    centre_xy: tuple[float, float]
    semi_xy: tuple[float, float]
    half_width: float
    z_range: tuple[float, float]

    def contains(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        (cx, cy), (a, b) = self.centre_xy, self.semi_xy
        dx, dy = x - cx, y - cy
        rho = np.maximum(np.sqrt((dx / a) ** 2 + (dy / b) ** 2), 1e-6)
        dist = np.sqrt(dx**2 + dy**2) * np.abs(1.0 - 1.0 / rho)
        # Anterior half only: patient anterior is -y.
        band = (dist <= self.half_width) & (dy <= 0.0)
        return band & (z >= self.z_range[0]) & (z <= self.z_range[1])

    def bbox(self) -> tuple[np.ndarray, np.ndarray]:
        (cx, cy), (a, b) = self.centre_xy, self.semi_xy
        w = self.half_width
        return _box([cx - a - w, cy - b - w, self.z_range[0]], [cx + a + w, cy, self.z_range[1]])

    def grown(self, d: float) -> Arch:
        zr = (self.z_range[0] - d, self.z_range[1] + d)
        return Arch(self.centre_xy, self.semi_xy, self.half_width + d, zr)

    def point_at(self, theta: float, z: float) -> np.ndarray:
        """Point on the arc centre line; ``theta`` 0 is the chin, ±π/2 the ends."""
        (cx, cy), (a, b) = self.centre_xy, self.semi_xy
        return np.array([cx + a * np.sin(theta), cy - b * np.cos(theta), z])


@dataclass(frozen=True)
class Slabs:
    """Periodic slabs along z inside a cylinder: intervertebral discs."""

    cylinder: Cylinder
    period: float
    thickness: float

    def contains(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        phase = np.mod(z - self.cylinder.z_range[0], self.period)
        return self.cylinder.contains(x, y, z) & (phase < self.thickness)

    def bbox(self) -> tuple[np.ndarray, np.ndarray]:
        return self.cylinder.bbox()

    def grown(self, d: float) -> Slabs:
        return Slabs(self.cylinder.grown(d), self.period, self.thickness + 2 * d)


@dataclass(frozen=True)
class Union:
    """Union of solids; ``grown`` offsets every part."""

    parts: tuple[Solid, ...]

    def contains(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        out = np.zeros(np.broadcast(x, y, z).shape, dtype=bool)
        for part in self.parts:
            out |= part.contains(x, y, z)
        return out

    def bbox(self) -> tuple[np.ndarray, np.ndarray]:
        boxes = [p.bbox() for p in self.parts]
        return np.min([b[0] for b in boxes], axis=0), np.max([b[1] for b in boxes], axis=0)

    def grown(self, d: float) -> Union:
        return Union(tuple(p.grown(d) for p in self.parts))
