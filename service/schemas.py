"""Public request and response schemas of the REST API (template naming: ``XPublic``, ``XCreate``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from worker.jobs.spec import ClickSpec, Task
from worker.jobs.status import JobState

#: Most clicks one refinement takes.
MAX_CLICKS = 20


class HealthPublic(BaseModel):
    """Liveness answer."""

    status: Literal["ok"]
    version: str


class ReadinessCheck(BaseModel):
    ok: bool
    #: Why not, when not ok.
    detail: str | None = None


class ReadinessPublic(BaseModel):
    """Whether the API can take jobs: database, storage, broker, model."""

    status: Literal["ready", "unavailable"]
    checks: dict[str, ReadinessCheck]


class ProblemFieldError(BaseModel):
    """One invalid field of a request (in a ``validation-error`` problem)."""

    loc: list[str | int]
    msg: str
    type: str


class Problem(BaseModel):
    """An RFC 9457 problem (``application/problem+json``)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(examples=["urn:rtinjury:problem:invalid-study"])
    title: str
    status: int
    detail: str
    instance: str
    #: The stable code, also the last part of ``type``.
    code: str
    request_id: str
    errors: list[ProblemFieldError] | None = None


class JobCreateForm(BaseModel):
    """The form fields of ``POST /v1/jobs`` beside the files (structured ones as JSON strings)."""

    model_config = ConfigDict(extra="forbid")

    task: Task | None = Field(None, description="orn, ce or crn; unset: follows from the follow-up scan")
    clinical_text: str | None = Field(None, max_length=1000, description="free clinical note for the prompt")
    clinical: str | None = Field(
        None,
        max_length=4000,
        description='JSON object of clinical fields, e.g. {"prescription_gy": 70, "months_since_rt": 14}',
    )
    tau: float | None = Field(None, gt=0, lt=1, description="high-dose threshold as a fraction of Dmax")
    options: str | None = Field(
        None, max_length=4000, description='JSON object of options, e.g. {"gate_margin_mm": 3}'
    )
    followup_series_uid: str | None = Field(
        None, max_length=64, pattern=r"^[0-9.]+$", description="which follow-up, when several were sent"
    )


class JobErrorPublic(BaseModel):
    code: str
    message: str


class JobLinks(BaseModel):
    job: str
    #: Result name → download URL; only once the job succeeded.
    results: dict[str, str] = Field(default_factory=dict)


class DeliveryPublic(BaseModel):
    """How sending the results to one DICOM destination went (latest attempt)."""

    destination: str
    state: str
    attempts: int
    sent: int
    failed: int
    error: str | None
    at: datetime


class JobPublic(BaseModel):
    """A job as the API shows it: where it stands and what it found."""

    id: str
    state: JobState
    stage: str | None
    progress: int = Field(ge=0, le=100)
    task: Task | None
    patient_alias: str | None
    owner: str
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    timings_s: dict[str, float]
    warnings: list[str]
    error: JobErrorPublic | None
    refinements: int
    #: "api" (an upload) or "node" (a study pushed to the DICOM node).
    source: str
    deliveries: list[DeliveryPublic]
    summary: dict[str, Any]
    links: JobLinks


class JobsPublic(BaseModel):
    data: list[JobPublic]
    #: All jobs that match the filter (the page holds at most ``limit``).
    count: int
    limit: int
    offset: int


class RefineRequest(BaseModel):
    """Reviewer clicks (LPS, mm): positive inside the lesion, negative outside."""

    model_config = ConfigDict(extra="forbid")

    clicks: list[ClickSpec] = Field(min_length=1, max_length=MAX_CLICKS)


class StudySeriesPublic(BaseModel):
    series_uid: str
    modality: str
    instances: int
    #: Its part in the assembled cases ("follow-up (ct)", "planning CT", "RTDOSE" …), if any.
    role: str | None


class StudyPublic(BaseModel):
    """What the DICOM node holds of one patient (by alias) and where its completion stands."""

    patient_alias: str
    #: "receiving" (an association is open or the quiet period runs), "complete" (jobs made),
    #: "incomplete" (``detail`` says what is missing or not routed).
    state: str
    detail: str | None
    pending: bool
    first_received_at: datetime
    last_received_at: datetime
    last_released_at: datetime | None
    calling_aes: list[str]
    instances: dict[str, int]
    series: list[StudySeriesPublic]
    job_ids: list[str]


class StudiesPublic(BaseModel):
    data: list[StudyPublic]
    count: int
    limit: int
    offset: int


AuditAction = Literal["submit", "list", "read", "view", "download", "refine", "deliver", "delete"]


class AuditEventPublic(BaseModel):
    """One call of a job route: who, what, on which job, and the answer's status (no patient data)."""

    id: int
    at: datetime
    #: Owner id of the calling key.
    owner: str
    action: AuditAction
    job_id: str | None
    #: The result downloaded (``download`` only).
    result: str | None
    #: HTTP status of the answer (403 and 404 refusals included).
    status: int
    request_id: str


class AuditEventsPublic(BaseModel):
    data: list[AuditEventPublic]
    count: int
    limit: int
    offset: int


class ViewGridPublic(BaseModel):
    """The viewer's display grid: voxel (i, j, k) lies at ``origin_mm + (i, j, k) · spacing_mm``
    in LPS millimetres (identity direction: i to the patient's left, j posterior, k superior)."""

    size: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    origin_mm: tuple[float, float, float]


class ViewPlanePublic(BaseModel):
    """One plane of the viewer: its slice count, pixel size and the slice it opens on."""

    count: int
    width: int
    height: int
    #: Width and height of one pixel in mm (the browser keeps this aspect).
    pixel_mm: tuple[float, float]
    start: int


class ViewWindowPublic(BaseModel):
    id: str
    label: str
    level: float
    width: float


class ViewIsodosePublic(BaseModel):
    percent: int
    gy: float
    colour: str


class ViewPublic(BaseModel):
    """What the web viewer needs to show a job's follow-up with its layers."""

    job_id: str
    state: JobState
    task: Task | None
    modality: str
    grid: ViewGridPublic
    planes: dict[str, ViewPlanePublic]
    windows: list[ViewWindowPublic]
    default_window: str
    #: Which overlays the job has: ``lesion``, ``isodose``, ``planning`` (registration review).
    layers: dict[str, bool]
    isodose: list[ViewIsodosePublic]
    lesion_colour: str
    #: Changes whenever the lesion does (a refinement): slice URLs carry it as ``v``.
    version: str
    refinements: int
    clicks: list[ClickSpec]
