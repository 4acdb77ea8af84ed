"""Series discovery and reading on the generated messy corpus: read right, or rejected with the reason."""

from __future__ import annotations

from pathlib import Path

import dicom_corpus as corpus
import numpy as np
import pytest
import SimpleITK as sitk

from prdit.data import dicom


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


SAME_AS_GOOD = ["shuffled", "feet-first", "jpeg-lossless", "rle", "jpeg2000", "duplicate-slice"]


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
    with pytest.raises(dicom.SeriesError, match=r"IM00013\.dcm.*cannot decode"):
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
    assert "localizer" in reasons["localizer-mixed/ct"]
    assert "modality SR" in reasons["dose-report/sr"]
    assert "modality MR" in reasons["non-ct/ct"]
    assert "not selected" in reasons["two-series/ct"]
    assert "fewer than ingest.min_slices" in reasons["single-slice/ct"]


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
