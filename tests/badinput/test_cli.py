"""Bad input through the command line: ``rtinjury run`` and ``rtinjury inspect``.

A refusal is exit status 2 and one ``rtinjury: error: …`` line on stderr, with no traceback and
no patient identifier; ``run`` refuses before it loads the network, and the ``--out`` folder it
was given keeps the earlier results it held, byte for byte. Cases run in-process
(``service.cli.main.main``); two run as real processes to show what reaches a terminal.

Refused (exit 2):
    missing-path, empty-folder, a-file-not-a-folder, truncated-slice, zero-length-slice,
    second-patient-mixed-in, dose-in-another-frame, dose-off-the-patient, unknown-vr,
    rows-as-a-decimal-string, relative-dose-without-plan, zero-dose, 4d-mr-classic,
    out-is-a-file, outputs-cannot-be-written (a full disk injected while a run's outputs are put
    into --out: the earlier results stay whole).
Handled with a warning (exit 0): gap-in-followup, gantry-tilt.
"""

from __future__ import annotations

import errno
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from service.cli import run_cmd
from service.cli.main import main
from service.config import get_settings
from tests.badinput import inputs
from tests.badinput.inputs import OTHER_PATIENT_ID, PATIENT_ID
from tests.service.cli.runner import rtinjury
from worker.errors import InputError

pytestmark = pytest.mark.timeout(120)

#: What ``--out`` held before: earlier results under the names a run writes.
EARLIER_RESULTS = {"seg.dcm": b"earlier seg", "report.json": b'{"earlier": true}', "notes.txt": b"mine"}


@pytest.fixture(autouse=True)
def _no_site_environment(no_site_environment: None) -> None:
    """The commands read no RTINJURY_* of the machine (a model path, role rules …)."""


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """An output folder that already holds earlier results."""
    folder = tmp_path / "out"
    folder.mkdir()
    for name, data in EARLIER_RESULTS.items():
        (folder / name).write_bytes(data)
    return folder


def assert_untouched(out: Path) -> None:
    assert {p.name: p.read_bytes() for p in out.iterdir()} == EARLIER_RESULTS


