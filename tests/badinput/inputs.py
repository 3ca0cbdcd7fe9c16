"""Builders of bad inputs: damaged DICOM files, wrong cases, hostile zip archives.

Folder builders change a copy of a good small patient (``tests.patients.write_patient``: planning
CT, RTPLAN, RTDOSE and one FLAIR follow-up) in place, so the REST catalogue can zip them and the
CLI catalogue can read them as they are. Archive builders return the bytes of a zip. Each builder
damages one thing; everything else stays as a good upload has it.
"""

from __future__ import annotations

import io
import shutil
import stat
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from tests.factories import UID_ROOT, SeriesSpec, axial_positions, image_slice, uid, write_enhanced_mr
from tests.patients import write_patient

#: The good patient's identifiers (tests assert they never reach a message or a log).
PATIENT_ID = "BADIN001"
OTHER_PATIENT_ID = "BADIN002"


# --- folders and zips ---------------------------------------------------------------------------


def followup_slices(case: Path) -> list[Path]:
    return sorted((case / "followup0").glob("*.dcm"))


def zip_folder(folder: Path, extra: list[tuple[zipfile.ZipInfo | str, bytes]] | None = None) -> bytes:
    """The folder's files as a zip (paths relative to it), plus ``extra`` entries."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(folder).as_posix())
        for name, data in extra or []:
            archive.writestr(name, data)
    return buffer.getvalue()


# --- damaged DICOM files ------------------------------------------------------------------------


def _element_offset(data: bytes, group: int, element: int, vr: bytes) -> int:
    """Where an explicit-VR little-endian element starts (its tag) in a file's bytes."""
    return data.index(struct.pack("<HH", group, element) + vr)


def truncate_a_slice(case: Path) -> None:
    """A follow-up slice cut inside its pixel data (a copy that stopped early)."""
    path = followup_slices(case)[2]
    path.write_bytes(path.read_bytes()[:-100])


def empty_a_slice(case: Path) -> None:
    """A follow-up slice that is a zero-length file."""
    followup_slices(case)[2].write_bytes(b"")


def lie_about_a_length(case: Path) -> None:
    """SeriesDescription (LO) declares 0xFFF0 bytes where 12 follow: past the end of the file."""
    path = followup_slices(case)[2]
    data = bytearray(path.read_bytes())
    at = _element_offset(bytes(data), 0x0008, 0x103E, b"LO")
    data[at + 6 : at + 8] = struct.pack("<H", 0xFFF0)
    path.write_bytes(bytes(data))


def _relabel_vr(path: Path, group: int, element: int, vr: bytes, lie: bytes) -> None:
    data = bytearray(path.read_bytes())
    at = _element_offset(bytes(data), group, element, vr)
    data[at + 4 : at + 6] = lie
    path.write_bytes(bytes(data))


def unknown_vr(case: Path) -> None:
    """The RTDOSE's DoseUnits (CS) relabelled with the VR 'ZZ', which DICOM does not define."""
    _relabel_vr(case / "rtdose.dcm", 0x3004, 0x0002, b"CS", b"ZZ")


def binary_vr_of_the_wrong_size(case: Path) -> None:
    """A slice's BitsAllocated (US, 2 bytes) relabelled UL: no 4-byte value fits in 2 bytes."""
    _relabel_vr(followup_slices(case)[2], 0x0028, 0x0100, b"US", b"UL")


def rows_as_a_decimal_string(case: Path) -> None:
    """A slice's Rows (US) relabelled DS: the bytes read as text that is no number."""
    _relabel_vr(followup_slices(case)[2], 0x0028, 0x0010, b"US", b"DS")


def text_named_dcm(case: Path) -> None:
    """A note saved with a .dcm name among the DICOM files."""
    (case / "followup0" / "notes.dcm").write_text("scanned on the old MR; see the paper chart\n")


def dicom_magic_then_garbage(case: Path) -> None:
    """A file with a DICOM preamble and prefix followed by bytes that are no DICOM dataset."""
    garbage = np.random.default_rng(11).integers(0, 256, 2000, dtype=np.uint8).tobytes()
    (case / "followup0" / "zz-damaged.dcm").write_bytes(b"\0" * 128 + b"DICM" + garbage)


