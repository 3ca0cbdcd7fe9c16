"""Errors of the model package.

A user causes these by naming a file that is not a usable checkpoint, a text model directory
that cannot be loaded offline, or prompts that do not fit the volume. Each carries a stable
``code`` like the worker's errors so the CLI and the API can map it in one place, and a message
that names the file or key at fault (never patient data).
"""

from __future__ import annotations


class CodedError(Exception):
    """An error with a stable ``code`` and a message fit for a user (no patient data).

    The worker's stage errors derive from it too (``models`` is the bottom layer), so the CLI,
    the API and the DICOM node map one kind of error.
    """

    code = "error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return self.message


class ModelError(CodedError):
    """Base class of the model package's user-facing errors."""

    code = "model-error"


class CheckpointError(ModelError):
    """A checkpoint file is missing, unreadable, untrusted or does not fit the network."""

    code = "invalid-checkpoint"


class TextEncoderError(ModelError):
    """A text feature extractor cannot be loaded from local files."""

    code = "invalid-text-encoder"


class PromptInputError(ModelError):
    """Prompts (box, clicks, text features, mask) do not fit the volume or the network."""

    code = "invalid-prompt"


class ExportError(ModelError):
    """An ONNX export failed or its outputs disagree with PyTorch."""

    code = "export-failed"
