"""Value hygiene for what we write: DICOM limits that libraries do not enforce for us."""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.valuerep import DSfloat

#: PS3.5 Table 6.2-1: a DS value holds at most 16 characters.
DS_MAX_CHARS = 16


def fit_decimal_strings(ds: Dataset) -> int:
    """Re-format every DS value longer than 16 characters, in place; returns how many.

    Values copied from a sloppy source (e.g. ImagePositionPatient written as a Python float repr,
    "-29.189999999999998") would otherwise make our object invalid. pydicom's auto_format keeps
    as many significant digits as fit.
    """
    fixed = 0
    for element in ds.iterall():
        if element.VR != "DS" or element.value is None or element.is_empty:
            continue
        values = list(element.value) if element.VM > 1 else [element.value]
        if all(len(str(v)) <= DS_MAX_CHARS for v in values):
            continue
        formatted = [DSfloat(float(v), auto_format=True) for v in values]
        element.value = formatted if element.VM > 1 else formatted[0]
        fixed += 1
    return fixed
