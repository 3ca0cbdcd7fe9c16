"""What the node accepts: the storage SOP classes of our inputs and outputs, and their transfer
syntaxes. Instances are stored exactly as received, in whichever syntax was negotiated.

A pynetdicom SCP refuses every compressed syntax it was not told about (pynetdicom #599, #203),
so the compressed ones a PACS may hold are listed here explicitly.
"""

from __future__ import annotations

from pydicom.uid import (
    JPEG2000,
    UID,
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    DeformableSpatialRegistrationStorage,
    EnhancedCTImageStorage,
    EnhancedMRImageStorage,
    EnhancedSRStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    MRImageStorage,
    RLELossless,
    RTDoseStorage,
    RTIonPlanStorage,
    RTPlanStorage,
    RTStructureSetStorage,
    SegmentationStorage,
    SpatialRegistrationStorage,
)
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

#: The storage SOP classes the node takes: images, RT objects, registrations, segmentations and
#: structured reports.
STORAGE_SOP_CLASSES: tuple[UID, ...] = (
    CTImageStorage,
    MRImageStorage,
    EnhancedCTImageStorage,
    EnhancedMRImageStorage,
    RTDoseStorage,
    RTPlanStorage,
    RTIonPlanStorage,
    RTStructureSetStorage,
    SpatialRegistrationStorage,
    DeformableSpatialRegistrationStorage,
    SegmentationStorage,
    # Structured reports are not inputs, but a PACS that pushes a whole patient sends our TID 1500
    # measurement reports back with the rest; refusing them would fail its whole transfer.
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    EnhancedSRStorage,
)

#: Uncompressed syntaxes first: pynetdicom takes, for each context, the requestor's first
#: proposal it supports, so the order here only matters for listings.
UNCOMPRESSED_TRANSFER_SYNTAXES: tuple[UID, ...] = (
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
)

#: Compressed syntaxes, lossless and lossy: stored as received (no transcoding on ingest); the
#: workers decode them with pydicom's plugins (pylibjpeg, openjpeg, pyjpegls).
COMPRESSED_TRANSFER_SYNTAXES: tuple[UID, ...] = (
    JPEGBaseline8Bit,  # process 1
    JPEGExtended12Bit,  # processes 2 and 4
    JPEGLossless,  # process 14
    JPEGLosslessSV1,  # process 14, selection value 1
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
)

TRANSFER_SYNTAXES: tuple[UID, ...] = UNCOMPRESSED_TRANSFER_SYNTAXES + COMPRESSED_TRANSFER_SYNTAXES


def add_supported_contexts(ae: AE) -> None:
    """Make ``ae`` accept Verification and every storage SOP class above in every syntax above."""
    ae.add_supported_context(Verification, list(UNCOMPRESSED_TRANSFER_SYNTAXES[:2]))
    for sop_class in STORAGE_SOP_CLASSES:
        ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))
