"""Series discovery and reading on the generated messy corpus: read right, or rejected with the reason."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from prdit.data import dicom
from tests.support import dicom_corpus as corpus


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return corpus.build(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def discovered(root):
    return dicom.discover(root, min_slices=16)


def _hu_at(image: sitk.Image, point) -> float:
    index = image.TransformPhysicalPointToIndex([float(v) for v in point])
    return float(image[index])


def _error_vs_truth(image: sitk.Image) -> np.ndarray:
    arr = sitk.GetArrayFromImage(image).astype(np.float32)
    z, y, x = np.meshgrid(*(np.arange(n) for n in arr.shape), indexing="ij")
    origin, spacing = np.asarray(image.GetOrigin()), np.asarray(image.GetSpacing())
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    pts = origin + (np.stack([x, y, z], -1) * spacing) @ direction.T
    return np.abs(arr - corpus.truth_hu(pts))


OK_CASES = [c for c, (status, _) in corpus.EXPECT.items() if status == "ok"]


@pytest.mark.parametrize("case", OK_CASES)
def test_readable_cases_recover_the_physical_object(discovered, case):
    chosen, _ = discovered
    image, report = dicom.read_files(chosen[case].files)
    assert image.GetDirection() == pytest.approx((1, 0, 0, 0, 1, 0, 0, 0, 1))  # one orientation: LPS
    assert image.GetPixelID() == sitk.sitkInt16
    assert _hu_at(image, corpus.SPHERE_C) == pytest.approx(corpus.SPHERE_HU, abs=10)
    assert _hu_at(image, corpus.MARKER_C) == pytest.approx(corpus.MARKER_HU, abs=10)  # not flipped
    assert _hu_at(image, (-80.0, -80.0, 0.0)) == -1000  # air, also where padding was stored
    error = _error_vs_truth(image)
    assert np.median(error) == 0
    assert error.mean() < (12 if case in ("gantry-tilt", "non-uniform") else 1)  # only edges interpolated
    note = corpus.EXPECT[case][1]
    assert note in report.notes()


SAME_AS_GOOD = [
    "shuffled",
    "feet-first",
    "jpeg-lossless",
    "rle",
    "jpeg2000",
    "duplicate-slice",
    "enhanced-ct",
    "no-meta",
    "mixed-a",
]


@pytest.mark.parametrize("case", SAME_AS_GOOD + (["jpeg-ls"] if corpus.HAS_JPEG_LS_ENCODER else []))
def test_same_voxels_as_the_clean_series(discovered, case):
    chosen, _ = discovered
    good, _ = dicom.read_files(chosen["good"].files)
    other, _ = dicom.read_files(chosen[case].files)
    assert other.GetOrigin() == pytest.approx(good.GetOrigin())
    assert other.GetSpacing() == pytest.approx(good.GetSpacing())
    np.testing.assert_array_equal(sitk.GetArrayFromImage(other), sitk.GetArrayFromImage(good))


@pytest.mark.parametrize("case", ["truncated", "missing-slice", "no-intercept-raw", "overlapping"])
def test_unreadable_series_are_rejected_with_the_reason(discovered, case):
    chosen, _ = discovered
    with pytest.raises(dicom.SeriesError, match=corpus.EXPECT[case][1]):
        dicom.read_files(chosen[case].files)


def test_truncated_file_is_named_in_the_rejection(discovered):
    chosen, _ = discovered
    with pytest.raises(
        dicom.SeriesError, match=r"^1 undecodable file\(s\) \(IM00013\.dcm: cannot decode.*leave missing"
    ):
        dicom.read_files(chosen["truncated"].files)


def test_discovery_selects_by_rule_and_records_skips(root, discovered):
    chosen, skipped = discovered
    assert chosen["non-ct"] is None and chosen["single-slice"] is None
    assert len(chosen["two-series"].files) == 60  # more slices (2 mm) beats 4 mm
    reasons = {
        (Path(s.path).relative_to(root).as_posix() if s.path.startswith(str(root)) else s.path): s.reason
        for s in skipped
    }
    assert reasons["non-dicom-files/ct/README.txt"] == "not a DICOM file"
    assert reasons["non-dicom-files/ct/empty.dcm"] == "not a DICOM file"
    assert "localizer" in reasons["localizer-mixed/ct/scout.dcm"]
    assert "modality SR" in reasons["dose-report/sr/dose.dcm"]
    assert "modality MR" in reasons["non-ct/ct"]
    assert "not selected" in reasons["two-series/ct"]
    assert "fewer than ingest.min_slices" in reasons["single-slice/ct/IM00001.dcm"]
    for name, (modality, _) in corpus.NON_IMAGE_OBJECTS.items():
        assert reasons[f"other-objects/objects/{name}"] == f"modality {modality} (not CT)"
    assert "Multi-frame Grayscale Word Secondary Capture" in reasons["other-objects/objects/sc.dcm"]
    assert len(chosen["mixed-a"].files) == len(chosen["mixed-b"].files) == 30


def test_read_series_on_a_folder(root):
    image = dicom.read_series(root / "feet-first" / "ct")
    assert image.GetSize() == (48, 48, 30)
    assert _hu_at(image, corpus.MARKER_C) == corpus.MARKER_HU
    with pytest.raises(dicom.SeriesError, match="2 CT image series"):
        dicom.read_series(root / "two-series" / "ct")
    with pytest.raises(dicom.SeriesError, match="no CT image series"):
        dicom.read_series(root / "non-ct" / "ct")


def test_oblique_acquisition_keeps_true_geometry(tmp_path):
    angle = np.radians(10.0)
    iop = (np.cos(angle), np.sin(angle), 0.0, -np.sin(angle), np.cos(angle), 0.0)  # rotated about z
    corpus.write(tmp_path / "s", corpus.axial(iop=iop), "oblique", "ct")
    image = dicom.read_series(tmp_path / "s")
    assert _hu_at(image, corpus.SPHERE_C) == pytest.approx(corpus.SPHERE_HU, abs=10)
    assert _hu_at(image, corpus.MARKER_C) == pytest.approx(corpus.MARKER_HU, abs=10)
    assert np.median(_error_vs_truth(image)) == 0


def test_jpeg_lossless_encoder_round_trips():
    """The corpus' own JPEG Lossless encoder is decoded exactly by the plugin ingest relies on."""
    from pylibjpeg import decode

    frame = np.random.default_rng(0).integers(0, 4096, (16, 20)).astype(np.uint16)
    frame[3, 4], frame[5, 6] = 0, 65535
    np.testing.assert_array_equal(np.asarray(decode(corpus.jpeg_lossless(frame))).astype(np.uint16), frame)


