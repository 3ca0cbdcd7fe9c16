"""The PHI filter: what it rewrites in a record (message, ``%``-args, exception and stack text),
what it leaves alone, and that the entry points' handlers get it."""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Iterator

import pytest
from celery import signals
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from worker.logs import (
    MAX_IDENTIFIERS,
    REDACTED,
    PhiFilter,
    forget_identifiers,
    install_phi_filter,
    register_identifiers,
    register_values,
    scrub,
    uid_token,
)

NAME = "Qzxv^Wyrtle"
PATIENT_ID = "PHI-7734129"
STUDY_UID = "1.2.826.0.1.3680043.8.498.10795512345678901234567890"


@pytest.fixture(autouse=True)
def _no_identifiers() -> Iterator[None]:
    forget_identifiers()
    yield
    forget_identifiers()


@pytest.fixture
def logger() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger whose one handler has the filter and writes to a string."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.addFilter(PhiFilter())
    log = logging.getLogger("tests.worker.test_logs")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    log.addHandler(handler)
    yield log, stream
    log.removeHandler(handler)


def _patient_header() -> Dataset:
    ds = Dataset()
    ds.PatientName = NAME
    ds.PatientID = PATIENT_ID
    ds.OtherPatientIDs = ["OTHER-55120", "OTHER-55121"]
    ds.PatientBirthDate = "19470312"
    ds.AccessionNumber = "ACC99310"
    ds.InstitutionName = "Blorvik General"
    ds.ReferringPhysicianName = "Threnody^Ansel"
    ds.Modality = "CT"
    return ds


def test_registered_identifiers_are_redacted_however_they_are_written() -> None:
    register_identifiers(_patient_header())
    text = (
        f"{NAME} {PATIENT_ID} other-55121 1947-03-12 19470312 ACC99310 blorvik general Wyrtle Qzxv Threnody"
    )
    assert scrub(text) == " ".join([REDACTED] * 10)


def test_an_identifier_inside_a_file_name_is_redacted_but_not_inside_a_longer_word() -> None:
    register_values([PATIENT_ID, "7734129"])
    assert scrub(f"{PATIENT_ID}_ct.dcm and /in/{PATIENT_ID}/x") == f"{REDACTED}_ct.dcm and /in/{REDACTED}/x"
    assert scrub("job 9a7734129b") == "job 9a7734129b"  # part of a hex id, not the patient's


def test_short_values_are_not_registered() -> None:
    ds = Dataset()
    ds.PatientID = "12"
    ds.PatientName = "Li"
    register_identifiers(ds)
    assert scrub("took 12 ms; Li") == "took 12 ms; Li"


def test_person_names_in_dicom_form_are_redacted_without_registration() -> None:
    assert scrub("names Doe^John^^Dr and O'Neil^Mary-Kate.") == f"names {REDACTED} and {REDACTED}"


def test_uids_become_stable_short_hashes_and_versions_and_addresses_stay() -> None:
    token = uid_token(STUDY_UID)
    assert token.startswith("uid:") and len(token) == 12
    assert scrub(f"study {STUDY_UID}.") == f"study {token}."
    assert scrub(f"({STUDY_UID}, {STUDY_UID})") == f"({token}, {token})"
    assert uid_token(STUDY_UID + "1") != token
    long_root = "2.25.329800735698586629295641978511506172918"
    assert scrub(long_root) == uid_token(long_root)
    kept = "torch 2.13.0 on 127.0.0.1:11112 and 0.0.0.0, pi 3.14159, 10.20.30.40"
    assert scrub(kept) == kept


def test_the_filter_scrubs_percent_args_and_keeps_clean_records_as_they_are(logger) -> None:
    log, stream = logger
    register_values([PATIENT_ID])
    log.info("patient %s, study %s, %d files", PATIENT_ID, STUDY_UID, 3)
    log.info("job %s done in %.1f s", "a1b2", 2.5)
    assert stream.getvalue().splitlines() == [
        f"INFO patient {REDACTED}, study {uid_token(STUDY_UID)}, 3 files",
        "INFO job a1b2 done in 2.5 s",
    ]


def test_an_exception_traceback_is_scrubbed_for_every_handler(logger) -> None:
    log, stream = logger
    second = io.StringIO()
    other = logging.StreamHandler(second)  # formats the exception itself: must get the clean text
    log.addHandler(other)
    register_values([PATIENT_ID])
    try:
        raise ValueError(f"{NAME} ({PATIENT_ID}) has no series {STUDY_UID}")
    except ValueError:
        log.exception("reading failed")
    finally:
        log.removeHandler(other)
    for output in (stream.getvalue(), second.getvalue()):
        assert "Traceback (most recent call last)" in output
        assert f"ValueError: {REDACTED} ({REDACTED}) has no series {uid_token(STUDY_UID)}" in output
        assert NAME not in output and PATIENT_ID not in output and STUDY_UID not in output


