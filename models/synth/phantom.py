"""Analytic head-and-neck anatomy in planning patient coordinates (LPS, mm).

The phantom is a list of (tissue, solid) layers painted in order, later layers
over earlier ones. Because it is a function of position, any grid can be
evaluated: the planning CT grid directly, a follow-up grid through the true
transform. Landmarks (approximate): brain centre (0, 10, 40); temporal lobes
centred at (±46, -2, -4); mandibular body z -86…-62 with the chin at y ≈ -64;
cervical spine at (0, 26) below z = -48.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from .shapes import Arch, Box, Cylinder, Ellipsoid, Slabs, Solid, Union
from .tissues import Tissue

CEREBRUM = Ellipsoid((0.0, 10.0, 40.0), (64.0, 82.0, 58.0))
CEREBELLUM = Ellipsoid((0.0, 58.0, -12.0), (48.0, 28.0, 24.0))
TEMPORAL_LOBES = {side: Ellipsoid((46.0 * side, -2.0, -4.0), (19.0, 32.0, 22.0)) for side in (-1, 1)}
INTRACRANIAL = Union((CEREBRUM, CEREBELLUM, *TEMPORAL_LOBES.values()))

MANDIBLE_BODY = Arch((0.0, -12.0), (44.0, 52.0), 5.0, (-86.0, -62.0))
MANDIBLE_RAMI = Union(
    tuple(Box((44.0 * s - 4.0, -20.0, -86.0), (44.0 * s + 4.0, 10.0, -38.0)) for s in (-1, 1))
)
MANDIBLE = Union((MANDIBLE_BODY, MANDIBLE_RAMI))

BODY = Union(
    (
        INTRACRANIAL.grown(14.0),
        Ellipsoid((0.0, -25.0, -20.0), (64.0, 58.0, 40.0)),  # midface
        Ellipsoid((0.0, -15.0, -68.0), (64.0, 66.0, 42.0)),  # jaw
        Cylinder((0.0, 15.0), (55.0, 55.0), (-400.0, -30.0)),  # neck
    )
)

_SPINE_Z = (-400.0, -48.0)
_VERTEBRAL_BODY = Cylinder((0.0, 26.0), (10.0, 10.0), _SPINE_Z)
_CANAL = Cylinder((0.0, 46.0), (7.5, 7.5), _SPINE_Z)
_TEETH_THETA = (0.12, 0.36, 0.6, 0.84, 1.08, 1.3)


def _skull() -> list[tuple[Tissue, Solid]]:
    # Inner and outer tables of cortical bone around a marrow (diploe) layer,
    # with a thin CSF space between skull and brain.
    return [
        (Tissue.CORTICAL_BONE, INTRACRANIAL.grown(8.0)),
        (Tissue.MARROW, INTRACRANIAL.grown(6.0)),
        (Tissue.CORTICAL_BONE, INTRACRANIAL.grown(4.0)),
        (Tissue.CSF, INTRACRANIAL.grown(2.0)),
    ]


def _brain() -> list[tuple[Tissue, Solid]]:
    layers: list[tuple[Tissue, Solid]] = []
    for lobe in (CEREBRUM, CEREBELLUM):
        layers += [(Tissue.GREY_MATTER, lobe), (Tissue.WHITE_MATTER, lobe.grown(-4.0))]
    for lobe in TEMPORAL_LOBES.values():
        # A CSF cleft (the Sylvian fissure) keeps each temporal lobe distinct.
        layers += [
            (Tissue.CSF, lobe.grown(1.5)),
            (Tissue.GREY_MATTER, lobe),
            (Tissue.WHITE_MATTER, lobe.grown(-4.0)),
        ]
    ventricles = Union(
        (
            Ellipsoid((-13.0, 8.0, 48.0), (7.0, 32.0, 11.0)),
            Ellipsoid((13.0, 8.0, 48.0), (7.0, 32.0, 11.0)),
            Ellipsoid((0.0, 15.0, 30.0), (2.5, 14.0, 8.0)),
        )
    )
    brainstem = Cylinder((0.0, 40.0), (11.0, 11.0), (-48.0, 22.0))
    layers += [(Tissue.CSF, ventricles), (Tissue.CSF, brainstem.grown(2.0))]
    layers += [(Tissue.WHITE_MATTER, brainstem)]
    return layers


def _face() -> list[tuple[Tissue, Solid]]:
    layers: list[tuple[Tissue, Solid]] = []
    for s in (-1, 1):
        layers += [
            (Tissue.FAT, Ellipsoid((32.0 * s, -50.0, -4.0), (15.0, 18.0, 13.0))),
            (Tissue.VITREOUS, Ellipsoid((32.0 * s, -56.0, -2.0), (11.0, 11.0, 11.0))),
        ]
    airways = Union(
        (
            Ellipsoid((0.0, -48.0, -28.0), (9.0, 20.0, 16.0)),  # nasal cavity
            Ellipsoid((-27.0, -40.0, -32.0), (13.0, 14.0, 13.0)),  # maxillary sinuses
            Ellipsoid((27.0, -40.0, -32.0), (13.0, 14.0, 13.0)),
            Ellipsoid((0.0, -12.0, -36.0), (14.0, 12.0, 11.0)),  # nasopharynx
            Cylinder((0.0, -3.0), (10.0, 7.0), (-400.0, -38.0)),  # oro/hypopharynx
        )
    )
    layers.append((Tissue.AIR, airways))
    return layers


def _mandible() -> list[tuple[Tissue, Solid]]:
    teeth = []
    for theta in _TEETH_THETA:
        for s in (-1, 1):
            x, y, _ = MANDIBLE_BODY.point_at(s * theta, 0.0)
            teeth.append(Ellipsoid((x, y, -56.0), (3.5, 3.5, 6.5)))
    return [
        (Tissue.CORTICAL_BONE, MANDIBLE),
        (Tissue.MARROW, MANDIBLE.grown(-2.0)),
        (Tissue.TOOTH, Union(tuple(teeth))),
    ]


def _spine() -> list[tuple[Tissue, Solid]]:
    arch = Union(
        (
            Cylinder((0.0, 46.0), (12.5, 12.5), _SPINE_Z),
            Box((-3.0, 55.0, _SPINE_Z[0]), (3.0, 66.0, _SPINE_Z[1])),  # spinous process
        )
    )
    return [
        (Tissue.CORTICAL_BONE, arch),
        (Tissue.CORTICAL_BONE, _VERTEBRAL_BODY),
        (Tissue.MARROW, _VERTEBRAL_BODY.grown(-1.5)),
        (Tissue.DISC, Slabs(_VERTEBRAL_BODY, 18.0, 4.0)),
        (Tissue.CSF, _CANAL),
        (Tissue.CORD, Cylinder((0.0, 46.0), (5.0, 5.0), _SPINE_Z)),
    ]


@cache
def layers() -> tuple[tuple[Tissue, Solid], ...]:
    """The painting order: (tissue, solid) pairs, later ones win."""
    body: list[tuple[Tissue, Solid]] = [
        (Tissue.SOFT, BODY),
        (Tissue.FAT, BODY.grown(-1.5)),  # skin over subcutaneous fat
        (Tissue.SOFT, BODY.grown(-6.0)),
    ]
    return tuple(body + _skull() + _brain() + _face() + _mandible() + _spine())


def _overlaps(bbox: tuple[np.ndarray, np.ndarray], lo: np.ndarray, hi: np.ndarray) -> bool:
    return bool(np.all(bbox[0] <= hi) and np.all(bbox[1] >= lo))


def _paint_block(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    labels = np.full(x.shape, Tissue.AIR, dtype=np.uint8)
    lo = np.array([x.min(), y.min(), z.min()])
    hi = np.array([x.max(), y.max(), z.max()])
    for tissue, solid in layers():
        if _overlaps(solid.bbox(), lo, hi):
            labels[solid.contains(x, y, z)] = tissue
    return labels


def tissue_labels(x: np.ndarray, y: np.ndarray, z: np.ndarray, block_points: int = 100_000) -> np.ndarray:
    """Tissue label at each point.

    Parameters
    ----------
    x, y, z : numpy.ndarray
        Patient coordinates (mm, planning frame), same shape; for image grids
        shape (slices, rows, columns).
    block_points : int
        Points are painted in blocks of about this many, split along the first
        axis; solids whose bounding box misses a block are skipped, which is
        where the speed comes from (blocks of whole slices are compact).

    Returns
    -------
    numpy.ndarray
        uint8 labels (:class:`models.synth.tissues.Tissue`), same shape as x.
    """
    if x.ndim == 0:
        return _paint_block(x, y, z)
    per_entry = int(np.prod(x.shape[1:], dtype=int))
    step = max(1, block_points // max(per_entry, 1))
    out = np.empty(x.shape, dtype=np.uint8)
    for start in range(0, x.shape[0], step):
        sl = slice(start, start + step)
        out[sl] = _paint_block(x[sl], y[sl], z[sl])
    return out


def body_contains(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """True inside the external body outline."""
    return BODY.contains(x, y, z)
