"""Opening DICOM files: truncated, non-DICOM and preamble-less files give specific errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from tests.factories import DoseSpec, SeriesSpec, axial_positions, write_rtdose, write_series
from worker.errors import DicomReadError
from worker.stages.read.files import TRUNCATED, expected_native_pixel_bytes, read_dataset, read_header

_RANDOM = np.random.default_rng(7).integers(0, 256, 3500, dtype=np.uint8).tobytes()


@pytest.fixture
def ct_file(tmp_path: Path) -> Path:
    return write_series(SeriesSpec(positions=axial_positions(1)), tmp_path / "ct")[0]


def _value_spans(path: Path, first_tag: int) -> list[tuple[int, int]]:
    """(start, end) in bytes of the value of every top-level element from ``first_tag`` on."""
    ds = pydicom.dcmread(path, defer_size=0)
    spans = []
    for tag in tuple(ds.keys()):
        element = ds.get_item(tag, keep_deferred=True)
        if tag >= first_tag:
            spans.append((element.value_tell, element.value_tell + element.length))
    return spans


def test_header_and_dataset_of_a_valid_file(ct_file: Path) -> None:
    header = read_header(ct_file)
    assert header.Rows == 16 and header.Columns == 20
    full = read_dataset(ct_file)
    assert len(full.PixelData) == expected_native_pixel_bytes(full) == 16 * 20 * 2


@pytest.mark.parametrize("reader", [read_header, read_dataset])
def test_file_cut_inside_pixel_data_is_truncated(ct_file: Path, reader) -> None:
    data = ct_file.read_bytes()
    ct_file.write_bytes(data[:-100])
    with pytest.raises(DicomReadError, match="truncated") as caught:
        reader(ct_file)
    assert caught.value.code == TRUNCATED == "truncated-file"


@pytest.mark.parametrize("reader", [read_header, read_dataset])
def test_file_cut_inside_a_header_value_is_truncated(ct_file: Path, reader) -> None:
    # Every cut inside the value of a top-level element from SOPInstanceUID on must be found,
    # including SOPInstanceUID itself, which the reader converts (lengths are checked first).
    # A file cut before its SOPInstanceUID is simply not a composite instance.
    data = ct_file.read_bytes()
    spans = [(start, end) for start, end in _value_spans(ct_file, 0x00080018) if end - start >= 2]
    assert len(spans) > 20
    for start, end in spans:
        cut = (start + end) // 2
        ct_file.write_bytes(data[:cut])
        with pytest.raises(DicomReadError) as caught:
            reader(ct_file)
        assert caught.value.code == TRUNCATED, (cut, caught.value.message)


def test_every_cut_gives_a_dicom_read_error_or_a_dataset(ct_file: Path) -> None:
    # Cut inside an element header, the file meta or a value: never a raw library exception
    # (struct.error, BytesLengthException, ValueError of strict parsing ...).
    data = ct_file.read_bytes()
    refused = 0
    for cut in range(1, len(data), 3):
        ct_file.write_bytes(data[:cut])
        try:
            read_header(ct_file)
        except DicomReadError:
            refused += 1
    assert refused > 0.75 * len(range(1, len(data), 3))


def test_truncated_rtdose_is_refused_with_the_truncation_code(tmp_path: Path) -> None:
    path = write_rtdose(DoseSpec(), tmp_path / "dose.dcm")
    path.write_bytes(path.read_bytes()[:-64])
    with pytest.raises(DicomReadError, match="truncated") as caught:
        read_dataset(path)
    assert caught.value.code == "truncated-file"


@pytest.mark.parametrize(
    "content",
    [b"", b"hello, not DICOM\n" * 20, _RANDOM[:3000], b"\x00" * 128 + b"DICM" + _RANDOM[3000:]],
    ids=["empty", "text", "random", "preamble-then-garbage"],
)
def test_non_dicom_files_are_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "file.dcm"
    path.write_bytes(content)
    with pytest.raises(DicomReadError, match=r"file\.dcm") as caught:
        read_header(path)
    assert caught.value.code == "unreadable-dicom"


def test_file_without_preamble_is_accepted(ct_file: Path, tmp_path: Path) -> None:
    # Some exporters write the dataset without the 128-byte preamble and 'DICM' prefix.
    bare = tmp_path / "bare.dcm"
    bare.write_bytes(ct_file.read_bytes()[132:])
    header = read_header(bare)
    assert header.SOPInstanceUID == pydicom.dcmread(ct_file).SOPInstanceUID
    assert read_dataset(bare).PixelData == pydicom.dcmread(ct_file).PixelData


def test_dicom_without_sop_identification_is_refused(ct_file: Path) -> None:
    ds = pydicom.dcmread(ct_file)
    del ds.SOPInstanceUID
    ds.save_as(ct_file)
    with pytest.raises(DicomReadError, match="SOPInstanceUID"):
        read_header(ct_file)


def test_compressed_files_have_no_expected_native_length(ct_file: Path) -> None:
    ds = pydicom.dcmread(ct_file)
    assert expected_native_pixel_bytes(ds) == 640
    ds.compress(pydicom.uid.RLELossless)
    assert expected_native_pixel_bytes(ds) is None


def _relabel(path: Path, tag: tuple[int, int], vr: bytes, lie: bytes) -> None:
    import struct

    data = bytearray(path.read_bytes())
    at = data.index(struct.pack("<HH", *tag) + vr)
    data[at + 4 : at + 6] = lie
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("tag", "vr", "lie", "words"),
    [
        ((0x0008, 0x103E), b"LO", b"ZZ", "element (0008,103E) has the value representation 'ZZ'"),
        ((0x0028, 0x0100), b"US", b"UL", "element (0028,0100) (UL) is 2 bytes long"),
    ],
    ids=["unknown-vr", "binary-length"],
)
def test_a_lying_vr_is_a_read_error_naming_the_element(
    ct_file: Path, tag: tuple[int, int], vr: bytes, lie: bytes, words: str
) -> None:
    # pydicom converts a value only when it is used, so without the check these failed later,
    # anywhere, as NotImplementedError or BytesLengthException.
    _relabel(ct_file, tag, vr, lie)
    with pytest.raises(DicomReadError) as caught:
        read_header(ct_file)
    assert words in caught.value.message and caught.value.code == "unreadable-dicom"


def test_a_lying_vr_inside_a_sequence_is_found(tmp_path: Path) -> None:
    path = write_rtdose(DoseSpec(plan_uid="1.2.3.4"), tmp_path / "dose.dcm")
    _relabel(path, (0x0008, 0x1155), b"UI", b"QQ")  # in ReferencedRTPlanSequence
    with pytest.raises(DicomReadError, match=r"\(0008,1155\) has the value representation 'QQ'"):
        read_header(path)


def test_an_integer_attribute_that_is_no_integer_is_a_read_error(ct_file: Path) -> None:
    from worker.stages.read.files import integer_value

    _relabel(ct_file, (0x0028, 0x0010), b"US", b"DS")  # Rows: two binary bytes read as text
    with pytest.raises(DicomReadError, match=r"ct\.dcm: Rows is not an integer"):
        integer_value(read_header(ct_file), "Rows", "ct.dcm")
