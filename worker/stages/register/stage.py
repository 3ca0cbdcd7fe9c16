"""Register stage entry: how a case gets its follow-up → planning transform.

Inputs: the assembled case and its read data. Output: :class:`RegistrationResult`.

In order of preference:

1. follow-up and planning CT share a frame of reference → identity, nothing to register;
2. the clinic sent a DICOM Spatial Registration linking the two frames → its transform, with the
   same QA figures and flags as a computed one (a wrong REG is flagged, not trusted blindly);
3. otherwise intensity registration (:func:`register_images`), whose result is also written as
   a REG object when an output folder is given, so the clinic can audit or reuse it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk

from worker.errors import InputError
from worker.stages.assemble.case import Case
from worker.stages.read.case_data import CaseData
from worker.stages.register.images import prepare_pair
from worker.stages.register.intensity import WORKING_SPACING_MM, register_images
from worker.stages.register.qa import assess, plausibility_flags
from worker.stages.register.result import RegistrationMethod, RegistrationQA, RegistrationResult
from worker.stages.register.similarity import MetricSettings
from worker.stages.register.spatial_registration import (
    SeriesReference,
    read_spatial_registration,
    write_spatial_registration,
)


@dataclass(frozen=True)
class RegistrationOptions:
    """Switches of the register stage."""

    deformable: bool | None = None
    use_supplied_reg: bool = True
    seed: int = 42
    threads: int | None = None


def register_case(
    case: Case, data: CaseData, options: RegistrationOptions | None = None
) -> RegistrationResult:
    """The transform from the case's follow-up (fixed) to its planning CT (moving).

    Raises
    ------
    worker.errors.RegistrationError
        Intensity registration could not run at all.
    """
    options = options or RegistrationOptions()
    if case.same_frame_of_reference:
        return RegistrationResult(
            sitk.Transform(3, sitk.sitkIdentity), RegistrationMethod.IDENTITY, RegistrationQA()
        )
    supplied = _supplied(case, data) if options.use_supplied_reg else None
    if supplied is not None:
        return supplied
    return register_images(
        data.followup.image,
        data.planning_ct.image,
        fixed_modality=data.followup.modality,
        deformable=options.deformable,
        seed=options.seed,
        threads=options.threads,
    )


def _supplied(case: Case, data: CaseData) -> RegistrationResult | None:
    """The first usable REG of the case, assessed like a computed registration."""
    fixed_frame = case.followup.first.frame_of_reference_uid
    moving_frame = case.planning_ct.first.frame_of_reference_uid
    notes = []
    for series in case.reg:
        for instance in series.instances:
            try:
                transform = read_spatial_registration(instance.path, fixed_frame, moving_frame)
            except InputError as exc:
                # A Deformable REG or a broken one: note it and try the next, then register.
                notes.append(f"supplied REG not used: {exc.message}")
                continue
            return _assessed(transform, data, notes)
    data.warnings.extend(notes)
    return None


def _assessed(transform: sitk.Transform, data: CaseData, notes: list[str]) -> RegistrationResult:
    started = time.perf_counter()
    pair = prepare_pair(
        data.followup.image,
        data.planning_ct.image,
        fixed_modality=data.followup.modality,
        spacing_mm=WORKING_SPACING_MM,
    )
    qa = assess(pair, transform, MetricSettings())
    qa.seconds = time.perf_counter() - started
    result = RegistrationResult(transform, RegistrationMethod.REG_OBJECT, qa, plausibility_flags(qa))
    result.notes.extend(notes)
    return result


def write_registration_object(
    result: RegistrationResult, case: Case, folder: Path, uid_seed: str | None = None
) -> Path | None:
    """Write a computed registration as a DICOM REG into ``folder`` (None for identity/REG input).

    The REG holds the rigid part of a deformable result (the B-spline has no place in it).
    """
    if result.method in (RegistrationMethod.IDENTITY, RegistrationMethod.REG_OBJECT):
        return None
    folder.mkdir(parents=True, exist_ok=True)
    followup_headers = [i.header for i in case.followup.instances]
    return write_spatial_registration(
        result.transform,
        fixed=SeriesReference.from_datasets(followup_headers),
        moving=SeriesReference.from_datasets(i.header for i in case.planning_ct.instances),
        source=followup_headers[0],
        path=folder,
        uid_seed=uid_seed,
    )
