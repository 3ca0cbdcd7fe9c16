"""The text prompt template: same sentence in training and inference, absent fields left out."""

from __future__ import annotations

import pytest

from models.errors import PromptInputError
from models.prompt_text import TASK_PHRASES, ClinicalContext, text_prompt


def test_full_context_reads_as_one_clinical_sentence() -> None:
    context = ClinicalContext(
        diagnosis="nasopharyngeal carcinoma",
        prescription_gy=66.0,
        fractions=33,
        months_since_rt=14.4,
        age=57,
        sex="F",
    )
    assert text_prompt("crn", context) == (
        "Segment cerebral radiation necrosis of the temporal lobe on a follow-up contrast-enhanced T1 MR. "
        "Radiotherapy for nasopharyngeal carcinoma to 66 Gy in 33 fractions ended 14 months ago. "
        "Patient: 57-year-old female."
    )


def test_missing_fields_are_left_out_not_written_as_unknown() -> None:
    assert text_prompt("orn") == f"Segment {TASK_PHRASES['orn']}."
    partial = text_prompt("ce", ClinicalContext(prescription_gy=60.0, age=70))
    assert partial == f"Segment {TASK_PHRASES['ce']}. Radiotherapy to 60 Gy. Patient aged 70."
    assert "unknown" not in partial and "None" not in partial


def test_each_task_has_its_own_phrase() -> None:
    sentences = {task: text_prompt(task) for task in ("orn", "ce", "crn")}
    assert len(set(sentences.values())) == 3
    with pytest.raises(PromptInputError, match="unknown task 'xyz'"):
        text_prompt("xyz")


def test_case_json_fields_override_header_fields() -> None:
    stated = ClinicalContext.from_mapping(
        {"diagnosis": "oropharyngeal carcinoma", "prescription_gy": "70", "fractions": 35.0},
        {"age": None, "sex": "M"},
    )
    header = ClinicalContext(prescription_gy=66.0, fractions=30, age=61, sex="F")
    merged = stated.merged_over(header)
    assert merged == ClinicalContext(
        diagnosis="oropharyngeal carcinoma", prescription_gy=70.0, fractions=35, age=61, sex="M"
    )


def test_unreadable_numbers_count_as_absent() -> None:
    context = ClinicalContext.from_mapping({"prescription_gy": "sixty", "months_since_rt": []}, {"age": "x"})
    assert context == ClinicalContext()
