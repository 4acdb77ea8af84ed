"""DICOM series -> HU volume: discovery of the diagnostic series, and a careful series reader.

Choices a reviewer should know about:
- Slices are ordered by ImagePositionPatient projected on the slice normal (row x column cosines),
  never by InstanceNumber or file name.
- Enhanced CT (one multi-frame file per series) is read frame by frame from its functional groups
  (plane position and orientation, pixel measures, pixel value transformation; per-frame values win
  over shared ones), then treated exactly like a classic series. Other multi-frame objects
  (secondary capture, ultrasound, angiography, ...) are rejected by SOP class with its name.
- HU = stored * RescaleSlope + RescaleIntercept, per slice. Pixels equal to PixelPaddingValue (or in
  its range) and values below -1500 HU (the -2000 / -3024 "outside the field of view" fill) become
  air (-1000 HU); remaining values below -1024 HU are clipped to -1024. A slope that is 0, negative or
  not finite, or an intercept that is not finite, rejects the series (no HU scale). Either every slice has
  rescale or none does (a mix is rejected: the bare slices' scale is unknown); with none, every slice
  must look like HU on its own (air near -1000) or the series is rejected.
- ImageOrientationPatient, ImagePositionPatient and PixelSpacing must be finite numbers in every image
  (NaN compares False and would pass every later check): checked before anything reaches ITK.
- Duplicate slices (same position, same pixels) are dropped; same position with different pixels is
  rejected. A gap above `max_gap_factor` x the median spacing is a missing slice: rejected. Smaller
  spacing irregularities are resampled linearly onto a uniform grid along the normal.
- Gantry tilt (slice origins sheared off the slice normal) is corrected: every slice is shifted in
  plane back onto the first slice's column, which puts each voxel at its true patient position on a
  rectilinear grid. Tilts above MAX_TILT_DEG are rejected.
- Every volume comes out in one orientation: LPS (SimpleITK/DICOM patient frame; array [z, y, x] with
  x towards the patient's left, y posterior, z superior, index 0 at right/anterior/inferior). A small
  obliquity of the acquisition stays in the direction matrix; preprocess resamples onto an axis-aligned grid.
"""

from prdit.data.dicom.discovery import Series, Skipped, discover, rule_out, scan, select
from prdit.data.dicom.reading import SeriesReport, read_files, read_series
from prdit.data.dicom.tags import (
    AIR_HU,
    MAX_TILT_DEG,
    MIN_HU,
    OUTPUT_ORIENTATION,
    PADDING_BELOW_HU,
    SeriesError,
    sop_name,
)

__all__ = [
    "AIR_HU",
    "MAX_TILT_DEG",
    "MIN_HU",
    "OUTPUT_ORIENTATION",
    "PADDING_BELOW_HU",
    "Series",
    "SeriesError",
    "SeriesReport",
    "Skipped",
    "discover",
    "read_files",
    "read_series",
    "rule_out",
    "scan",
    "select",
    "sop_name",
]
