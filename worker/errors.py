"""Domain errors of the worker stages.

Every error a user can cause with their input derives from :class:`InputError` and carries a
stable ``code`` (used for HTTP problem types, DIMSE statuses and CLI exit lines) and a message
that names the DICOM attribute or file at fault. Messages never contain patient identifiers.
"""

from __future__ import annotations

from models.errors import CodedError


class StageError(CodedError):
    """Base class of every error raised by a pipeline stage."""

    code = "stage-error"


class InputError(StageError):
    """The input cannot be used as it is; the user must fix it."""

    code = "invalid-input"


class DicomReadError(InputError):
    """A file is not DICOM, is truncated, or its pixel data cannot be decoded."""

    code = "unreadable-dicom"


class GeometryError(InputError):
    """An image or dose grid has no usable or no consistent patient geometry."""

    code = "invalid-geometry"


class DoseError(InputError):
    """An RTDOSE cannot be turned into absolute dose in Gy."""

    code = "invalid-dose"


class BrokenReferenceError(InputError):
    """An RT object references instances or frames of reference that are not present."""

    code = "broken-reference"


class AssemblyError(InputError):
    """The set of instances does not make a valid case (roles, patients, frames of reference)."""

    code = "invalid-study"


class PromptError(InputError):
    """The planning dose gives no usable high-dose region on the follow-up scan."""

    code = "no-high-dose-region"


class SpatialRegistrationError(InputError):
    """A Spatial Registration (REG) object is of an unsupported kind or holds unusable matrices."""

    code = "invalid-spatial-registration"


class RegistrationError(StageError):
    """Intensity-based registration could not run at all (e.g. the images never overlap).

    An implausible but computed registration is not an error: it is returned with review flags.
    """

    code = "registration-failed"
