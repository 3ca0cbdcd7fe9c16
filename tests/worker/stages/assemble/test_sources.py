"""Zip archives and folders as case sources: safe unpacking and clear refusals."""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path

import pytest

from tests.patients import write_patient
from worker.errors import InputError
from worker.stages.assemble.case import assemble_cases
from worker.stages.assemble.sources import ZipLimits, collect_files, extract_zip


def _zip_folder(folder: Path, archive: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, prefix + path.relative_to(folder).as_posix())
    return archive


def test_zip_assembles_like_the_folder(tmp_path: Path) -> None:
    write_patient(tmp_path / "p")
    archive = _zip_folder(tmp_path / "p", tmp_path / "upload.zip", prefix="Export Ünïcode/")
    from_zip = assemble_cases(archive, tmp_path / "work").cases[0]
    from_folder = assemble_cases(tmp_path / "p", tmp_path / "work2").cases[0]
    assert from_zip.followup.uid == from_folder.followup.uid
    assert len(from_zip.followup.instances) == len(from_folder.followup.instances) == 6
    # Entries land under generated names inside the work folder, whatever the archive said.
    assert all(p.is_relative_to(tmp_path / "work") for p in from_zip.followup.files)


@pytest.mark.parametrize("name", ["../evil.dcm", "/etc/evil.dcm", "a/../../evil.dcm", "C:/evil.dcm"])
def test_zip_slip_paths_are_refused(tmp_path: Path, name: str) -> None:
    archive = tmp_path / "slip.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ok.dcm", b"x" * 10)
        zf.writestr(name, b"x" * 10)
    with pytest.raises(InputError, match="unsafe path"):
        extract_zip(archive, tmp_path / "out")
    assert not (tmp_path / "evil.dcm").exists() and not (tmp_path / "out").exists()


def test_symlink_entries_are_refused(tmp_path: Path) -> None:
    archive = tmp_path / "link.zip"
    info = zipfile.ZipInfo("link.dcm")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(InputError, match="symbolic link"):
        extract_zip(archive, tmp_path / "out")


def test_zip_bomb_ratio_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.dcm", b"\0" * (20 * 1024 * 1024))
    with pytest.raises(InputError, match="looks like a zip bomb"):
        extract_zip(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists(), "nothing is unpacked from a refused archive"


def test_archives_over_the_size_or_entry_limits_are_refused(tmp_path: Path) -> None:
    archive = tmp_path / "big.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(5):
            zf.writestr(f"{i}.dcm", b"x" * 1000)
    with pytest.raises(InputError, match="over the limit of 4000"):
        extract_zip(archive, tmp_path / "a", ZipLimits(max_total_bytes=4000))
    with pytest.raises(InputError, match="5 entries exceed the limit of 3"):
        extract_zip(archive, tmp_path / "b", ZipLimits(max_entries=3))


def test_corrupt_zip_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "corrupt.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a.dcm", b"y" * 5000)
    data = bytearray(archive.read_bytes())
    data[40:60] = b"\xff" * 20  # damage the first entry's compressed bytes / header
    archive.write_bytes(bytes(data))
    with pytest.raises(InputError, match="corrupt or unsupported zip"):
        extract_zip(archive, tmp_path / "out")


def test_missing_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file or folder"):
        collect_files(tmp_path / "absent", tmp_path / "work")


def test_hidden_files_and_dicomdir_are_skipped(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    for name in ("DICOMDIR", ".DS_Store", "img.dcm"):
        (tmp_path / "in" / name).write_bytes(b"data")
    assert [p.name for p in collect_files(tmp_path / "in", tmp_path / "work")] == ["img.dcm"]


def test_an_archive_inside_the_archive_is_refused(tmp_path: Path) -> None:
    inner = _zip_folder(write_patient(tmp_path / "p").root, tmp_path / "inner.zip")
    archive = tmp_path / "outer.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("readme.txt", b"study inside")
        zf.write(inner, "export/study.zip")
    with pytest.raises(InputError, match="entry 2 is itself a zip archive"):
        extract_zip(archive, tmp_path / "out")


def test_names_flagged_utf8_that_are_not_are_refused(tmp_path: Path) -> None:
    archive = tmp_path / "names.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ok-\u00e9.dcm", b"x")  # non-ASCII: written with the UTF-8 flag
    archive.write_bytes(archive.read_bytes().replace("\u00e9".encode(), b"\xff\xfe"))
    with pytest.raises(InputError, match="not valid UTF-8"):
        extract_zip(archive, tmp_path / "out")
