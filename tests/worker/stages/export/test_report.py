"""The JSON job report: schema, privacy, and figures checked against answers known in advance.

Two kinds of cases: a real synthetic ORN patient taken through assemble → read → prepare (the
report of its ground-truth lesion), and analytic ones — a dose that is a known function of the
LPS position on an oblique, non-square follow-up grid, with a sphere lesion placed at a known
point — whose dose figures, centroid and volume follow from geometry alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
import SimpleITK as sitk
from pydantic import ValidationError
from scipy.optimize import brentq

from worker.errors import GeometryError
from worker.stages.dose_map import MappedDose
from worker.stages.dose_stats import mask_dose_statistics
from worker.stages.export.algorithm import UNREVIEWED, AlgorithmInfo
from worker.stages.export.report import (
    SCHEMA_PATH,
    Report,
    build_report,
    report_json_schema,
    report_schema_document,
    write_report,
)
from worker.stages.prepare import PreparedCase
from worker.stages.prompts import high_dose_region
from worker.stages.register.result import RegistrationMethod, RegistrationQA, RegistrationResult

ALGORITHM = AlgorithmInfo(model_id="rtinjury-test-model", weights_sha256="0123456789abcdef" * 4)
#: The analytic lesion: a sphere of radius R (mm) at a point that is not a grid node.
CENTRE = np.array([23.4, -41.7, 12.9])
RADIUS = 10.0


def report_of(
    lesion: sitk.Image, prepared: PreparedCase, *, task: str = "orn", warnings: tuple[str, ...] = ()
) -> Report:
    return build_report(
        task=task,
        lesion_mask=lesion,
        prepared=prepared,
        algorithm=ALGORITHM,
        timings={"read": 1.25, "prepare": 4.5},
        warnings=warnings,
        patient_alias="case-0001",
        study_date="20240301",
        followup_description="AX HEAD NECK CT",
        modality="CT",
    )


def prepared_for(dose: sitk.Image) -> PreparedCase:
    """A prepared case around a given follow-up-grid dose (identity registration, no warnings)."""
    region = high_dose_region(dose)
    region_mask = sitk.GetImageFromArray(region.mask.astype(np.uint8))
    region_mask.CopyInformation(dose)
    return PreparedCase(
        registration=RegistrationResult(
            sitk.Transform(3, sitk.sitkIdentity), RegistrationMethod.IDENTITY, RegistrationQA()
        ),
        dose=MappedDose(dose, 100.0),
        region=region,
        region_dose=mask_dose_statistics(region_mask, dose),
    )


@pytest.fixture(scope="module")
def oblique_grid(export_grid_kit: Any) -> sitk.Image:
    """An oblique follow-up grid with anisotropic voxels and three different sizes, 0.6–0.8 mm."""
    return export_grid_kit.grid(
        (100, 86, 75), (0.6, 0.7, 0.8), export_grid_kit.oblique(), CENTRE + np.array([2.0, -3.0, 1.0])
    )


@pytest.fixture(scope="module")
def sphere(export_grid_kit: Any, oblique_grid: sitk.Image) -> sitk.Image:
    return export_grid_kit.sphere(oblique_grid, CENTRE, RADIUS)


@pytest.fixture(scope="module")
def real_report(export_orn_case: Any) -> Report:
    case = export_orn_case
    return build_report(
        task="orn",
        lesion_mask=case.lesion,
        prepared=case.prepared,
        algorithm=ALGORITHM,
        timings={"prepare": 4.5},
        warnings=["a caller warning"],
        patient_alias="case-0001",
        study_date=case.study_date,
        followup_description=case.series_description,
        modality="CT",
    )


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


# --- schema -------------------------------------------------------------------------------


def test_committed_schema_matches_the_models() -> None:
    assert SCHEMA_PATH.read_text(encoding="utf-8") == report_schema_document(), (
        "schemas/report.schema.json is stale: run `python -m worker.stages.export.report` and commit it"
    )
    assert report_json_schema()["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_written_report_validates_and_round_trips(
    real_report: Report, validator: jsonschema.Draft202012Validator, tmp_path: Path
) -> None:
    report = real_report.model_copy(update={"outputs": {"seg": "seg.dcm", "preview": "preview.png"}})
    path = write_report(report, tmp_path / "report.json")
    document = json.loads(path.read_text(encoding="utf-8"))
    validator.validate(document)
    assert Report.model_validate_json(path.read_text(encoding="utf-8")) == report
    assert document["reviewed"] is False and document["notice"] == UNREVIEWED


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (lambda d: d.pop("lesion"), "'lesion' is a required property"),
        (lambda d: d["lesion"].pop("centroid_mm"), "'centroid_mm' is a required property"),
        (lambda d: d["lesion"].update(volume_cc="0.4 cc"), "is not of type 'number'"),
        (lambda d: d["lesion"].update(centroid_mm=[1.0, 2.0]), "not valid under any of the given schemas"),
        (lambda d: d["patient"].update(patient_name="SMITH^JOHN"), "Additional properties"),
        (lambda d: d.update(reviewed=True), "False was expected"),
        (lambda d: d.update(task="lung"), "is not one of"),
    ],
    ids=["no-lesion", "no-centroid", "volume-string", "centroid-2d", "patient-name", "reviewed", "task"],
)
def test_schema_rejects_invalid_documents(
    real_report: Report, validator: jsonschema.Draft202012Validator, change: Any, where: str
) -> None:
    document = json.loads(real_report.model_dump_json())
    validator.validate(document)  # valid before the change, so the change is what fails
    change(document)
    with pytest.raises(jsonschema.ValidationError, match=where):
        validator.validate(document)
    with pytest.raises(ValidationError):
        Report.model_validate(document)


# --- the real synthetic case --------------------------------------------------------------


def test_report_carries_no_patient_identifiers(real_report: Report, export_orn_case: Any) -> None:
    text = real_report.model_dump_json(indent=2)
    case = export_orn_case
    for identifier in (case.patient_name, case.patient_id, case.birth_date, *case.patient_name.split("^")):
        assert identifier and identifier not in text
    assert real_report.patient.alias == "case-0001"
    assert real_report.patient.study_date is not None
    assert real_report.patient.study_date.strftime("%Y%m%d") == case.study_date


def test_real_case_figures_agree_with_the_synthetic_truth(real_report: Report, export_orn_case: Any) -> None:
    case = export_orn_case
    truth = case.truth["lesion"]
    lesion = real_report.lesion
    voxels = int(np.count_nonzero(sitk.GetArrayViewFromImage(case.lesion)))
    assert not lesion.empty and lesion.voxels == voxels and lesion.components == 1
    assert lesion.volume_cc == pytest.approx(voxels * np.prod(case.lesion.GetSpacing()) / 1000.0, abs=1e-4)
    # case.json's centroid is computed by the generator from its own mask (rounded to 0.1 µm).
    assert lesion.centroid_mm == pytest.approx(truth["centroid_followup_mm"], abs=2e-3)
    assert lesion.bounding_box_mm is not None
    assert np.all(np.asarray(lesion.bounding_box_mm.min_mm) <= np.asarray(lesion.centroid_mm))
    assert np.all(np.asarray(lesion.centroid_mm) <= np.asarray(lesion.bounding_box_mm.max_mm))
    # The synthetic lesion sits in the high-dose region and is far smaller than 2 cc.
    dose = real_report.lesion_dose
    assert dose is not None and dose.d2cc_gy is None
    assert real_report.prompt.threshold_gy <= dose.dmean_gy <= dose.dmax_gy <= real_report.prompt.dmax_gy
    region = case.prepared.region
    assert real_report.prompt.box.index_min == region.index_min
    assert real_report.prompt.box.index_max == region.index_max
    assert real_report.prompt.high_dose_roi_volume_cc == pytest.approx(region.volume_cc, abs=1e-4)
    assert real_report.registration.method == case.prepared.registration.method
    assert real_report.registration.needs_review == case.prepared.registration.needs_review
    assert real_report.warnings == ["a caller warning", *case.prepared.warnings]
    assert real_report.model.weights_sha256 == ALGORITHM.weights_sha256
    assert real_report.finding_label == "Osteoradionecrosis"


# --- analytic dose and geometry ---------------------------------------------------------------


def test_dose_figures_on_a_linear_ramp(
    oblique_grid: sitk.Image, sphere: sitk.Image, export_grid_kit: Any
) -> None:
    """dose = 60 Gy + b·(z − z₀), z₀ half a radius above the sphere centre.

    Exact answers for a perfect sphere: Dmean = 60 − b·R/2, Dmax = 60 + b·R/2, V60 = share of the
    sphere above the cap plane at height R/2 = 5/32; D98 and D2cc from the spherical cap volume
    π h² (3R − h) / 3 (the 2 % at the bottom; the hottest 2 cc at the top).

    Tolerances: linear interpolation of a linear field is exact, so the only error is the
    voxelisation of the sphere (0.6 × 0.7 × 0.8 mm voxels). Dmax can be off by at most b × half a
    voxel diagonal (0.27 Gy); the boundary of a voxelised sphere is displaced by far less than a
    quarter voxel on average, so D98 and D2cc within b × 0.27 mm (0.14 Gy), Dmean within b × 0.1 mm
    and V60 within 0.5 percentage points (a wrong axis or sign would be off by 10–50).
    """
    b, z0 = 0.5, CENTRE[2] + RADIUS / 2.0
    dose = export_grid_kit.field(oblique_grid, lambda p: 60.0 + b * (p[..., 2] - z0))
    report = report_of(sphere, prepared_for(dose))
    figures = report.lesion_dose
    assert figures is not None
    half_diagonal = 0.5 * float(np.linalg.norm(oblique_grid.GetSpacing()))
    t98 = brentq(lambda t: t * t * (3.0 - t) - 0.08, 0.0, 1.0)  # bottom cap of 2 % of the volume
    h2cc = brentq(lambda h: np.pi * h * h * (3.0 * RADIUS - h) / 3.0 - 2000.0, 0.0, 2.0 * RADIUS)
    assert figures.dmean_gy == pytest.approx(60.0 - b * RADIUS / 2.0, abs=b * 0.1)
    assert figures.dmax_gy == pytest.approx(60.0 + b * RADIUS / 2.0, abs=b * half_diagonal)
    assert figures.d98_gy == pytest.approx(
        60.0 + b * (t98 * RADIUS - 1.5 * RADIUS), abs=b * half_diagonal / 2.0
    )
    assert figures.d2cc_gy == pytest.approx(60.0 + b * (RADIUS / 2.0 - h2cc), abs=b * half_diagonal / 2.0)
    assert figures.v_percent["V60Gy"] == pytest.approx(100.0 * 5.0 / 32.0, abs=0.5)
    assert figures.v_percent["V70Gy"] == 0.0 and figures.v_percent["V50Gy"] == 100.0
    # Dmean of a linear field is the field at the mask's own centroid, to float precision.
    assert report.lesion.centroid_mm is not None
    assert figures.dmean_gy == pytest.approx(60.0 + b * (report.lesion.centroid_mm[2] - z0), abs=2e-3)


def test_dose_figures_on_a_constant_dose(
    oblique_grid: sitk.Image, sphere: sitk.Image, export_grid_kit: Any
) -> None:
    dose = export_grid_kit.field(oblique_grid, lambda p: np.full(p.shape[:-1], 61.0))
    report = report_of(sphere, prepared_for(dose))
    figures = report.lesion_dose
    assert figures is not None
    for value in (figures.dmean_gy, figures.dmax_gy, figures.dmin_gy, figures.d98_gy, figures.d2cc_gy):
        assert value == pytest.approx(61.0, abs=1e-3)
    assert figures.v_percent == {"V50Gy": 100.0, "V60Gy": 100.0, "V70Gy": 0.0}
    assert figures.v_cc["V60Gy"] == pytest.approx(report.lesion.volume_cc, abs=1e-4)
    # The voxelised sphere's volume is the analytic 4/3·π·R³ to 0.5 % at this voxel size.
    assert report.lesion.volume_cc == pytest.approx(4.0 / 3.0 * np.pi * RADIUS**3 / 1000.0, rel=5e-3)


@pytest.mark.parametrize("orientation", ["oblique", "feet-first"])
def test_centroid_and_box_of_a_sphere_at_a_known_point(export_grid_kit: Any, orientation: str) -> None:
    """The sphere's centroid is its centre; its LPS box is centre ± R to within a voxel.

    Tolerance 0.05 mm: a voxelised sphere of 3000+ voxels is symmetric to far better than a
    tenth of its 0.7–1.3 mm voxels; a swapped axis or a wrong origin would be off by millimetres.
    """
    direction = export_grid_kit.oblique(40.0, 20.0) if orientation == "oblique" else export_grid_kit.FFS
    grid = export_grid_kit.grid((64, 52, 40), (0.7, 0.9, 1.3), direction, CENTRE - np.array([4.0, 2.0, -3.0]))
    lesion = export_grid_kit.sphere(grid, CENTRE, RADIUS)
    dose = export_grid_kit.field(grid, lambda p: 70.0 - 0.2 * np.linalg.norm(p - CENTRE, axis=-1))
    report = report_of(lesion, prepared_for(dose))
    assert report.lesion.centroid_mm == pytest.approx(tuple(CENTRE), abs=0.05)
    box = report.lesion.bounding_box_mm
    assert box is not None
    voxel = float(max(grid.GetSpacing()))
    assert np.asarray(box.min_mm) == pytest.approx(CENTRE - RADIUS, abs=voxel)
    assert np.asarray(box.max_mm) == pytest.approx(CENTRE + RADIUS, abs=voxel)


def test_components_are_26_connected(oblique_grid: sitk.Image, export_grid_kit: Any) -> None:
    dose = export_grid_kit.field(oblique_grid, lambda p: 70.0 - 0.2 * np.linalg.norm(p - CENTRE, axis=-1))
    prepared = prepared_for(dose)
    two = export_grid_kit.like(
        oblique_grid, np.zeros(sitk.GetArrayViewFromImage(oblique_grid).shape, dtype=np.uint8)
    )
    array = sitk.GetArrayFromImage(two)
    array[10:15, 10:15, 10:15] = 1
    array[30:35, 30:35, 30:35] = 1
    assert report_of(export_grid_kit.like(oblique_grid, array), prepared).lesion.components == 2
    # Two cubes that touch only at one corner are one lesion under 26-connectivity.
    array[:] = 0
    array[10:15, 10:15, 10:15] = 1
    array[15:20, 15:20, 15:20] = 1
    assert report_of(export_grid_kit.like(oblique_grid, array), prepared).lesion.components == 1


def test_empty_lesion(oblique_grid: sitk.Image, export_grid_kit: Any) -> None:
    dose = export_grid_kit.field(oblique_grid, lambda p: 70.0 - 0.2 * np.linalg.norm(p - CENTRE, axis=-1))
    empty = export_grid_kit.like(oblique_grid, np.zeros(sitk.GetArrayViewFromImage(oblique_grid).shape, bool))
    report = report_of(empty, prepared_for(dose), warnings=("caller",))
    assert report.lesion.empty and report.lesion.volume_cc == 0.0 and report.lesion.components == 0
    assert report.lesion.centroid_mm is None and report.lesion.bounding_box_mm is None
    assert report.lesion_dose is None
    assert report.warnings[0] == "caller"
    assert any("no lesion" in w for w in report.warnings)
    document = json.loads(report.model_dump_json())
    jsonschema.Draft202012Validator(report_json_schema()).validate(document)
    assert document["lesion_dose"] is None


# --- errors and writing -----------------------------------------------------------------------


def test_a_mask_off_the_dose_grid_is_refused(
    sphere: sitk.Image, oblique_grid: sitk.Image, export_grid_kit: Any
) -> None:
    prepared = prepared_for(export_grid_kit.field(oblique_grid, lambda p: 60.0 + 0.1 * p[..., 0]))
    shifted = sitk.Image(sphere)
    shifted.SetOrigin(tuple(o + 1.0 for o in sphere.GetOrigin()))
    with pytest.raises(GeometryError, match=r"not on the follow-up grid.*origin"):
        report_of(shifted, prepared)
    smaller = export_grid_kit.grid((50, 86, 75), (0.6, 0.7, 0.8), export_grid_kit.oblique(), CENTRE)
    with pytest.raises(GeometryError, match="size"):
        report_of(sitk.Cast(smaller, sitk.sitkUInt8), prepared)


def test_write_report_replaces_atomically(real_report: Report, tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    path.write_text("old", encoding="utf-8")
    write_report(real_report, path)
    assert Report.model_validate_json(path.read_text(encoding="utf-8")) == real_report
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]  # no temporary file left
    assert path.stat().st_mode & 0o777 == 0o644  # readable by the service's other users


@pytest.mark.parametrize("name", ["/srv/jobs/1/seg.dcm", "../seg.dcm", "C:seg.dcm", ""])
def test_outputs_must_be_relative_file_names(real_report: Report, name: str) -> None:
    document = json.loads(real_report.model_dump_json())
    document["outputs"] = {"seg": name}
    with pytest.raises(ValidationError, match="relative file name"):
        Report.model_validate(document)


def test_unusable_inputs(real_report: Report, export_orn_case: Any) -> None:
    case = export_orn_case
    with pytest.raises(ValueError, match="task must be one of"):
        report_of(case.lesion, case.prepared, task="lung")
    report = build_report(
        task="orn",
        lesion_mask=case.lesion,
        prepared=case.prepared,
        algorithm=ALGORITHM,
        timings={},
        warnings=[],
        patient_alias="case-0001",
        study_date="20241399",
        followup_description=None,
        modality="CT",
    )
    assert report.patient.study_date is None
    assert any("study date" in w for w in report.warnings)
