"""Coverage-guided fuzzing (atheris, libFuzzer) of the readers of untrusted DICOM files.

Each input is written as one file and read by the header index the assembly builds, the image
series reader (pixels included), the RTDOSE and RTPLAN readers, and the DICOM node's header
reader (in the transfer syntax the first byte picks): see ``fuzz/targets.py``. The property: a
result or one of our own errors (``InputError`` and its family; the node's ``HeaderError``),
never another exception. pydicom and our packages are instrumented.

Bounded run, as CI does (tests/fuzz/test_atheris.py): the first folder receives new inputs,
the committed seeds are only read::

    python fuzz/fuzz_dicom.py -atheris_runs=3000 /tmp/dicom-corpus fuzz/corpus/dicom

Longer run (an hour; a crash is written to fuzz/crashes/, then add it to
tests/fuzz/crashes/dicom/ with its fix)::

    mkdir -p /tmp/dicom-corpus fuzz/crashes
    python fuzz/fuzz_dicom.py -max_total_time=3600 -timeout=30 -rss_limit_mb=4096 \\
        -artifact_prefix=fuzz/crashes/ /tmp/dicom-corpus fuzz/corpus/dicom
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    import atheris

    with atheris.instrument_imports(include=["pydicom", "worker", "service", "fuzz"]):
        from fuzz import targets
    targets.quiet()
    atheris.Setup(sys.argv, targets.check_dicom)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