def assert_one_error_line(status: int, stdout: str, stderr: str, words: str) -> None:
    assert status == 2, (stdout, stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rtinjury: error: "), stderr
    assert words in lines[0], lines[0]
    assert stdout == "" and "Traceback" not in stderr
    assert PATIENT_ID not in stderr and OTHER_PATIENT_ID not in stderr


def in_process(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(list(args))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


# --- the catalogue ------------------------------------------------------------------------------

Build = Callable[[Path], Path]


def damaged(damage: Callable[[Path], None]) -> Build:
    """The case folder, damaged."""

    def build(case: Path) -> Path:
        damage(case)
        return case

    return build


def empty_folder(case: Path) -> Path:
    (case.parent / "empty").mkdir()
    return case.parent / "empty"


@dataclass(frozen=True)
class CliCase:
    name: str
    command: str
    #: From a fresh copy of the good patient to the PATH the command is given.
    build: Build
    #: What the error line (exit 2) or the report (exit 0) must say.
    words: str


REFUSED = [
    CliCase("missing-path", "run", lambda case: case / "nowhere", "no such file or folder"),
    CliCase("empty-folder", "run", empty_folder, "no DICOM instances found"),
    CliCase("a-file-not-a-folder", "run", lambda case: inputs.followup_slices(case)[0], "no RTDOSE found"),
    CliCase("truncated-slice", "run", damaged(inputs.truncate_a_slice), "file is truncated"),
    CliCase("zero-length-slice", "inspect", damaged(inputs.empty_a_slice), "empty file (0 bytes)"),
    CliCase(
        "second-patient-mixed-in",
        "inspect",
        damaged(inputs.followup_of_another_patient),
        "2 different patients",
    ),
    CliCase(
        "dose-in-another-frame",
        "run",
        damaged(inputs.dose_in_another_frame),
        "no planning CT shares the RTDOSE frame of reference",
    ),
    CliCase(
        "dose-off-the-patient",
        "run",
        damaged(inputs.dose_off_the_patient),
        "lies wholly outside the planning CT",
    ),
    CliCase("unknown-vr", "inspect", damaged(inputs.unknown_vr), "value representation 'ZZ'"),
    CliCase(
        "rows-as-a-decimal-string",
        "inspect",
        damaged(inputs.rows_as_a_decimal_string),
        "Rows is not an integer",
    ),
    CliCase(
        "relative-dose-without-plan",
        "inspect",
        damaged(inputs.relative_dose_without_plan),
        "DoseUnits RELATIVE cannot be turned into Gy",
    ),
    CliCase("zero-dose", "inspect", damaged(inputs.zero_dose), "0 Gy everywhere"),
    CliCase("4d-mr-classic", "inspect", damaged(inputs.followup_4d_classic), "a 4D series"),
]


@pytest.mark.parametrize("bad", REFUSED, ids=[c.name for c in REFUSED])
def test_refused_with_one_line(
    capsys: pytest.CaptureFixture[str], case: Path, out: Path, bad: CliCase
) -> None:
    path = str(bad.build(case))
    args = ["run", path, "--out", str(out)] if bad.command == "run" else ["inspect", path]
    assert_one_error_line(*in_process(capsys, *args), bad.words)
    assert_untouched(out)


WARNED = [
    CliCase("gap-in-followup", "inspect", damaged(inputs.gap_in_followup), "1 missing slice(s) detected"),
    CliCase("gantry-tilt", "inspect", damaged(inputs.tilted_followup), "gantry tilt / sheared stack of 9.9"),
]


@pytest.mark.parametrize("bad", WARNED, ids=[c.name for c in WARNED])
def test_handled_with_a_warning(capsys: pytest.CaptureFixture[str], case: Path, bad: CliCase) -> None:
    status, stdout, stderr = in_process(capsys, "inspect", str(bad.build(case)))
    assert status == 0, stderr
    warnings = [line.strip() for line in stdout.splitlines() if line.strip().startswith("warning:")]
    assert any(bad.words in w for w in warnings), stdout
    assert "warning: follow-up: resampled to a regular 2 mm orthogonal grid" in warnings


def test_out_that_is_a_file_is_refused_before_anything_runs(
    capsys: pytest.CaptureFixture[str], case: Path, tmp_path: Path
) -> None:
    taken = tmp_path / "results.txt"
    taken.write_bytes(b"not a folder")
    status, stdout, stderr = in_process(capsys, "run", str(case), "--out", str(taken))
    assert_one_error_line(status, stdout, stderr, "exists and is not a folder")
    assert taken.read_bytes() == b"not a folder"


def test_outputs_that_cannot_be_written_leave_the_earlier_results(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, out: Path
) -> None:
    produced = tmp_path / "produced"
    produced.mkdir()
    new = {"preview.png": b"new preview", "report.json": b'{"new": true}', "seg.dcm": b"new seg"}
    for name, data in new.items():
        (produced / name).write_bytes(data)
    copied: list[str] = []
    real_copy = shutil.copy2

    def disk_full_at_the_third_file(source: Path, target: Path) -> object:
        if len(copied) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        copied.append(Path(source).name)
        return real_copy(source, target)

    # Failure injection only: the disk fills up while the outputs of a run are put into --out.
    with monkeypatch.context() as patched:
        patched.setattr(run_cmd.shutil, "copy2", disk_full_at_the_third_file)
        with pytest.raises(InputError, match=r"No space left on device.*unchanged"):
            run_cmd.publish_outputs(produced, out)
    assert len(copied) == 2
    assert_untouched(out)  # nothing replaced, nothing half written, no staging folder left
    run_cmd.publish_outputs(produced, out)  # with room: the new set replaces, other files stay
    assert {p.name: p.read_bytes() for p in out.iterdir()} == {**EARLIER_RESULTS, **new}


def test_a_real_run_process_shows_one_line_and_no_traceback(case: Path, out: Path) -> None:
    inputs.truncate_a_slice(case)
    done = rtinjury("run", str(case), "--out", str(out))
    assert_one_error_line(done.returncode, done.stdout, done.stderr, "file is truncated")
    assert_untouched(out)


def test_a_real_inspect_process_shows_one_line_and_no_traceback(case: Path) -> None:
    inputs.binary_vr_of_the_wrong_size(case)
    done = rtinjury("inspect", str(case))
    assert_one_error_line(done.returncode, done.stdout, done.stderr, "(0028,0100) (UL) is 2 bytes long")


@pytest.mark.parametrize(
    ("variable", "value", "words"),
    [
        ("RTINJURY_NODE_PORT", "eleven", "RTINJURY_NODE_PORT: Input should be a valid integer"),
        ("RTINJURY_MAX_UPLOAD_BYTES", "-5", "RTINJURY_MAX_UPLOAD_BYTES: Input should be greater than"),
        ("RTINJURY_API_KEY_HASHES", '["sha256:secret-looking-value"]', "RTINJURY_API_KEY_HASHES"),
        ("RTINJURY_NODE_PEERS", "not-json-at-all", "node_peers"),
        ("RTINJURY_NODE_PEERS", '[{"ae_title": "PACS"}]', "RTINJURY_NODE_PEERS: Field required"),
    ],
    ids=[
        "port-not-a-number",
        "negative-upload-limit",
        "malformed-key-hash",
        "peers-not-json",
        "peer-without-host",
    ],
)
@pytest.mark.timeout(120)  # were a bad setting taken, the node would serve until stopped
def test_a_bad_setting_is_one_line_naming_it_without_its_value(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], variable: str, value: str, words: str
) -> None:
    monkeypatch.setenv(variable, value)
    get_settings.cache_clear()  # read once per process: this test's environment must be read
    try:
        status, stdout, stderr = in_process(capsys, "node")
    finally:
        get_settings.cache_clear()
    assert_one_error_line(status, stdout, stderr, words)
    assert "invalid setting" in stderr and value not in stderr
