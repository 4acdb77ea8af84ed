"""Data stages: phantom, DICOM/npz/NIfTI ingest, preprocess, split, and the training dataset."""