def test_stack_info_is_scrubbed(logger) -> None:
    log, stream = logger

    def qzxv_wyrtle_study_1_2_3() -> None:  # a frame whose source line quotes a UID
        log.info("here", stack_info=True)  # 1.2.826.0.1.3680043.8.498.1

    qzxv_wyrtle_study_1_2_3()
    assert "1.2.826.0.1.3680043.8.498.1" not in stream.getvalue()
    assert uid_token("1.2.826.0.1.3680043.8.498.1") in stream.getvalue()


def test_an_unformattable_record_does_not_print_its_arguments(
    logger, capsys: pytest.CaptureFixture[str]
) -> None:
    log, stream = logger
    log.info("%d instances", PATIENT_ID)
    assert stream.getvalue().startswith("INFO unformattable log message at test_logs:")
    assert PATIENT_ID not in stream.getvalue() + capsys.readouterr().err


def test_records_of_libraries_that_log_identifiers_are_kept_from_warning_up(logger) -> None:
    log, stream = logger
    handler = log.handlers[0]
    for name, level in [
        ("highdicom.base", logging.INFO),
        ("pynetdicom", logging.DEBUG),
        ("pynetdicom", logging.WARNING),
    ]:
        record = logging.LogRecord(name, level, __file__, 1, "copy attributes of %s", (STUDY_UID,), None)
        handler.handle(record)
    assert stream.getvalue() == f"WARNING copy attributes of {uid_token(STUDY_UID)}\n"


def test_the_least_recently_met_identifiers_are_forgotten_first() -> None:
    register_values(f"VALUE-{number:05d}" for number in range(MAX_IDENTIFIERS))
    register_values(["VALUE-00000"])  # met again: now the most recent
    register_values(f"NEWER-{number:05d}" for number in range(10))
    forgotten, kept = "VALUE-00001 VALUE-00010", "VALUE-00000 VALUE-00011 NEWER-00009"
    assert scrub(forgotten) == forgotten
    assert scrub(kept) == " ".join([REDACTED] * 3)


def test_a_value_that_cannot_be_converted_is_skipped_not_raised() -> None:
    ds = Dataset()
    ds.PatientID = PATIENT_ID
    # As read from a file: converted (and refused, in strict mode) only when accessed.
    value = b"S" * 40  # StudyID is SH: at most 16 characters
    ds[Tag("StudyID")] = RawDataElement(Tag("StudyID"), "SH", len(value), value, 0, False, True)
    with pytest.raises(ValueError, match="maximum length"):
        _ = ds.StudyID
    register_identifiers(ds)
    assert scrub(PATIENT_ID) == REDACTED


@pytest.fixture
def root_handler() -> Iterator[io.StringIO]:
    """A handler on the root logger, as an entry point sets one; the filter and warning capture
    are removed again afterwards."""
    # An earlier in-process `rtinjury` call (a test of main()) may have left warnings captured
    # around another test's warning recorder: start from "not captured".
    logging.captureWarnings(False)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        logging.captureWarnings(False)
        for other in root.handlers:
            for found in [f for f in other.filters if isinstance(f, PhiFilter)]:
                other.removeFilter(found)


def test_install_puts_the_filter_once_on_every_handler_and_captures_warnings(root_handler) -> None:
    handler = logging.getLogger().handlers[-1]
    install_phi_filter()
    install_phi_filter()
    assert sum(isinstance(f, PhiFilter) for f in handler.filters) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn(f"invalid value for PN: {NAME!r}", UserWarning, stacklevel=1)
    assert "invalid value for PN" in root_handler.getvalue()
    assert NAME not in root_handler.getvalue()


def test_celery_logger_set_up_signals_install_the_filter() -> None:
    task_logger = logging.getLogger("tests.worker.test_logs.celery-task")
    handler = logging.StreamHandler(io.StringIO())
    task_logger.addHandler(handler)
    try:
        import worker.celery.app  # noqa: F401  (connects the signal handlers)

        signals.after_setup_task_logger.send(sender=None, logger=task_logger, loglevel=logging.INFO)
        assert any(isinstance(f, PhiFilter) for f in handler.filters)
    finally:
        task_logger.removeHandler(handler)
        logging.captureWarnings(False)
        for root_handler in logging.getLogger().handlers:
            for found in [f for f in root_handler.filters if isinstance(f, PhiFilter)]:
                root_handler.removeFilter(found)
