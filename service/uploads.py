"""Receiving an upload: multipart parts streamed straight into a job's ``inputs/`` folder.

The body is parsed as it arrives (python-multipart's streaming parser), so a large study never
sits in memory or in a temporary copy, and an upload over the limit is cut off once the limit
is passed rather than after it has all arrived. Nothing a client names becomes a path: parts
are stored as ``upload-00001.dcm`` … and zip archives (recognised by their first bytes, not by
their names) are unpacked by the safe extractor into ``upload-00001/`` and then removed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import anyio
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.datastructures import Headers

from service.api.errors import ServiceProblem
from worker.errors import InputError
from worker.stages.assemble.sources import ZIP_MAGIC, ZipLimits, extract_zip

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

#: File data is written in blocks of this size (fewer, larger writes off the event loop).
WRITE_BLOCK_BYTES = 1 << 20
#: The multipart field that carries files; every other part is a form field.
FILES_FIELD = "files"
#: Sent with a refusal that leaves the body unread: the server closes the connection after the
#: answer instead of draining (and discarding) the rest of an upload that may be gigabytes long.
CLOSE_CONNECTION = {"Connection": "close"}


@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int
    max_files: int
    #: A form field (not a file) larger than this is refused: they are short JSON or text.
    max_field_bytes: int = 64 * 1024
    max_fields: int = 32


@dataclass
class ReceivedUpload:
    #: Form fields by name; a list, so that a field sent twice can be refused.
    fields: dict[str, list[str]] = field(default_factory=dict)
    #: The stored file parts, in the order received.
    files: list[Path] = field(default_factory=list)
    #: Field names of file parts other than ``files`` (refused by the caller).
    unexpected_file_fields: list[str] = field(default_factory=list)
    body_bytes: int = 0


def check_declared_length(headers: Headers, limits: UploadLimits) -> None:
    """Refuse an upload whose ``Content-Length`` already says it is too large (before reading it)."""
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_bytes:
        raise ServiceProblem("upload-too-large", _too_large(limits), headers=CLOSE_CONNECTION)


def multipart_boundary(headers: Headers) -> bytes:
    """The boundary of a ``multipart/form-data`` body; 415 for any other content type."""
    media_type, options = parse_options_header(headers.get("content-type"))
    if media_type != b"multipart/form-data":
        raise ServiceProblem(
            "unsupported-media-type", "send the files as multipart/form-data (curl -F files=@study.zip)"
        )
    boundary = options.get(b"boundary")
    if not boundary:
        raise ServiceProblem("malformed-upload", "the multipart Content-Type has no boundary")
    return boundary


async def receive_upload(
    headers: Headers, stream: AsyncIterator[bytes], inputs: Path, limits: UploadLimits
) -> ReceivedUpload:
    """Parse the multipart body from ``stream``, writing file parts into ``inputs``.

    Raises
    ------
    ServiceProblem
        ``unsupported-media-type``, ``malformed-upload``, ``upload-too-large``, ``too-many-files``.
        Files already written stay in ``inputs``; the caller removes the job folder.
    """
    receiver = _PartReceiver(inputs, limits)
    parser = MultipartParser(multipart_boundary(headers), receiver.callbacks())
    try:
        async for chunk in stream:
            receiver.upload.body_bytes += len(chunk)
            if receiver.upload.body_bytes > limits.max_bytes:
                raise ServiceProblem("upload-too-large", _too_large(limits), headers=CLOSE_CONNECTION)
            parser.write(chunk)
            await receiver.flush()
        parser.finalize()
        await receiver.flush()
    except FormParserError:
        raise ServiceProblem("malformed-upload", "the multipart body cannot be parsed") from None
    finally:
        await receiver.close()
    if receiver.part_open:
        raise ServiceProblem("malformed-upload", "the multipart body ends in the middle of a part")
    return receiver.upload


def _too_large(limits: UploadLimits) -> str:
    return f"the upload is larger than the limit of {limits.max_bytes} bytes (RTINJURY_MAX_UPLOAD_BYTES)"


@dataclass
class _Part:
    name: str = ""
    disposition: bytes = b""
    file_path: Path | None = None
    handle: BinaryIO | None = None
    #: File data not yet written, or the whole value of a form field.
    data: bytearray = field(default_factory=bytearray)


class _PartReceiver:
    """python-multipart callbacks (synchronous) plus the awaited writes they leave behind."""

    def __init__(self, inputs: Path, limits: UploadLimits) -> None:
        self.inputs = inputs
        self.limits = limits
        self.upload = ReceivedUpload()
        self.part = _Part()
        self.part_open = False
        self._header_name = b""
        self._header_value = b""
        self._fields = 0
        #: Parts whose data must be written (and, when ended, closed) by the next flush.
        self._pending: list[tuple[_Part, bool]] = []
        self._files: list[_Part] = []

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._on_part_begin,
            "on_part_data": self._on_part_data,
            "on_part_end": self._on_part_end,
            "on_header_field": self._on_header_field,
            "on_header_value": self._on_header_value,
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
        }

    def _on_part_begin(self) -> None:
        self.part = _Part()
        self.part_open = True

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self.part.disposition = self._header_value
        self._header_name = self._header_value = b""

    def _on_headers_finished(self) -> None:
        _, options = parse_options_header(self.part.disposition)
        if b"name" not in options:
            raise ServiceProblem("malformed-upload", "a part has no name in its Content-Disposition")
        self.part.name = options[b"name"].decode("utf-8", errors="replace")[:64]
        if b"filename" in options:
            # The client's file name is read by nobody: it is not a path, nor logged.
            self._start_file()
        else:
            self._fields += 1
            if self._fields > self.limits.max_fields:
                raise ServiceProblem("malformed-upload", f"more than {self.limits.max_fields} form fields")

    def _start_file(self) -> None:
        if self.part.name != FILES_FIELD:
            self.upload.unexpected_file_fields.append(self.part.name)
        number = len(self.upload.files) + 1
        if number > self.limits.max_files:
            raise ServiceProblem(
                "too-many-files",
                f"more than {self.limits.max_files} files (RTINJURY_MAX_UPLOAD_FILES)",
                headers=CLOSE_CONNECTION,
            )
        self.part.file_path = self.inputs / f"upload-{number:05d}.dcm"
        self.upload.files.append(self.part.file_path)
        self._files.append(self.part)

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        self.part.data += data[start:end]
        if self.part.file_path is None and len(self.part.data) > self.limits.max_field_bytes:
            too_long = f"form field {self.part.name!r} is over {self.limits.max_field_bytes} bytes"
            raise ServiceProblem("malformed-upload", too_long)
        if self.part.file_path is not None and len(self.part.data) >= WRITE_BLOCK_BYTES:
            self._queue_write(ended=False)

    def _on_part_end(self) -> None:
        self.part_open = False
        if self.part.file_path is not None:
            self._queue_write(ended=True)
            return
        value = self.part.data.decode("utf-8", errors="replace")
        self.upload.fields.setdefault(self.part.name, []).append(value)

    def _queue_write(self, *, ended: bool) -> None:
        self._pending.append((self.part, ended))

    async def flush(self) -> None:
        """Write what the callbacks collected, in a worker thread (disk I/O off the event loop)."""
        pending, self._pending = self._pending, []
        for part, ended in pending:
            await anyio.to_thread.run_sync(_write_part, part, ended)

    async def close(self) -> None:
        """Close what a failure left open (a finished upload has closed every file already)."""
        for part in self._files:
            if part.handle is not None:
                await anyio.to_thread.run_sync(part.handle.close)


def _write_part(part: _Part, ended: bool) -> None:
    assert part.file_path is not None, "only file parts are written"
    if part.handle is None:
        part.handle = part.file_path.open("xb")
    if part.data:
        part.handle.write(part.data)
        part.data.clear()
    if ended:
        part.handle.close()
        part.handle = None


def unpack_archives(files: list[Path], limits: ZipLimits) -> int:
    """Unpack every zip among ``files`` beside it (``upload-00001/``) and delete the archive.

    Returns the number of files the upload holds afterwards.

    Raises
    ------
    worker.errors.InputError
        ``invalid-archive``: an archive is unsafe (``..``, absolute paths, links), a zip bomb,
        has too many entries, or is corrupt.
    """
    count = 0
    for path in files:
        if not _is_zip(path):
            count += 1
            continue
        # The entry limit counts every file of the upload, not each archive on its own.
        remaining = ZipLimits(limits.max_entries - count, limits.max_total_bytes, limits.max_ratio)
        archive = path.rename(path.with_suffix(".zip"))
        try:
            count += len(extract_zip(archive, path.with_suffix(""), remaining))
        except InputError as error:
            raise InputError(error.message, code="invalid-archive") from None
        finally:
            archive.unlink(missing_ok=True)
    return count


def _is_zip(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(len(ZIP_MAGIC)) == ZIP_MAGIC
