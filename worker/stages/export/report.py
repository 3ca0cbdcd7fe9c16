"""Export stage: the job report, a JSON summary of one finding for people and spreadsheets.

Inputs: the lesion mask the model produced (on the follow-up grid), the :class:`PreparedCase`
(registration, dose on the follow-up grid, high-dose region), the :class:`AlgorithmInfo`, stage
timings and warnings, and a few non-identifying facts about the follow-up.
Output: :class:`Report` — lesion size and position, dose in the lesion, the prompt, the
registration QA, the model, and where the other outputs went.

Reports end up in logs, tickets and spreadsheets, so they carry **no patient identifiers**: the
patient is named only by a pseudonymous alias the caller chooses, and every model forbids extra
fields, so a name or ID cannot slip in through a new attribute either. The JSON schema is
committed as ``schemas/report.schema.json``; regenerate it with
``python -m worker.stages.export.report`` after changing a model here.

Conventions: positions are DICOM patient coordinates (LPS, mm); doses in Gy; volumes in cc;
V-values in % of the structure's volume and in cc. Numbers are rounded well below any clinically
meaningful precision (0.1 mm³, 0.1 mGy, 1 µm) so the JSON stays readable.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import SimpleITK as sitk
from pydantic import BaseModel, ConfigDict, Field, field_validator

from models.files import write_atomically
from models.tasks import TASKS
from worker.errors import GeometryError
from worker.stages.assemble.rules import Task
from worker.stages.dose_stats import DoseStatistics, mask_dose_statistics
from worker.stages.export.algorithm import UNREVIEWED, AlgorithmInfo
from worker.stages.prepare import PreparedCase
from worker.stages.prompts import HighDoseRegion
from worker.stages.register.result import RegistrationMethod, RegistrationResult

SCHEMA_PATH = Path(__file__).resolve().parents[3] / "schemas" / "report.schema.json"
#: Relative tolerance on spacing/origin/direction when checking that two grids are the same.
GRID_TOLERANCE = 1e-4
#: Output names the caller is expected to fill in (others are allowed).
OUTPUT_NAMES = ("seg", "rtstruct", "sr", "preview")

Point = tuple[float, float, float]
Index = tuple[int, int, int]


class _Strict(BaseModel):
    """Base of every report model: no unknown fields (nothing identifying can be smuggled in)."""

    # Serialisation-mode schema with defaults marked required: every written report has every
    # field, so a document missing one is invalid.
    model_config = ConfigDict(extra="forbid", json_schema_serialization_defaults_required=True)


class BoundingBox(_Strict):
    """Axis-aligned LPS box through the centres of the outermost voxels (like the prompt box)."""

    min_mm: Point
    max_mm: Point


class LesionSummary(_Strict):
    """Size and position of the segmented finding."""

    empty: bool = Field(description="True when the model found no lesion voxel.")
    volume_cc: float = Field(ge=0.0)
    voxels: int = Field(ge=0)
    components: int = Field(ge=0, description="26-connected components (diagonal neighbours join).")
    centroid_mm: Point | None = Field(description="Physical centroid (LPS) of the lesion voxels.")
    bounding_box_mm: BoundingBox | None


class DoseSummary(_Strict):
    """Planning dose inside a structure (sub-voxel sampled, see worker.stages.dose_stats)."""

    dmean_gy: float
    dmax_gy: float
    dmin_gy: float
    d2cc_gy: float | None = Field(description="Null when the structure is smaller than 2 cc.")
    d98_gy: float
    d50_gy: float
    d2_gy: float
    v_percent: dict[str, float] = Field(description="e.g. V60Gy: % of the volume receiving ≥ 60 Gy.")
    v_cc: dict[str, float] = Field(description="e.g. V60Gy: cc of the volume receiving ≥ 60 Gy.")


class PromptBox(_Strict):
    """The high-dose region's box: SimpleITK (column, row, slice) indices, inclusive."""

    index_min: Index
    index_max: Index
    corner_min_mm: Point = Field(description="LPS centre of the voxel at index_min.")
    corner_max_mm: Point = Field(description="LPS centre of the voxel at index_max.")


