"""Export stage: write every output of one job into a folder.

Inputs: the follow-up volume (with its source planes), the lesion mask on its grid, the prepared
case (dose on the follow-up, r, registration), who made the result, timings and warnings.
Outputs: ``seg.dcm``, ``rtstruct.dcm``, ``sr.dcm``, ``report.json`` and ``preview.png``; the
report names the other files (relative) and carries the dose numbers the SR repeats.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import SimpleITK as sitk

from worker.stages.export.algorithm import UNREVIEWED, AlgorithmInfo
from worker.stages.export.files import OUTPUT_FILES
from worker.stages.export.preview import render_preview
from worker.stages.export.report import Report, build_report, write_report
from worker.stages.export.rtstruct import RtstructOptions, write_rtstruct
from worker.stages.export.seg import Finding, SegOptions, write_segmentation
from worker.stages.export.source import source_series
from worker.stages.export.sr import SegmentMeasurements, write_measurement_report
from worker.stages.prepare import PreparedCase
from worker.stages.read.series import ImageVolume


@dataclass(frozen=True)
class ExportOptions:
    seg: SegOptions = field(default_factory=SegOptions)
    rtstruct: RtstructOptions = field(default_factory=RtstructOptions)
    #: A second RTSTRUCT ROI with the high-dose region r (planners like to see where it came from).
    include_high_dose_roi: bool = True


@dataclass
class ExportedFiles:
    folder: Path
    report: Report
    paths: dict[str, Path]


@dataclass(frozen=True)
class ExportInputs:
    task: str
    followup: ImageVolume
    lesion_mask: sitk.Image
    prepared: PreparedCase
    algorithm: AlgorithmInfo
    patient_alias: str
    study_date: str | None = None
    followup_description: str | None = None
    timings: Mapping[str, float] = field(default_factory=dict)
    warnings: Sequence[str] = ()


def export_results(
    inputs: ExportInputs, out_dir: Path, options: ExportOptions | None = None
) -> ExportedFiles:
    """Write all outputs of one job into ``out_dir`` (created); returns their paths and the report."""
    options = options or ExportOptions()
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / file for name, file in OUTPUT_FILES.items()}
    started = time.perf_counter()
    source = source_series(inputs.followup)
    finding = Finding(inputs.task, inputs.lesion_mask)
    seg = write_segmentation(source, [finding], inputs.algorithm, options.seg)
    seg.save_as(paths["seg"], enforce_file_format=True)
    region = _region_finding(inputs) if options.include_high_dose_roi else None
    rtstruct = write_rtstruct(
        source, [finding], inputs.algorithm, high_dose_region=region, options=options.rtstruct
    )
    rtstruct.save_as(paths["rtstruct"], enforce_file_format=True)

    report = build_report(
        task=inputs.task,
        lesion_mask=inputs.lesion_mask,
        prepared=inputs.prepared,
        algorithm=inputs.algorithm,
        timings=inputs.timings,
        warnings=inputs.warnings,
        patient_alias=inputs.patient_alias,
        study_date=inputs.study_date,
        followup_description=inputs.followup_description,
        modality=inputs.followup.modality,
    )
    measured = SegmentMeasurements(inputs.task, 1, report.lesion.volume_cc, report.lesion_dose)
    write_measurement_report(seg, [measured], inputs.algorithm).save_as(paths["sr"], enforce_file_format=True)
    render_preview(
        image=inputs.followup.image,
        lesion_mask=inputs.lesion_mask,
        dose=inputs.prepared.dose.image,
        task=inputs.task,
        out_path=paths["preview"],
        title_lines=[f"{report.finding_label} — {UNREVIEWED}", f"Lesion {report.lesion.volume_cc:.2f} cc"],
        region_mask=region.mask if region is not None else None,
        modality=inputs.followup.modality,
    )
    report.outputs = {name: file for name, file in OUTPUT_FILES.items() if name != "report"}
    report.timings_s["export"] = round(time.perf_counter() - started, 3)
    write_report(report, paths["report"])
    return ExportedFiles(out_dir, report, paths)


def _region_finding(inputs: ExportInputs) -> Finding:
    region = sitk.GetImageFromArray(inputs.prepared.region.mask.astype("uint8"))
    region.CopyInformation(inputs.followup.image)
    return Finding(inputs.task, region, label="high-dose region")
