"""Tissue classes of the phantom and their appearance per imaging contrast.

Values are typical, not measured: CT in Hounsfield units; the MR columns are
arbitrary signal units on a 12-bit scale, ordered as the tissues appear on a
T2-FLAIR (CSF suppressed, grey brighter than white matter) and on a fat-
saturated contrast-enhanced T1 (white brighter than grey, fat suppressed).
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np


class Tissue(IntEnum):
    """Label values of :func:`models.synth.phantom.tissue_labels`."""

    AIR = 0
    SOFT = 1
    FAT = 2
    CORTICAL_BONE = 3
    MARROW = 4
    GREY_MATTER = 5
    WHITE_MATTER = 6
    CSF = 7
    VITREOUS = 8
    TOOTH = 9
    DISC = 10
    CORD = 11


# (CT HU, T2-FLAIR, T1 post-contrast fat-saturated) per tissue.
_APPEARANCE: dict[Tissue, tuple[float, float, float]] = {
    Tissue.AIR: (-1000.0, 0.0, 0.0),
    Tissue.SOFT: (45.0, 230.0, 330.0),
    Tissue.FAT: (-95.0, 290.0, 70.0),
    Tissue.CORTICAL_BONE: (1350.0, 15.0, 15.0),
    Tissue.MARROW: (320.0, 190.0, 140.0),
    Tissue.GREY_MATTER: (38.0, 430.0, 380.0),
    Tissue.WHITE_MATTER: (29.0, 340.0, 480.0),
    Tissue.CSF: (6.0, 45.0, 90.0),
    Tissue.VITREOUS: (8.0, 60.0, 80.0),
    Tissue.TOOTH: (2200.0, 10.0, 10.0),
    Tissue.DISC: (85.0, 210.0, 260.0),
    Tissue.CORD: (34.0, 360.0, 420.0),
}

CONTRASTS = ("ct", "flair", "t1c")


def appearance_table(contrast: str) -> np.ndarray:
    """Lookup table label → value for one contrast ("ct", "flair" or "t1c")."""
    if contrast not in CONTRASTS:
        raise ValueError(f"contrast must be one of {CONTRASTS}, got {contrast!r}")
    column = CONTRASTS.index(contrast)
    table = np.zeros(len(Tissue), dtype=np.float32)
    for tissue, values in _APPEARANCE.items():
        table[tissue] = values[column]
    return table


def is_parenchyma(labels: np.ndarray) -> np.ndarray:
    """Brain tissue proper (grey or white matter), excluding CSF."""
    return (labels == Tissue.GREY_MATTER) | (labels == Tissue.WHITE_MATTER)


def is_bone(labels: np.ndarray) -> np.ndarray:
    """Cortical or cancellous bone."""
    return (labels == Tissue.CORTICAL_BONE) | (labels == Tissue.MARROW)
