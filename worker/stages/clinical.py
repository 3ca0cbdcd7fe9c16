"""Clinical context of a case for the text prompt: given fields first, then the DICOM headers.

A site or a user may give the clinical fields (``case.json`` next to the files, REST form
fields); what they leave out is taken from the headers: age and sex from the follow-up's
patient module, prescription and fractions from the RTPLAN. Nothing here is logged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from models.prompt_text import ClinicalContext
from worker.errors import InputError
from worker.stages.assemble.case import Case
from worker.stages.read.case_data import CaseData

CASE_FILE = "case.json"


def header_context(case: Case, data: CaseData) -> ClinicalContext:
    """Age, sex, prescription and fractions as the DICOM objects state them."""
    header = case.followup.first.header
    plan = next((p for p in data.plans if p.prescription_gy), None)
    return ClinicalContext(
        prescription_gy=plan.prescription_gy if plan else None,
        fractions=plan.fractions if plan else None,
        age=_age(str(header.get("PatientAge", "") or ""), header),
        sex=str(header.get("PatientSex", "") or "") or None,
    )


def case_context(case: Case, data: CaseData, given: Mapping[str, Any] | None = None) -> ClinicalContext:
    """``given`` (``case.json``-shaped: ``clinical`` and ``demographics`` objects) over the headers."""
    headers = header_context(case, data)
    if not given:
        return headers
    stated = ClinicalContext.from_mapping(given.get("clinical") or {}, given.get("demographics") or {})
    return stated.merged_over(headers)


def read_case_file(folder: Path) -> dict[str, Any] | None:
    """The optional ``case.json`` of a case folder (None when there is none).

    Raises
    ------
    worker.errors.InputError
        The file exists but is not a JSON object.
    """
    path = folder / CASE_FILE
    if not path.is_file():
        return None
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{CASE_FILE} in {folder.name}: not valid JSON ({error})") from None
    if not isinstance(content, dict):
        raise InputError(f"{CASE_FILE} in {folder.name}: expected a JSON object")
    return content


def _age(value: str, header: Any) -> int | None:
    # PatientAge is "nnnY" (or D/W/M for infants, irrelevant here); else birth date vs study date.
    if len(value) == 4 and value[:3].isdigit() and value[3] == "Y":
        return int(value[:3])
    birth, study = str(header.get("PatientBirthDate", "") or ""), str(header.get("StudyDate", "") or "")
    if len(birth) == 8 and len(study) == 8 and birth.isdigit() and study.isdigit():
        years = int(study[:4]) - int(birth[:4])
        return years - (1 if study[4:] < birth[4:] else 0)
    return None
