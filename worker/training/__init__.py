"""Training data and evaluation on the service's own stages (DICOM cases → arrays, metrics)."""
