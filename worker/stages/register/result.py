"""Typed result of the register stage.

Convention (SimpleITK's): the transform maps points of the *fixed* image (the follow-up scan) to
points of the *moving* image (the planning CT). Resampling the planning dose onto the follow-up
grid uses it as is; mapping planning-space points onto the follow-up needs its inverse.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import SimpleITK as sitk


class RegistrationMethod(StrEnum):
    """How the transform was obtained."""

    IDENTITY = "identity"  # follow-up and planning CT share a frame of reference
    REG_OBJECT = "reg-object"  # a DICOM Spatial Registration supplied by the clinic
    RIGID = "rigid"
    RIGID_BSPLINE = "rigid+bspline"


@dataclass
class RegistrationQA:
    """Figures a physicist checks before trusting a registration."""

    metric_before: float | None = None
    metric_after: float | None = None
    body_overlap_before: float | None = None
    body_overlap_after: float | None = None
    rotation_degrees: float = 0.0
    translation_mm: float = 0.0
    jacobian_min: float | None = None
    jacobian_max: float | None = None
    seconds: float = 0.0


@dataclass
class RegistrationResult:
    """The follow-up → planning transform, how it was made, and whether to trust it."""

    transform: sitk.Transform
    method: RegistrationMethod
    qa: RegistrationQA
    flags: list[str] = field(default_factory=list)
    #: What was decided and why (e.g. a deformable refinement tried and not kept); unlike
    #: ``flags`` these do not call for review.
    notes: list[str] = field(default_factory=list)

    @property
    def needs_review(self) -> bool:
        """Implausible figures: the case is flagged for review, never used silently."""
        return bool(self.flags)
