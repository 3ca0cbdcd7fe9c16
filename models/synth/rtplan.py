"""RT Plan Storage writer: a static multi-field photon plan on the planning CT.

No RTSTRUCT is written, so the plan geometry is TREATMENT_DEVICE: RTPlanGeometry
PATIENT would make the Referenced Structure Set Sequence (300C,0060) required
(Type 1C). The prescription is a SITE dose reference for the same reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from .dicom_common import (
    PatientInfo,
    SeriesInfo,
    StudyInfo,
    add_common,
    da,
    ds,
    new_dataset,
    write,
)

RT_PLAN_STORAGE = "1.2.840.10008.5.1.4.1.1.481.5"
_GANTRY_ANGLES = (0.0, 51.0, 103.0, 154.0, 206.0, 257.0, 309.0)
_MACHINE = "SYNTH_LINAC"


@dataclass(frozen=True)
class PlanInfo:
    """What the plan prescribes and where.

    Parameters
    ----------
    label : str
        RTPlanLabel (≤ 16 characters).
    prescription_gy : float
    fractions : int
    isocenter : numpy.ndarray, shape (3,)
        Planning coordinates (mm).
    field_half_size : numpy.ndarray, shape (2,)
        Jaw half-openings (x, y) at isocentre (mm).
    site : str
        Treatment site, e.g. "Oropharynx".
    """

    label: str
    prescription_gy: float
    fractions: int
    isocenter: np.ndarray
    field_half_size: np.ndarray
    site: str


def _dose_reference(plan: PlanInfo) -> Dataset:
    item = Dataset()
    item.DoseReferenceNumber = 1
    item.DoseReferenceStructureType = "SITE"
    item.DoseReferenceDescription = "PTV_High"
    item.DoseReferenceType = "TARGET"
    item.TargetPrescriptionDose = ds(plan.prescription_gy)
    return item


def _fraction_group(plan: PlanInfo, meterset: float) -> Dataset:
    group = Dataset()
    group.FractionGroupNumber = 1
    group.NumberOfFractionsPlanned = plan.fractions
    group.NumberOfBeams = len(_GANTRY_ANGLES)
    group.NumberOfBrachyApplicationSetups = 0
    beams = []
    for number in range(1, len(_GANTRY_ANGLES) + 1):
        ref = Dataset()
        ref.ReferencedBeamNumber = number
        ref.BeamDose = ds(plan.prescription_gy / plan.fractions / len(_GANTRY_ANGLES))
        ref.BeamMeterset = ds(meterset)
        beams.append(ref)
    group.ReferencedBeamSequence = Sequence(beams)
    return group


def _jaws(plan: PlanInfo) -> Sequence:
    items = []
    for device, half in zip(("ASYMX", "ASYMY"), plan.field_half_size, strict=True):
        item = Dataset()
        item.RTBeamLimitingDeviceType = device
        item.LeafJawPositions = [ds(-half), ds(half)]
        items.append(item)
    return Sequence(items)


def _first_control_point(plan: PlanInfo, gantry: float) -> Dataset:
    cp = Dataset()
    cp.ControlPointIndex = 0
    cp.NominalBeamEnergy = "6"
    cp.DoseRateSet = "600"
    cp.BeamLimitingDevicePositionSequence = _jaws(plan)
    cp.GantryAngle = ds(gantry)
    cp.GantryRotationDirection = "NONE"
    cp.BeamLimitingDeviceAngle = "0"
    cp.BeamLimitingDeviceRotationDirection = "NONE"
    cp.PatientSupportAngle = "0"
    cp.PatientSupportRotationDirection = "NONE"
    cp.TableTopEccentricAngle = "0"
    cp.TableTopEccentricRotationDirection = "NONE"
    cp.TableTopVerticalPosition = ""
    cp.TableTopLongitudinalPosition = ""
    cp.TableTopLateralPosition = ""
    cp.IsocenterPosition = [ds(v) for v in plan.isocenter]
    cp.CumulativeMetersetWeight = "0"
    return cp


def _last_control_point() -> Dataset:
    cp = Dataset()
    cp.ControlPointIndex = 1
    cp.CumulativeMetersetWeight = "1"
    return cp


def _beam(plan: PlanInfo, number: int, gantry: float) -> Dataset:
    beam = Dataset()
    beam.BeamNumber = number
    beam.BeamName = f"G{int(gantry):03d}"
    beam.BeamType = "STATIC"
    beam.RadiationType = "PHOTON"
    beam.TreatmentMachineName = _MACHINE
    beam.PrimaryDosimeterUnit = "MU"
    beam.SourceAxisDistance = "1000"
    devices = []
    for device in ("ASYMX", "ASYMY"):
        item = Dataset()
        item.RTBeamLimitingDeviceType = device
        item.NumberOfLeafJawPairs = 1
        devices.append(item)
    beam.BeamLimitingDeviceSequence = Sequence(devices)
    beam.ReferencedPatientSetupNumber = 1
    beam.TreatmentDeliveryType = "TREATMENT"
    beam.NumberOfWedges = 0
    beam.NumberOfCompensators = 0
    beam.NumberOfBoli = 0
    beam.NumberOfBlocks = 0
    beam.FinalCumulativeMetersetWeight = "1"
    beam.NumberOfControlPoints = 2
    beam.ControlPointSequence = Sequence([_first_control_point(plan, gantry), _last_control_point()])
    return beam


def _patient_setup() -> Dataset:
    setup = Dataset()
    setup.PatientSetupNumber = 1
    setup.PatientPosition = "HFS"
    setup.SetupTechnique = "ISOCENTRIC"
    return setup


def write_rtplan(
    plan: PlanInfo,
    sop_instance_uid: str,
    patient: PatientInfo,
    study: StudyInfo,
    series: SeriesInfo,
    path: Path,
) -> Dataset:
    """Write the RT Plan and return it.

    Parameters
    ----------
    plan : PlanInfo
    sop_instance_uid : str
    patient, study, series
        ``series.frame_of_reference_uid`` must be the planning CT's.
    path : pathlib.Path
        Output file.
    """
    d = new_dataset(RT_PLAN_STORAGE, sop_instance_uid)
    add_common(d, patient, study, series, "RTPLAN")
    d.InstanceNumber = 1
    d.RTPlanLabel = plan.label
    d.RTPlanName = plan.label
    d.RTPlanDescription = f"{plan.prescription_gy:g} Gy in {plan.fractions} fractions"
    d.RTPlanDate = da(series.date)
    d.RTPlanTime = series.time
    d.RTPlanGeometry = "TREATMENT_DEVICE"
    d.PlanIntent = "CURATIVE"
    d.ApprovalStatus = "APPROVED"
    d.ReviewDate = da(series.date)
    d.ReviewTime = series.time
    d.ReviewerName = "SYNTH^PHYSICIST"
    d.PrescriptionDescription = f"{plan.site}: {plan.prescription_gy:g} Gy / {plan.fractions} fx"
    d.DoseReferenceSequence = Sequence([_dose_reference(plan)])
    d.FractionGroupSequence = Sequence([_fraction_group(plan, meterset=95.0)])
    d.BeamSequence = Sequence([_beam(plan, n, g) for n, g in enumerate(_GANTRY_ANGLES, start=1)])
    d.PatientSetupSequence = Sequence([_patient_setup()])
    write(d, path)
    return d