# --------------------------------------------------------------------------------------------
# Enhanced CT: one multi-frame file per series, geometry and rescale in functional groups
# --------------------------------------------------------------------------------------------


def _same_volume(a: sitk.Image, b: sitk.Image, geometry_tol: float = 1e-6) -> None:
    assert a.GetSize() == b.GetSize()
    assert a.GetOrigin() == pytest.approx(b.GetOrigin(), abs=geometry_tol)
    assert a.GetSpacing() == pytest.approx(b.GetSpacing(), abs=geometry_tol)
    assert a.GetDirection() == pytest.approx(b.GetDirection(), abs=geometry_tol)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))


@pytest.mark.parametrize("case", ["good", "feet-first", "padding", "gantry-tilt", "non-uniform"])
@pytest.mark.parametrize("per_frame_orientation", [False, True])
def test_enhanced_ct_reads_as_the_same_volume_as_the_classic_series(
    discovered, tmp_path, case, per_frame_orientation
):
    chosen, _ = discovered
    classic, classic_report = dicom.read_files(chosen[case].files)
    path = corpus.to_enhanced(
        chosen[case].files, tmp_path / "enh" / "ct.dcm", per_frame_orientation=per_frame_orientation
    )
    enhanced, report = dicom.read_files([path])
    _same_volume(enhanced, classic)
    assert report.slices == classic_report.slices and report.notes() == classic_report.notes()
    found, skipped = dicom.discover(tmp_path / "enh", min_slices=16)
    series = found[case]  # the PatientID of the classic files
    assert series is not None and series.frames == len(chosen[case].files) and not skipped


