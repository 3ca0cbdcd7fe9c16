"""Where a case's files come from: a folder tree, a zip archive, or a list of files.

Zip archives are unpacked defensively: entries with absolute paths, ``..`` components or
symbolic links are refused (zip-slip), and the archive is refused when it declares or actually
inflates to more than the allowed number of entries or bytes (zip bomb). Entries are written
under generated names, so nothing in an archive chooses a path on our disk. An archive inside the
archive is refused rather than unpacked (nested archives are how small zip bombs grow large).
"""

from __future__ import annotations

import stat
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from worker.errors import InputError

#: What zipfile raises on a damaged archive besides BadZipFile: an entry with an empty name gives
#: IndexError, a damaged deflate stream zlib.error (found by fuzz/fuzz_upload.py). A name flagged
#: UTF-8 that is not (UnicodeDecodeError) has its own message.
ARCHIVE_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    NotImplementedError,
    EOFError,
    IndexError,
    zlib.error,
)
#: General-purpose bit 0 of a zip entry: the entry is encrypted.
ENCRYPTED_FLAG = 0x1
#: Files that are never instances of a study.
IGNORED_NAMES = {"DICOMDIR", ".DS_Store", "Thumbs.db"}
CHUNK_BYTES = 1 << 20
ZIP_MAGIC = b"PK\x03\x04"


@dataclass(frozen=True)
class ZipLimits:
    """Bounds on what an uploaded archive may unpack to."""

    max_entries: int = 100_000
    max_total_bytes: int = 20 * 1024**3
    max_ratio: float = 1000.0


def collect_files(
    source: Path | Sequence[Path], workdir: Path, limits: ZipLimits | None = None
) -> list[Path]:
    """Every candidate file of ``source``; zip archives are unpacked into ``workdir``.

    Parameters
    ----------
    source: pathlib.Path or Sequence[pathlib.Path]
        A folder (searched recursively), a zip file, a single file, or a list of these.
    workdir: pathlib.Path
        Folder that receives unpacked archive entries.

    Raises
    ------
    worker.errors.InputError
        A path does not exist, or an archive is unsafe or corrupt.
    """
    items = [source] if isinstance(source, str | Path) else list(source)
    files: list[Path] = []
    for number, item in enumerate(items):
        files.extend(_expand(Path(item), workdir / f"archive-{number}", limits or ZipLimits()))
    return files


def _expand(path: Path, unpack_dir: Path, limits: ZipLimits) -> Iterable[Path]:
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and _is_candidate(p))
    if zipfile.is_zipfile(path):
        return extract_zip(path, unpack_dir, limits)
    return [path]


def _is_candidate(path: Path) -> bool:
    return path.name not in IGNORED_NAMES and not path.name.startswith(".")


def extract_zip(archive: Path, target: Path, limits: ZipLimits | None = None) -> list[Path]:
    """Unpack a zip archive safely into ``target`` and return the unpacked files."""
    limits = limits or ZipLimits()
    try:
        with zipfile.ZipFile(archive) as zf:
            entries = [e for e in zf.infolist() if not e.is_dir()]
            _check_entries(entries, archive.name, limits)
            target.mkdir(parents=True, exist_ok=True)
            return _write_entries(zf, entries, target, archive.name, limits)
    except UnicodeDecodeError:
        # zipfile decodes every name when it opens the archive: one name flagged as UTF-8 that is
        # not UTF-8 makes the whole archive unreadable, although we never use the names.
        raise InputError(
            f"{archive.name}: entry names marked as UTF-8 are not valid UTF-8 (a damaged archive "
            "or a broken zip tool); zip the files again"
        ) from None
    except ARCHIVE_ERRORS as exc:
        # The kind of damage only: zipfile's messages quote entry names (patient names, often).
        raise InputError(
            f"{archive.name}: corrupt or unsupported zip archive ({type(exc).__name__})"
        ) from exc


def _check_entries(entries: list[zipfile.ZipInfo], name: str, limits: ZipLimits) -> None:
    if len(entries) > limits.max_entries:
        raise InputError(f"{name}: {len(entries)} entries exceed the limit of {limits.max_entries}")
    for entry in entries:
        parts = PurePosixPath(entry.filename.replace("\\", "/")).parts
        if entry.filename.startswith(("/", "\\")) or ".." in parts or ":" in (parts[0] if parts else ""):
            raise InputError(f"{name}: entry with an unsafe path (absolute or '..') refused")
        if stat.S_ISLNK(entry.external_attr >> 16):
            raise InputError(f"{name}: entry that is a symbolic link refused")
        if entry.flag_bits & ENCRYPTED_FLAG:
            # zipfile would ask for a password (RuntimeError; found by fuzz/fuzz_upload.py).
            raise InputError(f"{name}: encrypted entries are not supported; send the archive unencrypted")
    declared = sum(e.file_size for e in entries)
    if declared > limits.max_total_bytes:
        raise InputError(f"{name}: unpacks to {declared} bytes, over the limit of {limits.max_total_bytes}")
    packed = sum(e.compress_size for e in entries) or 1
    if declared / packed > limits.max_ratio:
        raise InputError(f"{name}: compression ratio {declared / packed:.0f}:1 looks like a zip bomb")


def _write_entries(
    zf: zipfile.ZipFile, entries: list[zipfile.ZipInfo], target: Path, name: str, limits: ZipLimits
) -> list[Path]:
    written: list[Path] = []
    total = 0
    for number, entry in enumerate(entries):
        if not _is_candidate(Path(PurePosixPath(entry.filename.replace("\\", "/")).name)):
            continue
        out = target / f"{number:06d}.dcm"
        try:
            src = zf.open(entry)
        except OSError as exc:
            # An entry whose offset lies outside the file: zipfile seeks there (found by
            # fuzz/fuzz_upload.py). Only here: an OSError writing the entry is ours, not the archive's.
            raise InputError(f"{name}: corrupt zip archive (an entry lies outside the file)") from exc
        with src, out.open("wb") as dst:
            # Count what really inflates: the sizes in the directory may lie.
            while chunk := src.read(CHUNK_BYTES):
                if dst.tell() == 0:
                    _refuse_nested_archive(chunk, name, number)
                total += len(chunk)
                if total > limits.max_total_bytes:
                    raise InputError(f"{name}: inflates past the limit of {limits.max_total_bytes} bytes")
                dst.write(chunk)
        written.append(out)
    return written


def _refuse_nested_archive(first_chunk: bytes, name: str, number: int) -> None:
    if first_chunk.startswith(ZIP_MAGIC):
        raise InputError(
            f"{name}: entry {number + 1} is itself a zip archive; archives inside an archive are not "
            "unpacked: send the DICOM files in one zip"
        )
