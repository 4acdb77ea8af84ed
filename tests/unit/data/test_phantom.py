"""The synthetic dataset is real DICOM with the geometry it claims, realistic HU, and deterministic."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import UID

from prdit.data.phantom import write_patient
from prdit.io import sha256_file
from prdit.stages.phantom import run as run_phantom
from tests.support.project import params_with

KW = dict(matrix=64, fov_mm=(330.0, 380.0), slice_mm=(2.5, 5.0), z_extent_mm=280.0)


@pytest.fixture(scope="module")
def patients(tmp_path_factory) -> tuple[Path, list]:
    root = tmp_path_factory.mktemp("phantom")
    return root, [write_patient(root, i, seed=0, **KW) for i in range(3)]


def test_files_are_ct_image_storage_with_rescale_and_uids(patients):
    root, written = patients
    w = written[0]
    files = sorted(w.folder.glob("*.dcm"))
    assert len(files) == w.shape_zyx[0]
    seen = set()
    for f in files:
        ds = pydicom.dcmread(f)
        assert ds.file_meta.MediaStorageSOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2" and ds.Modality == "CT"
        assert ds.pixel_array.dtype == np.int16 and ds.PixelRepresentation == 1 and ds.BitsAllocated == 16
        assert "RescaleSlope" in ds and "RescaleIntercept" in ds
        for uid in (ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.FrameOfReferenceUID):
            assert UID(uid).is_valid
        assert ds.PatientID == w.patient_id
        assert [float(v) for v in ds.PixelSpacing] == pytest.approx([w.pixel_spacing] * 2)
        assert float(ds.SliceThickness) == pytest.approx(w.slice_spacing)
        seen.add(ds.SOPInstanceUID)
    assert len(seen) == len(files)


def test_simpleitk_reads_the_claimed_geometry(patients):
    _, written = patients
    for w in written:
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(w.folder)))
        image = reader.Execute()
        assert image.GetSize() == (w.shape_zyx[2], w.shape_zyx[1], w.shape_zyx[0])
        assert image.GetSpacing() == pytest.approx(
            (w.pixel_spacing, w.pixel_spacing, w.slice_spacing), abs=1e-4
        )
        assert image.GetDirection() == pytest.approx((1, 0, 0, 0, 1, 0, 0, 0, 1))
        lowest = (w.origin[0], w.origin[1], w.origin[2] - (w.shape_zyx[0] - 1) * w.slice_spacing)
        assert image.GetOrigin() == pytest.approx(lowest, abs=1e-3)  # ITK starts at the most inferior slice


def test_anatomy_has_ct_like_values(patients):
    _, written = patients
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(written[1].folder)))
    hu = sitk.GetArrayFromImage(reader.Execute()).astype(np.float32)
    hu[hu < -1500] = -1000  # outside the reconstruction circle
    nz, ny, nx = hu.shape
    corner = hu[:, :4, :4]
    assert abs(float(np.median(corner)) + 1000) < 40  # air outside the body
    above = hu[:, 1:5, nx // 2 - 3 : nx // 2 + 3]  # air in front of the chest, inside the scan circle
    chest = hu[nz // 2]
    lungs = chest[(chest > -950) & (chest < -700)]
    assert lungs.size > 0.05 * chest.size  # a real lung field
    assert (hu > 300).sum() > 500  # bone: spine and ribs
    soft = hu[(hu > -50) & (hu < 100)]
    assert soft.size > 0.1 * hu.size  # soft tissue
    assert 5 < float(np.std(above)) < 60  # CT-like noise in air


def test_patients_vary_and_generation_is_deterministic(patients, tmp_path):
    root, written = patients
    assert len({w.pixel_spacing for w in written}) == 3
    assert len({w.slice_spacing for w in written}) == 3
    again = write_patient(tmp_path, 0, seed=0, **KW)
    a = sorted(written[0].folder.glob("*.dcm"))
    b = sorted(again.folder.glob("*.dcm"))
    assert [sha256_file(x) for x in a] == [sha256_file(x) for x in b]
    other = write_patient(tmp_path / "s1", 0, seed=1, **KW)
    assert other.pixel_spacing != written[0].pixel_spacing or other.slice_spacing != written[0].slice_spacing


def test_run_phantom_writes_layout_and_manifest(tmp_path, monkeypatch):
    p = params_with({"phantom": {"patients": 2, "matrix": 48}})
    out = tmp_path / "raw" / "phantom"
    run_phantom(p, out)
    series = sorted(out.glob("*/*/*/"))
    assert len(series) == 4  # axial CT + localizer per patient
    with open(out / "manifest.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["patient_id"] for r in rows} == {"PHANTOM-0001", "PHANTOM-0002"}
    assert all(sha256_file(out / r["file"]) == r["sha256"] for r in rows)
    assert not list(tmp_path.glob("raw/.*"))  # no temporary folder left behind


def test_dicom_writer_encodes_what_pydicom_writes(tmp_path):
    """The fast encoder (prdit.data.dicom_writer) writes byte for byte what pydicom's own writer would."""
    import io

    from prdit.data.dicom_writer import SeriesHeader, uid, write_ct_series

    hu = np.random.default_rng(0).integers(-1000, 2000, (3, 6, 5)).astype(np.float32)
    ipp = np.array([[-10.0, -12.0, z] for z in (0.0, 2.5, 5.0)])
    paths = write_ct_series(
        tmp_path,
        hu,
        ipp,
        (1, 0, 0, 0, 1, 0),
        (0.7, 0.8),
        SeriesHeader(
            slice_thickness=2.5,
            patient_id="p",
            study_uid=uid("s"),
            series_uid=uid("s", "1"),
            padding_mask=np.eye(6, 5, dtype=bool)[None],
        ),
    )
    for k, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        again = io.BytesIO()
        ds.save_as(again, enforce_file_format=True)
        assert again.getvalue() == path.read_bytes()
        stored = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        keep = ~np.eye(6, 5, dtype=bool)
        np.testing.assert_array_equal(stored[keep], hu[k][keep])
        assert [float(v) for v in ds.ImagePositionPatient] == ipp[k].tolist()
