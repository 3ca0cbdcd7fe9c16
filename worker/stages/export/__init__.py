"""Export stage: what the hospital receives (DICOM-SEG, RTSTRUCT, SR, JSON report, preview)."""
