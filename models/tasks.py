"""The three injury tasks: what each finding is called, coded and drawn as.

One source of truth for the synthetic ground truth, the network's text prompts and the clinical
outputs (DICOM-SEG segments, RTSTRUCT ROIs, reports).

Segment codes are SNOMED CT concepts in pydicom's code dictionary: category from DICOM CID 7150
(49755003 "Morphologically Abnormal Structure"), property type from CID 7151 (6574001
"Necrosis", 79654002 "Edema") and anatomic region from CID 4 (91609006 "Mandible", 78277001
"Temporal lobe"). The disorder concepts (e.g. 2032001 "Cerebral edema") are not used: the
segmented property is the morphologic change, the disease is in the label.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code


@dataclass(frozen=True)
class SegmentCodes:
    """Label and SNOMED CT codes of one task's segment."""

    label: str
    category: Code
    property_type: Code
    anatomic_region: Code


@dataclass(frozen=True)
class TaskSpec:
    name: str
    #: Follow-up modality the task is read on.
    modality: str
    codes: SegmentCodes
    #: ROI name in RTSTRUCT output (≤ 16 characters, LO-safe).
    roi_name: str
    #: Display colour (RGB 0–255) of the ROI and of the preview outline.
    colour: tuple[int, int, int]


TASKS: dict[str, TaskSpec] = {
    "orn": TaskSpec(
        "orn",
        "CT",
        SegmentCodes(
            "Osteoradionecrosis",
            codes.SCT.MorphologicallyAbnormalStructure,
            codes.SCT.Necrosis,
            codes.SCT.Mandible,
        ),
        "ORN_AI",
        (255, 140, 0),
    ),
    "ce": TaskSpec(
        "ce",
        "MR",
        SegmentCodes(
            "Cerebral edema",
            codes.SCT.MorphologicallyAbnormalStructure,
            codes.SCT.Edema,
            codes.SCT.TemporalLobe,
        ),
        "CE_AI",
        (0, 170, 255),
    ),
    "crn": TaskSpec(
        "crn",
        "MR",
        SegmentCodes(
            "Cerebral radiation necrosis",
            codes.SCT.MorphologicallyAbnormalStructure,
            codes.SCT.Necrosis,
            codes.SCT.TemporalLobe,
        ),
        "CRN_AI",
        (230, 30, 80),
    ),
}
