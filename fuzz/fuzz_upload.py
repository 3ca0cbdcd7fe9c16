"""Coverage-guided fuzzing (atheris, libFuzzer) of the API's upload parser.

Byte 0 of an input picks the mode, bytes 1-2 the size of the chunks the body arrives in, the rest
is either a ``multipart/form-data`` body (streamed through ``receive_upload``, its form fields
made into a job spec, its files unpacked) or one uploaded file (unpacked if it is a zip): see
``fuzz/targets.py``. The property: a result, or our own refusal (a 4xx ``ServiceProblem``, a
``RequestValidationError``, an ``InputError``), never another exception or a 5xx. Limits are
small (1 MiB, 16 files) so that bombs are refused after little work; the code paths are the
production ones. python-multipart and our packages are instrumented.

Bounded run, as CI does (tests/fuzz/test_atheris.py)::

    python fuzz/fuzz_upload.py -atheris_runs=3000 /tmp/upload-corpus fuzz/corpus/upload

Longer run (an hour; a crash is written to fuzz/crashes/, then add it to
tests/fuzz/crashes/upload/ with its fix)::

    mkdir -p /tmp/upload-corpus fuzz/crashes
    python fuzz/fuzz_upload.py -max_total_time=3600 -timeout=30 -rss_limit_mb=4096 \\
        -artifact_prefix=fuzz/crashes/ /tmp/upload-corpus fuzz/corpus/upload
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    import atheris

    include = ["python_multipart", "zipfile", "worker", "service", "fuzz"]
    with atheris.instrument_imports(include=include):
        from fuzz import targets
    targets.quiet()
    atheris.Setup(sys.argv, targets.check_upload)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