class PromptSummary(_Strict):
    """The dose-guided prompt: r = largest component of {dose ≥ tau·Dmax} on the follow-up."""

    tau: float
    dmax_gy: float
    threshold_gy: float
    box: PromptBox
    high_dose_roi_volume_cc: float
    high_dose_roi_dose: DoseSummary


class RegistrationQAModel(_Strict):
    """Figures a physicist checks before trusting the registration."""

    metric_before: float | None
    metric_after: float | None
    body_overlap_before: float | None
    body_overlap_after: float | None
    rotation_degrees: float
    translation_mm: float
    jacobian_min: float | None
    jacobian_max: float | None
    seconds: float


class RegistrationSummary(_Strict):
    method: RegistrationMethod
    qa: RegistrationQAModel
    flags: list[str]
    notes: list[str]
    needs_review: bool


class Software(_Strict):
    name: str
    version: str


class ModelSummary(_Strict):
    model_id: str
    weights_sha256: str
    software: Software


class PatientSummary(_Strict):
    """Deliberately not identifying: an alias chosen by the caller, never a name, ID or birth date."""

    alias: str = Field(min_length=1, max_length=64)
    study_date: date | None
    followup_description: str | None
    followup_modality: str


class Report(_Strict):
    """The job report of one finding on one follow-up."""

    schema_version: Literal["1"] = "1"
    task: Task
    finding_label: str
    reviewed: Literal[False] = False
    notice: str = Field(default=UNREVIEWED, json_schema_extra={"const": UNREVIEWED})
    patient: PatientSummary
    lesion: LesionSummary
    lesion_dose: DoseSummary | None = Field(description="Null when the lesion is empty.")
    prompt: PromptSummary
    registration: RegistrationSummary
    model: ModelSummary
    timings_s: dict[str, float]
    warnings: list[str]
    outputs: dict[str, str] = Field(
        default_factory=dict,
        description="Output name (seg, rtstruct, sr, preview) → file name relative to the report.",
    )

    @field_validator("notice")
    @classmethod
    def _unreviewed(cls, value: str) -> str:
        # Until a person signs the finding off, every report says it was not reviewed.
        if value != UNREVIEWED:
            raise ValueError(f"notice must be {UNREVIEWED!r}")
        return value

    @field_validator("outputs")
    @classmethod
    def _relative_names(cls, value: dict[str, str]) -> dict[str, str]:
        # The report travels with its outputs; an absolute path would leak the server's layout
        # and break when the folder is moved.
        for name, file in value.items():
            if not file or file.startswith(("/", "\\")) or ".." in Path(file).parts or ":" in file:
                raise ValueError(f"output {name!r} must be a relative file name, got {file!r}")
        return value


