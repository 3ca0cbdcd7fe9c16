"""The text prompt: task + clinical + demographic fields → one sentence for the text encoder.

Paper §3.2.1: the text prompt carries the injury type and the clinical context the radiologist
would read with the scan. One template for training and inference, so a model sees at run time
the phrasing it was trained on. Missing fields are left out rather than written as "unknown".
Laterality is deliberately not part of the prompt: training flips volumes left–right, and a
sentence saying "left" on a flipped volume would teach the network to ignore it anyway.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from models.errors import PromptInputError

TASK_PHRASES: dict[str, str] = {
    "orn": "osteoradionecrosis of the mandible on a follow-up CT",
    "ce": "cerebral edema of the temporal lobe on a follow-up T2-FLAIR MR",
    "crn": "cerebral radiation necrosis of the temporal lobe on a follow-up contrast-enhanced T1 MR",
}
_SEX_WORDS = {"M": "male", "F": "female"}


@dataclass(frozen=True)
class ClinicalContext:
    """What is known about the patient and the treatment; every field optional."""

    diagnosis: str | None = None
    prescription_gy: float | None = None
    fractions: int | None = None
    months_since_rt: float | None = None
    age: int | None = None
    sex: str | None = None
    note: str | None = None

    @classmethod
    def from_mapping(cls, clinical: Mapping[str, Any], demographics: Mapping[str, Any]) -> ClinicalContext:
        """From ``case.json``-shaped fields (``clinical`` and ``demographics`` objects)."""
        return cls(
            diagnosis=_text(clinical.get("diagnosis")),
            prescription_gy=_number(clinical.get("prescription_gy")),
            fractions=_integer(clinical.get("fractions")),
            months_since_rt=_number(clinical.get("months_since_rt")),
            age=_integer(demographics.get("age")),
            sex=_text(demographics.get("sex")),
            note=_text(clinical.get("note")),
        )

    def merged_over(self, fallback: ClinicalContext) -> ClinicalContext:
        """These fields, with ``fallback``'s where this one has none (e.g. header-derived)."""
        return ClinicalContext(
            **{
                name: value if value is not None else getattr(fallback, name)
                for name, value in self.__dict__.items()
            }
        )


def text_prompt(task: str, context: ClinicalContext | None = None) -> str:
    """The sentence given to the text encoder for one case."""
    try:
        phrase = TASK_PHRASES[task]
    except KeyError:
        raise PromptInputError(f"unknown task {task!r}; known: {', '.join(TASK_PHRASES)}") from None
    parts = [f"Segment {phrase}."]
    context = context or ClinicalContext()
    treatment = _treatment(context)
    if treatment:
        parts.append(treatment)
    patient = _patient(context)
    if patient:
        parts.append(patient)
    if context.note:
        parts.append(context.note.strip())
    return " ".join(parts)


def _treatment(context: ClinicalContext) -> str:
    words = ["Radiotherapy"]
    if context.diagnosis:
        words.append(f"for {context.diagnosis}")
    if context.prescription_gy:
        dose = f"{context.prescription_gy:g} Gy"
        words.append(f"to {dose} in {context.fractions} fractions" if context.fractions else f"to {dose}")
    if context.months_since_rt is not None:
        words.append(f"ended {context.months_since_rt:.0f} months ago")
    return " ".join(words) + "." if len(words) > 1 else ""


def _patient(context: ClinicalContext) -> str:
    sex = _SEX_WORDS.get((context.sex or "").upper())
    if context.age is not None and sex:
        return f"Patient: {context.age}-year-old {sex}."
    if context.age is not None:
        return f"Patient aged {context.age}."
    return f"Patient: {sex}." if sex else ""


def _text(value: Any) -> str | None:
    return str(value).strip() or None if value is not None else None


def _number(value: Any) -> float | None:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _integer(value: Any) -> int | None:
    number = _number(value)
    return round(number) if number is not None else None
