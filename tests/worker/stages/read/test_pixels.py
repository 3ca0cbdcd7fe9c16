"""Pixel decoding: compressed transfer syntaxes read back exactly; failures are counted, never skipped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from tests.factories import SeriesSpec, axial_positions, compress_files, write_enhanced_mr, write_series
from worker.errors import DicomReadError
from worker.stages.read.files import read_header
from worker.stages.read.frames import frames_from_dataset
from worker.stages.read.pixels import decode_frames, decoded_pixel_array
from worker.stages.read.series import read_image_series

# openjpeg needs at least 32 x 32 pixels for its default number of resolutions.
SPEC = SeriesSpec(positions=axial_positions(4), rows=32, cols=40)
SYNTAXES = [RLELossless, JPEGLSLossless, JPEG2000Lossless]


@pytest.fixture
def native(tmp_path: Path) -> list[Path]:
    return write_series(SPEC, tmp_path / "native")


def _frames(paths: list[Path]):
    return [f for p in paths for f in frames_from_dataset(read_header(p), p)]


def _corrupt_first_fragment(path: Path) -> None:
    ds = pydicom.dcmread(path)
    ds.PixelData = encapsulate([b"\x00\x01" * 16])
    ds.save_as(path)


@pytest.mark.parametrize("syntax", SYNTAXES, ids=lambda s: s.name)
def test_lossless_syntaxes_read_back_identical_to_native(tmp_path: Path, native: list[Path], syntax) -> None:
    compressed = compress_files(native, syntax, tmp_path / "compressed")
    assert all(pydicom.dcmread(p).file_meta.TransferSyntaxUID == syntax for p in compressed)
    expected = read_image_series(native)
    volume = read_image_series(compressed)
    assert (volume.received, volume.decoded) == (4, 4)
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(volume.image), sitk.GetArrayFromImage(expected.image)
    )
    assert volume.image.GetOrigin() == expected.image.GetOrigin()


def test_compressed_enhanced_image_with_shuffled_frames(tmp_path: Path, native: list[Path]) -> None:
    path = write_enhanced_mr(SPEC, tmp_path / "enhanced.dcm", frame_order=[2, 0, 3, 1])
    [compressed] = compress_files([path], JPEGLSLossless, tmp_path / "compressed")
    volume = read_image_series([compressed])
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(volume.image), sitk.GetArrayFromImage(read_image_series(native).image)
    )


@pytest.mark.parametrize("syntax", SYNTAXES, ids=lambda s: s.name)
def test_one_undecodable_frame_fails_the_series_with_counts(
    tmp_path: Path, native: list[Path], syntax
) -> None:
    compressed = compress_files(native, syntax, tmp_path / "compressed")
    _corrupt_first_fragment(compressed[1])
    with pytest.raises(
        DicomReadError, match=r"decoded 3 of 4 image frames; 1 failed: series-001\.dcm"
    ) as caught:
        read_image_series(compressed)
    assert syntax.name in caught.value.message
    assert caught.value.code == "unreadable-dicom"


def test_decode_frames_counts_and_rescales(tmp_path: Path, native: list[Path]) -> None:
    frames = _frames(native)
    result = decode_frames(frames)
    assert (result.received, result.decoded, result.failures) == (4, 4, [])
    stored = pydicom.dcmread(native[0]).pixel_array
    np.testing.assert_allclose(result.pixels[0], stored * 0.05 - 1000.0, atol=1e-4)
    assert result.pixels.dtype == np.float32


def test_decode_frames_reports_each_failure(tmp_path: Path, native: list[Path]) -> None:
    compressed = compress_files(native, RLELossless, tmp_path / "compressed")
    for path in compressed[:2]:
        _corrupt_first_fragment(path)
    result = decode_frames(_frames(compressed))
    assert (result.received, result.decoded) == (4, 2)
    assert [f.split(":")[0] for f in result.failures] == ["series-000.dcm", "series-001.dcm"]
    assert not result.pixels[0].any() and result.pixels[2].any()


def test_decoded_pixel_array_refuses_missing_pixel_data(native: list[Path]) -> None:
    ds = pydicom.dcmread(native[0])
    assert decoded_pixel_array(ds, "x.dcm").shape == (32, 40)
    del ds.PixelData
    with pytest.raises(DicomReadError, match=r"x\.dcm: pixel data could not be decoded"):
        decoded_pixel_array(ds, "x.dcm")
