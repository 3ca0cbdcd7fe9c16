"""Decoding pixel data of image frames, counting what could and could not be decoded.

pydicom decodes native and RLE data itself and compressed syntaxes through the installed plugins
(pylibjpeg with libjpeg/openjpeg/rle, pyjpegls). A frame that fails to decode is never skipped
silently: the caller gets the counts and refuses the series.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from worker.errors import DicomReadError
from worker.stages.read.files import malformed_values, read_dataset
from worker.stages.read.frames import Frame


@dataclass
class DecodeResult:
    """Decoded frames in the requested order (float32, rescaled) and the failures."""

    pixels: np.ndarray
    received: int
    decoded: int
    failures: list[str] = field(default_factory=list)


def decode_frames(frames: list[Frame]) -> DecodeResult:
    """Decode and rescale the pixel data of ``frames``, in order.

    Returns
    -------
    DecodeResult
        ``pixels`` has shape (len(frames), rows, cols); rows of frames that failed are zero.
    """
    first = frames[0]
    pixels = np.zeros((len(frames), first.rows, first.cols), dtype=np.float32)
    cache: dict[Path, np.ndarray | str] = {}
    result = DecodeResult(pixels=pixels, received=len(frames), decoded=0)
    for k, frame in enumerate(frames):
        if frame.path not in cache:
            cache.clear()  # frames of one file are adjacent often enough; keep memory flat
            cache[frame.path] = _decode_file(frame.path)
        decoded = cache[frame.path]
        if isinstance(decoded, str):
            result.failures.append(f"{frame.path.name}: {decoded}")
            continue
        # A one-frame enhanced instance decodes to a 2D array, like a classic one.
        plane = decoded if decoded.ndim == 2 else decoded[frame.frame_index or 0]
        pixels[k] = plane.astype(np.float64) * frame.slope + frame.intercept
        result.decoded += 1
    return result


def decoded_pixel_array(ds: Dataset, name: str) -> np.ndarray:
    """The decoded pixel array of a whole instance (RTDOSE, SEG), as pydicom gives it.

    Raises
    ------
    worker.errors.DicomReadError
        The instance has no pixel data, or its pixel data cannot be decoded.
    """
    decoded = _pixel_array(ds)
    if isinstance(decoded, str):
        raise DicomReadError(f"{name}: {decoded}")
    return decoded


def _decode_file(path: Path) -> np.ndarray | str:
    """The file's pixel array, or the reason it could not be decoded."""
    try:
        ds = read_dataset(path)
        with malformed_values(path):
            return _pixel_array(ds)
    except DicomReadError as exc:
        return exc.message.removeprefix(f"{path.name}: ")


def _pixel_array(ds: Dataset) -> np.ndarray | str:
    syntax = ds.file_meta.get("TransferSyntaxUID", "unknown transfer syntax")
    try:
        array = ds.pixel_array
    except (RuntimeError, ValueError, NotImplementedError, AttributeError, TypeError) as exc:
        name = getattr(syntax, "name", str(syntax))
        return f"pixel data could not be decoded ({name}): {_first_line(exc)}"
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        return "colour or multi-sample pixel data is not a grey-scale image"
    return array


def _first_line(exc: Exception) -> str:
    """The most telling line of a decoder error.

    pydicom heads its message with "Unable to decode as exceptions were raised by all
    available plugins:" and lists each plugin's reason below; the first reason says more.
    """
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    reasons = [line for line in lines[1:] if ":" in line]
    return (reasons[0] if lines[0].endswith(":") and reasons else lines[0])[:200]
