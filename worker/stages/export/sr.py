"""DICOM Structured Report (TID 1500 Measurement Report, highdicom) of the lesion measurements.

For archives that index measurements: one volumetric ROI group per finding, referencing its
segment in our SEG, with the lesion volume and the planned dose in it. Volume, mean and maximum
absorbed dose use standard concepts (SCT 118565006, DCM 128513 with SCT Mean/Maximum
derivations); the dose-volume figures (D2cc, D98, V50/V60/V70 Gy) have no standard concept and
use the private coding scheme ``99RTINJ``, as PS3.16 allows. The observer is the device (this
software), and the report is neither complete nor verified: a person must review it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from models.tasks import TASKS
from worker.errors import AssemblyError
from worker.stages.export.algorithm import MANUFACTURER, MODEL_NAME, AlgorithmInfo
from worker.stages.export.report import DoseSummary

DEFAULT_SERIES_NUMBER = 903
PRIVATE_SCHEME = "99RTINJ"
GRAY = hd.sr.CodedConcept("Gy", "UCUM", "Gray")
PERCENT = codes.UCUM.Percent
CUBIC_CENTIMETRE = codes.UCUM.CubicCentimeter


@dataclass(frozen=True)
class SegmentMeasurements:
    """What the SR says about one segment of the SEG."""

    task: str
    segment_number: int
    volume_cc: float
    dose: DoseSummary | None


def write_measurement_report(
    seg: Dataset,
    measurements: Sequence[SegmentMeasurements],
    algorithm: AlgorithmInfo,
    *,
    series_number: int = DEFAULT_SERIES_NUMBER,
) -> Dataset:
    """Build the Comprehensive 3D SR referencing ``seg`` (which must be the SEG we send with it)."""
    if not measurements:
        raise AssemblyError("no measurements to report")
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(), name=algorithm.name, manufacturer_name=MANUFACTURER, model_name=MODEL_NAME
        ),
    )
    groups = [_group(seg, m, algorithm) for m in measurements]
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=codes.SCT.RadiationTherapy,
        imaging_measurements=groups,
    )
    return hd.sr.Comprehensive3DSR(
        evidence=[seg],
        content=report,
        series_instance_uid=generate_uid(),
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=False,
        is_final=False,
        is_verified=False,
    )


def _group(
    seg: Dataset, m: SegmentMeasurements, algorithm: AlgorithmInfo
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    spec = TASKS[m.task]
    algorithm_id = hd.sr.AlgorithmIdentification(name=algorithm.name, version=algorithm.version)
    referenced = hd.sr.ReferencedSegment(
        sop_class_uid=seg.SOPClassUID,
        sop_instance_uid=seg.SOPInstanceUID,
        segment_number=m.segment_number,
        source_series=hd.sr.SourceSeriesForSegmentation(seg.ReferencedSeriesSequence[0].SeriesInstanceUID),
    )
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=generate_uid(), identifier=f"{spec.name.upper()} finding {m.segment_number}"
        ),
        referenced_segment=referenced,
        finding_type=spec.codes.property_type,
        finding_sites=[hd.sr.FindingSite(spec.codes.anatomic_region)],
        algorithm_id=algorithm_id,
        measurements=_measurements(m, algorithm_id),
    )


def _measurements(
    m: SegmentMeasurements, algorithm_id: hd.sr.AlgorithmIdentification
) -> list[hd.sr.Measurement]:
    items = [hd.sr.Measurement(codes.SCT.Volume, m.volume_cc, CUBIC_CENTIMETRE, algorithm_id=algorithm_id)]
    dose = m.dose
    if dose is None:
        return items
    absorbed = codes.DCM.AbsorbedDose
    items += [
        hd.sr.Measurement(
            absorbed, dose.dmean_gy, GRAY, derivation=codes.SCT.Mean, algorithm_id=algorithm_id
        ),
        hd.sr.Measurement(
            absorbed, dose.dmax_gy, GRAY, derivation=codes.SCT.Maximum, algorithm_id=algorithm_id
        ),
        hd.sr.Measurement(
            _private("D98", "Dose to 98% of the volume"), dose.d98_gy, GRAY, algorithm_id=algorithm_id
        ),
    ]
    if dose.d2cc_gy is not None:
        items.append(
            hd.sr.Measurement(
                _private("D2cc", "Dose to the hottest 2 cc"), dose.d2cc_gy, GRAY, algorithm_id=algorithm_id
            )
        )
    for key, value in sorted(dose.v_percent.items()):
        meaning = f"Volume receiving at least {key.removeprefix('V').removesuffix('Gy')} Gy"
        items.append(hd.sr.Measurement(_private(key, meaning), value, PERCENT, algorithm_id=algorithm_id))
    return items


def _private(value: str, meaning: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value, PRIVATE_SCHEME, meaning)