def test_enhanced_ct_counts_frames_as_slices_for_min_slices(discovered, tmp_path):
    chosen, _ = discovered
    corpus.to_enhanced(chosen["good"].files, tmp_path / "p" / "ct.dcm")
    found, skipped = dicom.discover(tmp_path, min_slices=31)
    assert found["good"] is None and "30 slice(s), fewer than ingest.min_slices=31" in skipped[0].reason


@pytest.mark.skipif(shutil.which("dcm2niix") is None, reason="dcm2niix not installed")
@pytest.mark.parametrize("case", ["good", "feet-first"])
def test_enhanced_ct_matches_dcm2niix(discovered, tmp_path, case):
    """Geometry and HU of an Enhanced CT equal what dcm2niix makes of it (its NIfTI read back in LPS)."""
    chosen, _ = discovered
    path = corpus.to_enhanced(chosen[case].files, tmp_path / "in" / "ct.dcm")
    ours, _ = dicom.read_files([path])
    (tmp_path / "out").mkdir()
    subprocess.run(
        ["dcm2niix", "-z", "n", "-b", "n", "-o", str(tmp_path / "out"), "-f", "vol", str(tmp_path / "in")],
        check=True,
        capture_output=True,
    )
    theirs = sitk.DICOMOrient(sitk.ReadImage(str(tmp_path / "out" / "vol.nii")), "LPS")
    # dcm2niix stores the stored values with scl_slope/inter; as read back they are exact HU
    theirs = sitk.Cast(sitk.Round(theirs), sitk.sitkInt16)
    _same_volume(ours, theirs, geometry_tol=1e-4)  # NIfTI keeps the affine in float32


def test_oblique_enhanced_ct_matches_dcm2niix_geometry(tmp_path):
    if shutil.which("dcm2niix") is None:
        pytest.skip("dcm2niix not installed")
    angle = np.radians(10.0)
    iop = (np.cos(angle), np.sin(angle), 0.0, -np.sin(angle), np.cos(angle), 0.0)
    files = corpus.write(tmp_path / "classic", corpus.axial(iop=iop), "oblique", "ct")
    path = corpus.to_enhanced(files, tmp_path / "in" / "ct.dcm")
    ours, _ = dicom.read_files([path])
    _same_volume(ours, dicom.read_files(files)[0])
    (tmp_path / "out").mkdir()
    subprocess.run(
        ["dcm2niix", "-z", "n", "-b", "n", "-o", str(tmp_path / "out"), "-f", "vol", str(tmp_path / "in")],
        check=True,
        capture_output=True,
    )
    theirs = sitk.DICOMOrient(sitk.ReadImage(str(tmp_path / "out" / "vol.nii")), "LPS")
    _same_volume(ours, sitk.Cast(sitk.Round(theirs), sitk.sitkInt16), geometry_tol=1e-4)


def test_other_multiframe_objects_are_rejected_by_name(tmp_path):
    corpus.multiframe_secondary_capture(tmp_path / "p" / "sc.dcm", "p")
    found, skipped = dicom.discover(tmp_path, min_slices=16)
    assert found["p"] is None
    (reason,) = [s.reason for s in skipped]
    assert "multi-frame (20 frames in 1 file(s))" in reason
    assert "Multi-frame Grayscale Word Secondary Capture Image Storage" in reason
    assert "ImageOrientationPatient" not in reason  # the old, misleading reason


def test_enhanced_ct_without_plane_positions_is_rejected_with_the_reason(discovered, tmp_path):
    import pydicom

    chosen, _ = discovered
    path = corpus.to_enhanced(chosen["good"].files, tmp_path / "ct.dcm")
    ds = pydicom.dcmread(path)
    del ds.PerFrameFunctionalGroupsSequence[3].PlanePositionSequence
    ds.save_as(path)
    with pytest.raises(
        dicom.SeriesError, match=r"ct\.dcm frame 4: missing ImagePositionPatient \(PlanePositionSequence\)"
    ):
        dicom.read_files([path])
