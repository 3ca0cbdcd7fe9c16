"""What the fuzzers check: any bytes give a result or one of our own specific errors, never another
exception (which the worker reports as "internal error", the node as a node failure and the API
as a 500).

``check_dicom`` runs the readers of untrusted DICOM files: the header index the assembly builds
(``index_files``), the image series reader (pixels included), the RTDOSE and RTPLAN readers, and
the DICOM node's header reader of a received dataset. ``check_upload`` runs the API's upload
parser: the streamed multipart body, the form fields made into a job spec, the zip extraction
with its limits. Both are plain functions: the atheris harnesses (``fuzz_dicom.py``,
``fuzz_upload.py``) import this module under instrumentation, and tests/fuzz replays the
committed crash inputs through it without atheris.
"""

from __future__ import annotations

import asyncio
import io
import logging
import shutil
import tempfile
import warnings
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TypeVar

from fastapi.exceptions import RequestValidationError
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from starlette.datastructures import Headers

from service.api.errors import ServiceProblem
from service.jobs import spec_from_form
from service.node.header import HeaderError
from service.node.header import read_header as read_node_header
from service.uploads import UploadLimits, receive_upload, unpack_archives
from worker.errors import InputError
from worker.stages.assemble.index import index_files
from worker.stages.assemble.sources import ZipLimits
from worker.stages.read.rtdose import read_rtdose
from worker.stages.read.rtplan import read_rtplan
from worker.stages.read.series import read_image_series

#: Transfer syntaxes a peer may negotiate for a dataset's bytes (the node reads in each of them).
NODE_SYNTAXES = (
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
)
#: Upload modes (first byte of an upload input): a multipart body, or the bytes of one uploaded file.
MULTIPART, ONE_FILE = 0, 1
BOUNDARY = "fuzzboundary"
#: Small limits, so that bombs and floods are refused after little work (the paths are the same).
UPLOAD_LIMITS = UploadLimits(max_bytes=1024**2, max_files=16, max_field_bytes=4096, max_fields=8)
ZIP_LIMITS = ZipLimits(max_entries=16, max_total_bytes=1024**2, max_ratio=200.0)

T = TypeVar("T")
_scratch = Path(tempfile.mkdtemp(prefix="rtinjury-fuzz-"))
_loop = asyncio.new_event_loop()


def quiet() -> None:
    """No library warnings or log lines per input: they cost time and say nothing here."""
    warnings.simplefilter("ignore")
    logging.disable(logging.CRITICAL)


# -- DICOM ------------------------------------------------------------------------------------


def check_dicom(data: bytes) -> None:
    """The readers of an untrusted DICOM file, on ``data``, in the worker's order: the header
    index first, then the reader of the category it found (as the assembly routes a series);
    the node's header reader on the same bytes. A foreign exception escapes."""
    path = _scratch / "instance.dcm"
    path.write_bytes(data)
    index = _expect(InputError, lambda: index_files([path]))
    for series in index.series if index is not None else []:
        reader = READERS.get(series.category)
        if reader is not None:
            _expect(InputError, lambda: reader(path))  # noqa: B023 (called at once)
    syntax = NODE_SYNTAXES[data[0] % len(NODE_SYNTAXES)] if data else ImplicitVRLittleEndian
    _expect(HeaderError, lambda: read_node_header(io.BytesIO(data), UID(syntax)))


#: What the worker reads a series of each category with.
READERS: dict[str, Callable[[Path], object]] = {
    "image": lambda path: read_image_series([path]),
    "rtdose": read_rtdose,
    "rtplan": read_rtplan,
}


# -- uploads ----------------------------------------------------------------------------------


def check_upload(data: bytes) -> None:
    """The upload parser on ``data``: byte 0 the mode, bytes 1-2 the stream's chunk size, the rest
    the body (``MULTIPART``) or the one uploaded file (``ONE_FILE``)."""
    if len(data) < 3:
        return
    mode, chunk, body = data[0] % 2, 1 + int.from_bytes(data[1:3], "little"), data[3:]
    inputs = _scratch / "inputs"
    shutil.rmtree(inputs, ignore_errors=True)
    inputs.mkdir()
    if mode == ONE_FILE:
        upload = inputs / "upload-00001.dcm"
        upload.write_bytes(body)
        _expect(InputError, lambda: unpack_archives([upload], ZIP_LIMITS))
        return
    _expect((ServiceProblem, RequestValidationError, InputError), lambda: _multipart(body, chunk, inputs))


def _multipart(body: bytes, chunk: int, inputs: Path) -> None:
    headers = Headers(
        {"content-type": f"multipart/form-data; boundary={BOUNDARY}", "content-length": str(len(body))}
    )
    upload = _loop.run_until_complete(receive_upload(headers, _chunks(body, chunk), inputs, UPLOAD_LIMITS))
    spec_from_form(upload.fields)
    unpack_archives(upload.files, ZIP_LIMITS)


async def _chunks(body: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


# -- the property -----------------------------------------------------------------------------


def _expect(allowed: type[Exception] | tuple[type[Exception], ...], call: Callable[[], T]) -> T | None:
    """``call()``, or None when it raised an ``allowed`` error (a correct answer), unless that error
    is a problem the API would answer with a 5xx."""
    try:
        return call()
    except allowed as error:
        if isinstance(error, ServiceProblem) and error.status >= 500:
            raise AssertionError(f"upload answered {error.status} ({error.code})") from error
        return None
