"""The names of a job's outputs (kept apart from the writers so the API can use them cheaply)."""

from __future__ import annotations

OUTPUT_FILES = {
    "seg": "seg.dcm",
    "rtstruct": "rtstruct.dcm",
    "sr": "sr.dcm",
    "report": "report.json",
    "preview": "preview.png",
}

#: Media types of the outputs, for downloads.
MEDIA_TYPES = {
    "seg": "application/dicom",
    "rtstruct": "application/dicom",
    "sr": "application/dicom",
    "report": "application/json",
    "preview": "image/png",
}
