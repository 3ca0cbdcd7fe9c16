"""Enumerated and coded values of the Spatial Registration IOD (PS3.3 C.20.2, CID 7100)."""

from __future__ import annotations

from enum import StrEnum
from typing import NamedTuple


class MatrixTypeValues(StrEnum):
    """Frame of Reference Transformation Matrix Type (0070,030C)."""

    RIGID = "RIGID"  # rotation and translation: the 3×3 part is orthonormal
    RIGID_SCALE = "RIGID_SCALE"  # rotation, translation and scaling along orthogonal axes
    AFFINE = "AFFINE"  # any matrix whose last row is (0, 0, 0, 1)


class Code(NamedTuple):
    """A coded concept (Code Sequence Macro): value, scheme designator, meaning."""

    value: str
    scheme_designator: str
    meaning: str


class RegistrationTypeCodes:
    """Registration Type Code Sequence (0070,030D) values, from CID 7100 "RCS Registration Method"."""

    #: Found by an algorithm from the image contents (our intensity registration).
    IMAGE_CONTENT_BASED = Code("125024", "DCM", "Image Content-based Alignment")
    #: No registration: the frame is the registration object's own frame.
    FRAME_OF_REFERENCE_IDENTITY = Code("125021", "DCM", "Frame of Reference Identity")
