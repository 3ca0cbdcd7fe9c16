"""Opening DICOM files with specific errors instead of library exceptions.

pydicom reads a truncated file without complaint (the pixel data simply comes out short) and
refuses a valid file that lacks the 128-byte preamble; both cases are handled here so that every
later stage can trust the datasets it gets.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.tag import BaseTag
from pydicom.valuerep import VR

from worker.errors import DicomReadError, InputError
from worker.logs import register_identifiers

#: Attributes every composite instance must carry for us to place it in a study.
REQUIRED_IDENTIFIERS = ("SOPClassUID", "SOPInstanceUID")
#: Values larger than this are not read with the header (pixel data, mostly).
DEFER_BYTES = 4096
UNDEFINED_LENGTH = 0xFFFFFFFF
#: What pydicom raises on a damaged file: a file cut inside an element header gives struct.error,
#: a value of impossible length BytesLengthException, an invalid value (strict mode) ValueError,
#: a damaged deflated dataset zlib.error. Values are converted on first access, so interpreting a
#: dataset raises them too, and more: an unknown VR gives NotImplementedError, a sequence item cut
#: short OSError, a value of the wrong kind breaks int(), float() or indexing (the last four found
#: by fuzz/fuzz_dicom.py).
PARSE_ERRORS = (
    OSError,
    EOFError,
    ValueError,
    KeyError,
    TypeError,
    AttributeError,
    IndexError,
    NotImplementedError,
    struct.error,
    zlib.error,
    BytesLengthException,
)
#: Error code of a DICOM file cut short (as opposed to a file that is not DICOM at all).
TRUNCATED = "truncated-file"
#: Value representations that DICOM defines (an explicit-VR file naming another one is damaged).
KNOWN_VRS = frozenset(vr.value for vr in VR if " or " not in vr.value)
#: Bytes per value of the binary value representations: a value of another length cannot be read.
BINARY_VALUE_BYTES = {
    "AT": 4, "FD": 8, "FL": 4, "OD": 8, "OF": 4, "OL": 4, "OV": 8, "OW": 2,
    "SL": 4, "SS": 2, "SV": 8, "UL": 4, "US": 2, "UV": 8,
}  # fmt: skip


@contextmanager
def malformed_values(path: Path) -> Iterator[None]:
    """Report a file whose attribute values cannot be interpreted as unreadable, by its name.

    Readers interpret a dataset inside this block. Our own errors pass unchanged; the library's
    and the builtins' become a :class:`DicomReadError` that names the kind of failure only (their
    messages may quote values, so patient data).
    """
    try:
        yield
    except InputError:
        raise
    except PARSE_ERRORS as exc:
        raise DicomReadError(f"{path.name}: attribute values cannot be read ({type(exc).__name__})") from exc


def read_header(path: Path) -> Dataset:
    """Read a file's attributes without loading its pixel data.

    Large values (pixel data above all) are deferred: their declared lengths are checked
    against the file size, which finds a truncated file without reading it.

    Parameters
    ----------
    path: pathlib.Path
        The file to read.

    Returns
    -------
    pydicom.dataset.Dataset
        The dataset, pixel data excluded.

    Raises
    ------
    worker.errors.DicomReadError
        The file is not DICOM, lacks SOP identification, or is shorter than its pixel data.
    """
    return _read(path, stop_before_pixels=False, defer_size=DEFER_BYTES)


def read_dataset(path: Path) -> Dataset:
    """Read a whole file, pixel data included, with the same checks as :func:`read_header`."""
    ds = _read(path, stop_before_pixels=False)
    with malformed_values(path):
        _check_native_pixel_length(ds, path)
    return ds


def _read(path: Path, *, stop_before_pixels: bool, defer_size: int | None = None) -> Dataset:
    ds: Dataset
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, defer_size=defer_size)
    except InvalidDicomError:
        # Some exporters omit the preamble and 'DICM' prefix; accept such a file only when a
        # forced parse finds the SOP identification, so random bytes are still refused.
        ds = _read_forced(path, stop_before_pixels, defer_size)
    except PARSE_ERRORS as exc:
        raise DicomReadError(f"{path.name}: not a readable DICOM file ({type(exc).__name__})") from exc
    # Presence first (garbage is not DICOM, whatever lengths it seems to declare), then lengths
    # before any value is converted: a converted element no longer records where its value
    # ends, so a file cut inside one (SOPInstanceUID, say) would otherwise pass.
    missing = [k for k in REQUIRED_IDENTIFIERS if k not in ds]
    if not missing:
        _check_not_truncated(ds, path)
        _check_value_representations(ds, path)
        try:
            missing = [k for k in REQUIRED_IDENTIFIERS if not ds.get(k)]
        except PARSE_ERRORS as exc:
            raise DicomReadError(
                f"{path.name}: SOP identification unreadable ({type(exc).__name__})"
            ) from exc
    if missing:
        raise DicomReadError(f"{path.name}: not a DICOM composite instance (missing {', '.join(missing)})")
    # Every header this process reads passes here: its patient's names and ids are kept out of
    # every later log line (worker.logs).
    register_identifiers(ds)
    return ds


def _read_forced(path: Path, stop_before_pixels: bool, defer_size: int | None) -> Dataset:
    if os.path.getsize(path) == 0:
        raise DicomReadError(f"{path.name}: empty file (0 bytes)")
    try:
        ds = pydicom.dcmread(path, force=True, stop_before_pixels=stop_before_pixels, defer_size=defer_size)
        # Presence only: values are converted after the truncation check in _read.
        identified = all(k in ds for k in REQUIRED_IDENTIFIERS)
    except Exception as exc:
        raise DicomReadError(f"{path.name}: not a DICOM file") from exc
    if not identified:
        raise DicomReadError(f"{path.name}: not a DICOM file")
    return ds


def integer_value(ds: Dataset, keyword: str, where: str, default: int | None = None) -> int:
    """``ds.<keyword>`` as an int; a value that is not one (a wrong VR, say) is a read error.

    Raises
    ------
    worker.errors.DicomReadError
        The attribute is missing (and there is no ``default``) or not an integer.
    """
    try:
        value = ds.get(keyword)  # converts the raw value: strict parsing may refuse it here
        if value is None or value == "":
            if default is None:
                raise DicomReadError(f"{where}: {keyword} is missing")
            return default
        return int(value)
    except (TypeError, ValueError):
        raise DicomReadError(f"{where}: {keyword} is not an integer (a wrong value representation)") from None


def expected_native_pixel_bytes(ds: Dataset) -> int | None:
    """Byte length of uncompressed pixel data implied by the Image Pixel module, or None."""
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if syntax is not None and syntax.is_compressed:
        return None
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        bits = int(ds.BitsAllocated)
        pixels = int(ds.Rows) * int(ds.Columns) * frames * samples
    except (AttributeError, TypeError, ValueError):
        return None
    return (pixels * bits + 7) // 8


def _check_not_truncated(ds: Dataset, path: Path) -> None:
    size = os.path.getsize(path)
    # Iterating the dataset itself would convert every raw element; its tags do not.
    for tag in tuple(ds.keys()):
        element = ds.get_item(tag, keep_deferred=True)
        if not isinstance(element, RawDataElement) or element.length == UNDEFINED_LENGTH:
            continue
        if element.value_tell is not None and element.value_tell + element.length > size:
            raise DicomReadError(
                f"{path.name}: file is truncated ({size} bytes on disk, "
                f"{element.value_tell + element.length} declared)",
                code=TRUNCATED,
            )


def _check_value_representations(ds: Dataset, path: Path) -> None:
    """Refuse an element whose VR is not DICOM's or whose length no value of its VR can have.

    pydicom converts values only when they are first used, so such an element would otherwise
    fail later, anywhere, with a library exception instead of the name of the damaged file.
    """
    try:
        _check_elements(ds, path)
    except PARSE_ERRORS as exc:
        raise DicomReadError(f"{path.name}: a sequence cannot be parsed ({type(exc).__name__})") from exc


def _check_elements(ds: Dataset, path: Path) -> None:
    for tag in tuple(ds.keys()):
        element = ds.get_item(tag, keep_deferred=True)
        if isinstance(element, RawDataElement):
            if element.value is None and element.length:
                continue  # a deferred (large) value: its length was checked against the file size
            vr = element.VR or _dictionary_vr(tag)
            _check_raw_element(element, vr, path)
        else:
            vr = element.VR
        if vr == "SQ":
            for item in ds[tag].value:
                _check_elements(item, path)


def _check_raw_element(element: RawDataElement, vr: str | None, path: Path) -> None:
    if element.VR is not None and element.VR not in KNOWN_VRS:
        raise DicomReadError(
            f"{path.name}: element {element.tag} has the value representation {element.VR!r}, which "
            "DICOM does not define (a damaged file)"
        )
    size = BINARY_VALUE_BYTES.get(vr or "")
    if size and element.length != UNDEFINED_LENGTH and element.length % size:
        raise DicomReadError(
            f"{path.name}: element {element.tag} ({vr}) is {element.length} bytes long, not a whole "
            f"number of {size}-byte values (a wrong value representation or a damaged file)"
        )


def _dictionary_vr(tag: BaseTag) -> str | None:
    """The VR the standard gives a public tag (the first of ``US or SS``), None for others."""
    try:
        return dictionary_VR(tag).split(" or ")[0]
    except KeyError:
        return None


def _check_native_pixel_length(ds: Dataset, path: Path) -> None:
    if ds.get("PixelData") is None:
        return
    expected = expected_native_pixel_bytes(ds)
    actual = len(ds.PixelData)
    if expected is not None and actual < expected:
        raise DicomReadError(
            f"{path.name}: file is truncated (PixelData has {actual} bytes, expected {expected})",
            code=TRUNCATED,
        )