def build_report(
    *,
    task: str,
    lesion_mask: sitk.Image,
    prepared: PreparedCase,
    algorithm: AlgorithmInfo,
    timings: Mapping[str, float],
    warnings: Sequence[str],
    patient_alias: str,
    study_date: str | None,
    followup_description: str | None,
    modality: str,
) -> Report:
    """The report of ``lesion_mask`` (non-zero voxels) found on a prepared case.

    Parameters
    ----------
    task: str
        "orn", "ce" or "crn".
    lesion_mask: SimpleITK.Image
        The finding on the follow-up grid (the grid of ``prepared.dose.image``).
    warnings: Sequence[str]
        The caller's warnings; the prepared case's warnings and the report's own (an empty
        lesion) are added, each once, in that order.
    study_date: str, optional
        DICOM DA (YYYYMMDD) or ISO date of the follow-up study; an unreadable date is left out
        with a warning.

    Raises
    ------
    worker.errors.GeometryError
        The lesion mask is not on the mapped dose's grid.
    ValueError
        An unknown task.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    _check_same_grid(lesion_mask, prepared.dose.image)
    own: list[str] = []
    lesion = lesion_summary(lesion_mask)
    lesion_dose = None
    if lesion.empty:
        own.append("no lesion was found on the follow-up; lesion dose statistics are left out")
    else:
        lesion_dose = dose_summary(mask_dose_statistics(lesion_mask, prepared.dose.image))
    parsed_date = _parse_date(study_date)
    if study_date and parsed_date is None:
        own.append("the study date is not a valid DICOM date; left out of the report")
    return Report(
        task=cast(Task, task),  # checked against TASKS above
        finding_label=TASKS[task].codes.label,
        patient=PatientSummary(
            alias=patient_alias,
            study_date=parsed_date,
            followup_description=followup_description,
            followup_modality=modality,
        ),
        lesion=lesion,
        lesion_dose=lesion_dose,
        prompt=prompt_summary(prepared.region, prepared.region_dose),
        registration=registration_summary(prepared.registration),
        model=ModelSummary(
            model_id=algorithm.model_id,
            weights_sha256=algorithm.weights_sha256,
            software=Software(name=algorithm.name, version=algorithm.version),
        ),
        timings_s={stage: round(float(seconds), 3) for stage, seconds in timings.items()},
        warnings=list(dict.fromkeys([*warnings, *prepared.warnings, *own])),
    )


def _check_same_grid(mask: sitk.Image, reference: sitk.Image) -> None:
    """Dose statistics and positions assume the mask and the dose share voxels exactly."""
    problems = []
    if mask.GetDimension() != 3 or mask.GetSize() != reference.GetSize():
        problems.append(f"size {mask.GetSize()} vs {reference.GetSize()}")
    else:
        scale = max(reference.GetSpacing())
        for name, a, b, tol in (
            ("spacing", mask.GetSpacing(), reference.GetSpacing(), GRID_TOLERANCE * scale),
            ("origin", mask.GetOrigin(), reference.GetOrigin(), GRID_TOLERANCE * scale),
            ("direction", mask.GetDirection(), reference.GetDirection(), GRID_TOLERANCE),
        ):
            if not np.allclose(a, b, rtol=0.0, atol=tol):
                problems.append(f"{name} differs")
    if problems:
        raise GeometryError(
            "the lesion mask is not on the follow-up grid of the mapped dose (" + "; ".join(problems) + ")"
        )


def lesion_summary(mask: sitk.Image) -> LesionSummary:
    """Volume, 26-connected component count, centroid and LPS box of the non-zero voxels."""
    inside = sitk.GetArrayViewFromImage(mask) != 0
    voxels = int(np.count_nonzero(inside))
    if voxels == 0:
        return LesionSummary(
            empty=True, volume_cc=0.0, voxels=0, components=0, centroid_mm=None, bounding_box_mm=None
        )
    components = sitk.ConnectedComponentImageFilter()
    components.FullyConnectedOn()  # 26-connectivity: voxels touching at an edge or a corner join
    components.Execute(sitk.NotEqual(mask, 0))  # UInt8 whatever the mask's pixel type
    # (slice, row, col) → (x, y, z) index order, then through the image's affine geometry.
    indices = np.argwhere(inside)[:, ::-1].astype(np.float64)
    points = index_to_physical(mask, indices)
    centroid = mask.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in indices.mean(axis=0)))
    return LesionSummary(
        empty=False,
        volume_cc=_round(voxels * float(np.prod(mask.GetSpacing())) / 1000.0),
        voxels=voxels,
        components=int(components.GetObjectCount()),
        centroid_mm=_point(centroid),
        bounding_box_mm=BoundingBox(min_mm=_point(points.min(axis=0)), max_mm=_point(points.max(axis=0))),
    )


def index_to_physical(image: sitk.Image, indices: np.ndarray) -> np.ndarray:
    """LPS positions of (x, y, z) voxel indices, shape (n, 3); vectorised TransformIndexToPhysicalPoint."""
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    scaled = indices * np.asarray(image.GetSpacing())
    return np.asarray(image.GetOrigin()) + scaled @ direction.T


def dose_summary(stats: DoseStatistics) -> DoseSummary:
    return DoseSummary(
        dmean_gy=_round(stats.mean_gy),
        dmax_gy=_round(stats.max_gy),
        dmin_gy=_round(stats.min_gy),
        d2cc_gy=None if stats.d2cc_gy is None else _round(stats.d2cc_gy),
        d98_gy=_round(stats.d98_gy),
        d50_gy=_round(stats.d50_gy),
        d2_gy=_round(stats.d2_gy),
        v_percent={k: _round(v) for k, v in stats.v_percent.items()},
        v_cc={k: _round(v) for k, v in stats.v_cc.items()},
    )


def prompt_summary(region: HighDoseRegion, region_dose: DoseStatistics) -> PromptSummary:
    return PromptSummary(
        tau=region.tau,
        dmax_gy=_round(region.dmax_gy),
        threshold_gy=_round(region.threshold_gy),
        box=PromptBox(
            index_min=region.index_min,
            index_max=region.index_max,
            corner_min_mm=_point(region.corner_min_mm),
            corner_max_mm=_point(region.corner_max_mm),
        ),
        high_dose_roi_volume_cc=_round(region.volume_cc),
        high_dose_roi_dose=dose_summary(region_dose),
    )


def registration_summary(result: RegistrationResult) -> RegistrationSummary:
    qa = result.qa
    return RegistrationSummary(
        method=result.method,
        qa=RegistrationQAModel(
            metric_before=_round_or_none(qa.metric_before),
            metric_after=_round_or_none(qa.metric_after),
            body_overlap_before=_round_or_none(qa.body_overlap_before),
            body_overlap_after=_round_or_none(qa.body_overlap_after),
            rotation_degrees=_round(qa.rotation_degrees),
            translation_mm=_round(qa.translation_mm),
            jacobian_min=_round_or_none(qa.jacobian_min),
            jacobian_max=_round_or_none(qa.jacobian_max),
            seconds=_round(qa.seconds, 3),
        ),
        flags=list(result.flags),
        notes=list(result.notes),
        needs_review=result.needs_review,
    )


def _parse_date(value: str | None) -> date | None:
    """DICOM DA (YYYYMMDD) or ISO (YYYY-MM-DD); None when absent or not a real date."""
    if not value:
        return None
    match = re.fullmatch(r"(\d{4})-?(\d{2})-?(\d{2})", value.strip())
    if match is None:
        return None
    try:
        return date(*(int(g) for g in match.groups()))
    except ValueError:
        return None


def _round(value: float, decimals: int = 4) -> float:
    return round(float(value), decimals)


def _round_or_none(value: float | None) -> float | None:
    return None if value is None else _round(value)


def _point(values: Sequence[float] | np.ndarray) -> Point:
    x, y, z = (round(float(v), 3) for v in values)
    return (x, y, z)


def write_report(report: Report, path: Path) -> Path:
    """Write ``report`` as JSON, atomically: readers see the old file or the whole new one."""
    path = Path(path)
    write_atomically(path, (report.model_dump_json(indent=2) + "\n").encode("utf-8"))
    return path


def report_json_schema() -> dict[str, Any]:
    """The JSON schema (Draft 2020-12) of written reports, as committed in ``schemas/``."""
    schema = Report.model_json_schema(mode="serialization")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def report_schema_document() -> str:
    """``report_json_schema()`` as the exact text of ``schemas/report.schema.json``."""
    return json.dumps(report_json_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    SCHEMA_PATH.parent.mkdir(parents=True, exist_ok=True)
    SCHEMA_PATH.write_text(report_schema_document(), encoding="utf-8")
