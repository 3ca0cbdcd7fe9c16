"""Writes the committed seed corpora (a few KB): tiny real instances from the tests' DICOM
writers, and uploads built from them. Run it again only to change the seeds.

    python fuzz/make_seeds.py
"""

from __future__ import annotations

import io
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

import pydicom
from pydicom.uid import DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fuzz.targets import BOUNDARY, MULTIPART, ONE_FILE
from tests.factories import (
    DoseSpec,
    SeriesSpec,
    axial_positions,
    uid,
    write_enhanced_mr,
    write_rtdose,
    write_rtplan,
    write_series,
)

CORPUS = Path(__file__).resolve().parent / "corpus"


def main() -> int:
    with tempfile.TemporaryDirectory() as scratch:
        dicom = _dicom_seeds(Path(scratch))
        _write(CORPUS / "dicom", dicom)
        _write(CORPUS / "upload", _upload_seeds(dicom))
    return 0


def _dicom_seeds(scratch: Path) -> dict[str, bytes]:
    spec = SeriesSpec(positions=axial_positions(2), rows=2, cols=3, name="ct")
    [ct, _] = write_series(spec, scratch / "ct")
    mr = SeriesSpec(positions=axial_positions(2), rows=2, cols=2, modality="MR", name="mr")
    enhanced = write_enhanced_mr(mr, scratch / "enhanced.dcm")
    plan_uid = uid("fuzz", "plan")
    dose = write_rtdose(DoseSpec(rows=2, cols=2, offsets=(0, 3), plan_uid=plan_uid), scratch / "rtdose.dcm")
    plan = write_rtplan(scratch / "rtplan.dcm", sop_uid=plan_uid)
    return {
        "ct-slice.dcm": ct.read_bytes(),
        "enhanced-mr.dcm": enhanced.read_bytes(),
        "rtdose.dcm": dose.read_bytes(),
        "rtplan.dcm": plan.read_bytes(),
        "ct-implicit.dcm": _resaved(ct, ImplicitVRLittleEndian),
        "ct-deflated.dcm": _resaved(ct, DeflatedExplicitVRLittleEndian),
        "ct-bare.dcm": _bare(ct),
    }


def _resaved(path: Path, syntax: str) -> bytes:
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = syntax
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _bare(path: Path) -> bytes:
    """The dataset without preamble and file meta, as some exporters write it."""
    ds = pydicom.dcmread(path)
    del ds.file_meta
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, implicit_vr=True, little_endian=True)
    return buffer.getvalue()


def _upload_seeds(dicom: dict[str, bytes]) -> dict[str, bytes]:
    archive = _zip(
        {"planning/ct.dcm": dicom["ct-slice.dcm"], "rtdose.dcm": dicom["rtdose.dcm"], "notes.txt": b"hi"}
    )
    fields = {
        "task": "orn",
        "tau": "0.6",
        "options": '{"deformable": false}',
        "clinical": '{"months_since_rt": 14}',
    }
    return {
        "multipart-dicom.bin": _upload(MULTIPART, 4096, _multipart(fields, [dicom["ct-slice.dcm"]])),
        "multipart-zip.bin": _upload(MULTIPART, 7, _multipart({"clinical_text": "pain"}, [archive])),
        "zip.bin": _upload(ONE_FILE, 0, archive),
    }


def _upload(mode: int, chunk: int, body: bytes) -> bytes:
    return bytes([mode]) + chunk.to_bytes(2, "little") + body


def _multipart(fields: dict[str, str], files: list[bytes]) -> bytes:
    parts = [
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    parts += [
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="files"; filename="f{n}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n".encode()
        + data
        + b"\r\n"
        for n, data in enumerate(files)
    ]
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def _zip(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _write(folder: Path, seeds: dict[str, bytes]) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for name, data in seeds.items():
        (folder / name).write_bytes(data)


if __name__ == "__main__":
    raise SystemExit(main())