# --- cases that are not one usable case ---------------------------------------------------------


def drop_planning_ct(case: Path) -> None:
    shutil.rmtree(case / "planning")


def drop_rtdose(case: Path) -> None:
    (case / "rtdose.dcm").unlink()


def _edit(path: Path, **values: object) -> Dataset:
    ds = pydicom.dcmread(path)
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    return ds


def dose_in_another_frame(case: Path) -> None:
    _edit(case / "rtdose.dcm", FrameOfReferenceUID=uid("badinput", "another-frame"))


def dose_off_the_patient(case: Path) -> None:
    """The dose grid moved 1 m along z: same frame of reference, nowhere near the planning CT."""
    ds = pydicom.dcmread(case / "rtdose.dcm")
    x, y, z = (float(v) for v in ds.ImagePositionPatient)
    _edit(case / "rtdose.dcm", ImagePositionPatient=[x, y, z + 1000.0])


def zero_dose(case: Path) -> None:
    ds = pydicom.dcmread(case / "rtdose.dcm")
    _edit(case / "rtdose.dcm", PixelData=bytes(len(ds.PixelData)))


def relative_dose_without_plan(case: Path) -> None:
    """DoseUnits RELATIVE and no RTPLAN: no prescription to turn the values into Gy."""
    _edit(case / "rtdose.dcm", DoseUnits="RELATIVE")
    (case / "rtplan.dcm").unlink()


def followup_of_another_patient(case: Path) -> None:
    """The follow-up of another patient (another PatientID) added to the case."""
    other = write_patient(case.parent / f"{case.name}-other", patient_id=OTHER_PATIENT_ID)
    shutil.copytree(other.root / "followup0", case / "followup-other")


def followup_4d_enhanced(case: Path) -> None:
    """The follow-up as one Enhanced MR file holding two time points at the same six positions."""
    first = pydicom.dcmread(followup_slices(case)[0], stop_before_pixels=True)
    shutil.rmtree(case / "followup0")
    (case / "followup0").mkdir()
    positions = axial_positions(6, origin=(-18.0, -14.0, -8.0))
    spec = SeriesSpec(
        positions=positions * 2,
        modality="MR",
        patient_id=str(first.PatientID),
        frame_of_reference_uid=str(first.FrameOfReferenceUID),
        series_instance_uid=str(first.SeriesInstanceUID),
        study_instance_uid=str(first.StudyInstanceUID),
        series_description=str(first.SeriesDescription),
        date=str(first.StudyDate),
    )
    path = write_enhanced_mr(spec, case / "followup0" / "flair-4d.dcm")
    ds = pydicom.dcmread(path)
    for number, frame in enumerate(ds.PerFrameFunctionalGroupsSequence):
        frame.FrameContentSequence[0].TemporalPositionIndex = 1 + number // len(positions)
    ds.save_as(path, enforce_file_format=True)


def followup_4d_classic(case: Path) -> None:
    """Every follow-up slice a second time, as TemporalPositionIdentifier 2 of the same series."""
    for path in followup_slices(case):
        ds = _edit(path, TemporalPositionIdentifier=1)
        ds.TemporalPositionIdentifier = 2
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid(ds.SOPInstanceUID, "t2")
        ds.save_as(path.with_name(f"{path.stem}-t2.dcm"), enforce_file_format=True)


def gap_in_followup(case: Path) -> None:
    """A middle follow-up slice missing (a slice lost in transfer)."""
    followup_slices(case)[3].unlink()


def tilted_followup(case: Path) -> None:
    """The follow-up slices drift 0.35 mm along y per 2 mm slice: a gantry tilt of about 10°."""
    for number, path in enumerate(followup_slices(case)):
        ds = pydicom.dcmread(path)
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        _edit(path, ImagePositionPatient=[f"{x:.6f}", f"{y + 0.35 * number:.6f}", f"{z:.6f}"])


# --- hostile archives ---------------------------------------------------------------------------


