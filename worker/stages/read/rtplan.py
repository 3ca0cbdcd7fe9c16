"""Read stage: RTPLAN → the plan facts the pipeline needs (prescription, fractions, label, dates)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset

from worker.errors import InputError
from worker.stages.read.files import malformed_values, read_header

RT_PLAN_STORAGE = "1.2.840.10008.5.1.4.1.1.481.5"
RT_ION_PLAN_STORAGE = "1.2.840.10008.5.1.4.1.1.481.8"


@dataclass(frozen=True)
class PlanInfo:
    """What an RTPLAN says about the treatment."""

    sop_instance_uid: str
    frame_of_reference_uid: str
    label: str
    name: str
    date: str
    approval_status: str
    prescription_gy: float | None
    prescription_source: str
    fractions: int | None
    referenced_structure_set_uid: str | None


def read_rtplan(path: Path) -> PlanInfo:
    """Read an RTPLAN (photon or ion) into :class:`PlanInfo`.

    The prescription is the largest TargetPrescriptionDose of a TARGET dose reference; when no
    dose reference carries one, it is the sum of the beam doses of the first fraction group
    times its number of fractions.

    Raises
    ------
    worker.errors.InputError
        The file is not an RT Plan, or an attribute value cannot be read.
    """
    ds = read_header(Path(path))
    with malformed_values(Path(path)):
        return _plan_info(ds, Path(path))


def _plan_info(ds: Dataset, path: Path) -> PlanInfo:
    if ds.SOPClassUID not in (RT_PLAN_STORAGE, RT_ION_PLAN_STORAGE):
        raise InputError(f"{path.name}: not an RT Plan (SOPClassUID {ds.SOPClassUID})")
    fractions = _fractions(ds)
    prescription, source = _prescription(ds, fractions)
    structure_sets = ds.get("ReferencedStructureSetSequence")
    return PlanInfo(
        sop_instance_uid=str(ds.SOPInstanceUID),
        frame_of_reference_uid=str(ds.get("FrameOfReferenceUID", "")),
        label=str(ds.get("RTPlanLabel", "")),
        name=str(ds.get("RTPlanName", "") or ""),
        date=str(ds.get("RTPlanDate", "") or ""),
        approval_status=str(ds.get("ApprovalStatus", "") or ""),
        prescription_gy=prescription,
        prescription_source=source,
        fractions=fractions,
        referenced_structure_set_uid=(
            str(structure_sets[0].ReferencedSOPInstanceUID) if structure_sets else None
        ),
    )


def _fractions(ds: Dataset) -> int | None:
    groups = ds.get("FractionGroupSequence")
    if not groups or groups[0].get("NumberOfFractionsPlanned") in (None, ""):
        return None
    return int(groups[0].NumberOfFractionsPlanned)


def _prescription(ds: Dataset, fractions: int | None) -> tuple[float | None, str]:
    targets = [
        float(ref.TargetPrescriptionDose)
        for ref in ds.get("DoseReferenceSequence", [])
        if str(ref.get("DoseReferenceType", "")).upper() == "TARGET"
        and ref.get("TargetPrescriptionDose") not in (None, "")
    ]
    if targets:
        return max(targets), "TargetPrescriptionDose"
    beam_doses = _beam_doses(ds)
    if beam_doses and fractions:
        return sum(beam_doses) * fractions, "BeamDose x NumberOfFractionsPlanned"
    return None, "none"


def _beam_doses(ds: Dataset) -> list[float]:
    groups = ds.get("FractionGroupSequence")
    if not groups:
        return []
    return [
        float(beam.BeamDose)
        for beam in groups[0].get("ReferencedBeamSequence", [])
        if beam.get("BeamDose") not in (None, "")
    ]
