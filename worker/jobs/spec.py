"""What a job was asked to do (``spec.json``): task, clinical fields, τ and options."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from models.files import write_atomically
from worker.errors import StageError
from worker.stages.prompts import DEFAULT_TAU

Task = Literal["orn", "ce", "crn"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ClinicalFields(_Strict):
    """Structured clinical context for the text prompt; what is left out comes from the headers."""

    diagnosis: str | None = Field(default=None, max_length=200, examples=["oropharyngeal carcinoma"])
    prescription_gy: float | None = Field(default=None, gt=0, le=200)
    fractions: int | None = Field(default=None, gt=0, le=100)
    months_since_rt: float | None = Field(default=None, ge=0, le=600)
    age: int | None = Field(default=None, ge=0, le=130)
    sex: Literal["M", "F", "O"] | None = None

    def as_case_file(self, note: str | None) -> dict[str, Any]:
        """The ``case.json`` shape the clinical-context reader takes."""
        clinical = self.model_dump(include={"diagnosis", "prescription_gy", "fractions", "months_since_rt"})
        if note:
            clinical["note"] = note
        return {"clinical": clinical, "demographics": self.model_dump(include={"age", "sex"})}


class JobOptions(_Strict):
    #: How far outside the high-dose region (mm) a predicted voxel may lie and still be kept.
    gate_margin_mm: float = Field(default=3.0, ge=0, le=50)
    #: Connected components smaller than this (cc) are removed.
    min_component_cc: float = Field(default=0.05, ge=0, le=100)
    #: None lets the register stage decide (deformable after rigid when the images allow it).
    deformable: bool | None = None


class DestinationTLS(_Strict):
    """DICOM TLS to a destination: the CA its certificate must chain to (its name or address must
    be the destination's ``host``), and our certificate and key when it asks for one."""

    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None

    @model_validator(mode="after")
    def _certificate_with_its_key(self) -> DestinationTLS:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (our client certificate and its key)")
        return self


class Destination(_Strict):
    """A DICOM peer that receives the job's SEG, RTSTRUCT and SR (C-STORE)."""

    name: str = Field(min_length=1, max_length=64)
    ae_title: str = Field(min_length=1, max_length=16)
    host: str = Field(min_length=1, max_length=253)
    port: int = Field(ge=1, le=65535)
    #: None: plain DICOM (no TLS).
    tls: DestinationTLS | None = None


class JobSpec(_Strict):
    """One job's request, as stored in ``spec.json``."""

    #: None: the task follows from the follow-up (CT → ORN, T2/FLAIR → CE, contrast T1 → CRN).
    task: Task | None = None
    clinical_text: str | None = Field(default=None, max_length=1000)
    clinical: ClinicalFields = Field(default_factory=lambda: ClinicalFields())
    tau: float = Field(default=DEFAULT_TAU, gt=0, lt=1)
    #: Which follow-up series, when the inputs hold more than one.
    followup_series_uid: str | None = Field(default=None, max_length=64, pattern=r"^[0-9.]+$")
    options: JobOptions = Field(default_factory=lambda: JobOptions())
    #: Where the DICOM results go once the job has succeeded (the DICOM node's routes set these).
    destinations: list[Destination] = Field(default_factory=list, max_length=10)

    def case_file(self) -> dict[str, Any]:
        return self.clinical.as_case_file(self.clinical_text)


class ClickSpec(_Strict):
    """A reviewer's click in patient coordinates (LPS, mm): inside the lesion or outside it."""

    point_mm: tuple[float, float, float]
    positive: bool


def write_spec(spec: JobSpec, path: Path) -> None:
    write_atomically(path, spec.model_dump_json(indent=2).encode("utf-8"))


def read_spec(path: Path) -> JobSpec:
    try:
        return JobSpec.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, ValidationError) as error:
        # Written by us before the job was queued: a missing or broken one is our fault.
        raise StageError(
            f"the job's spec.json cannot be read ({type(error).__name__})", code="broken-job"
        ) from None