def zip_bomb() -> bytes:
    """32 MiB of zeros that deflate to about 32 KiB (a ratio of about 1000:1)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr("ct/slice-0001.dcm", bytes(32 * 1024 * 1024))
    return buffer.getvalue()


def zip_with_parent_path(case: Path) -> bytes:
    return zip_folder(case, extra=[("../../../escaped.dcm", b"DICM")])


def zip_with_absolute_path(case: Path) -> bytes:
    return zip_folder(case, extra=[("/tmp/rtinjury-absolute.dcm", b"DICM")])


def zip_with_symlink(case: Path) -> bytes:
    """An entry whose Unix mode says symbolic link, pointing at /etc/passwd."""
    link = zipfile.ZipInfo("planning/link.dcm")
    link.create_system = 3  # Unix: external_attr holds the mode
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    return zip_folder(case, extra=[(link, b"/etc/passwd")])


def _rename_entries(archive: bytes, old: bytes, new: bytes) -> bytes:
    """Replace a name in every local and central header (same length: offsets stay valid)."""
    assert len(old) == len(new)
    return archive.replace(old, new)


def zip_with_cp437_names(case: Path) -> bytes:
    """Entry names in the historical IBM code page (no UTF-8 flag), as old Windows tools write."""
    archive = zip_folder(case)
    return _rename_entries(archive, b"followup0/", "f\u00fcll\u00f6w\u00e9p0/".encode("cp437"))


def zip_with_invalid_utf8_names(case: Path) -> bytes:
    """Entry names flagged as UTF-8 whose bytes are not UTF-8."""
    archive = zip_folder(case, extra=[("notes-\u00e9\u00e9.txt", b"nothing")])
    return _rename_entries(archive, "\u00e9\u00e9".encode(), b"\xff\xfe\xfd\xfc")


def nested_zip(case: Path) -> bytes:
    """The good study zipped, inside another zip."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("export/study.zip", zip_folder(case))
    return buffer.getvalue()


def truncated_zip(case: Path) -> bytes:
    """The good study's zip cut in half (its central directory lost)."""
    archive = zip_folder(case)
    return archive[: len(archive) // 2]


def zip_of_many_entries(count: int) -> bytes:
    """``count`` tiny entries (more than an upload may hold)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for number in range(count):
            archive.writestr(f"f/{number:05d}.dcm", b"x")
    return buffer.getvalue()


# --- a study of 3000 instances ------------------------------------------------------------------

#: Placeholders written into a template slice and replaced, byte for byte, per instance.
_UID_MARK = f"{UID_ROOT}3000.999999"
_Z_MARK = "+77777.7777"


def tiny_followup_instances(count: int, patient_id: str = PATIENT_ID) -> Iterator[tuple[str, bytes]]:
    """``count`` 8×8 FLAIR slices 1 mm apart, as (name, file bytes) (about 1 KiB each).

    One template file is written with pydicom; each instance is that file with its
    SOPInstanceUID and the z of its ImagePositionPatient replaced (same lengths, so every element
    length stays right): thousands of files in well under a second.
    """
    spec = SeriesSpec(
        positions=[[-8.0, -8.0, 0.0]],
        rows=8,
        cols=8,
        modality="MR",
        patient_id=patient_id,
        frame_of_reference_uid=uid("badinput", "tiny-for"),
        series_instance_uid=uid("badinput", "tiny-series"),
        study_instance_uid=uid("badinput", "tiny-study"),
        series_description="AX T2 FLAIR",
        date="20240301",
    )
    ds = image_slice(spec, 0, spec.positions[0])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = _UID_MARK
    ds.ImagePositionPatient = ["-8", "-8", _Z_MARK]
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    template = buffer.getvalue()
    for number in range(count):
        sop_uid = f"{UID_ROOT}3000.{100000 + number}"
        z = f"{-1500.0 + number:+011.4f}"
        data = template.replace(_UID_MARK.encode(), sop_uid.encode()).replace(_Z_MARK.encode(), z.encode())
        yield f"followup/tiny-{number:05d}.dcm", data


def study_of_many_instances(case: Path, count: int) -> bytes:
    """The good patient's planning CT, plan and dose, and a follow-up of ``count`` tiny slices."""
    shutil.rmtree(case / "followup0")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for path in sorted(case.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(case).as_posix())
        for name, data in tiny_followup_instances(count):
            archive.writestr(name, data)
    return buffer.getvalue()
