"""Input/output: NIfTI, manifests, DICOM."""
