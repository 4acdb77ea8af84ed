"""Baselines (params.yaml `baselines:`): other methods' volumes are scored exactly like our samples.

Equalities here are exact, and the reason is stated at each: the baseline reader either reads the same
bytes the samples path reads, or every float operation on the way has an exactly representable result
(dyadic test volumes), so IEEE rounding changes nothing and the [-1, 1] cubes are bitwise those of the
samples path; everything after that is the same deterministic computation.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from prdit.errors import PrditError
from prdit.evaluate.baselines import BaselineError, baseline_set, read_hu, read_unit
from prdit.evaluate.run import MID_SLICE_KEYS, EvalSettings
from prdit.evaluate.volumes import read_volume
from prdit.hu import to_hu as unit_to_hu
from prdit.io import read_nifti, to_image, write_nifti
from prdit.stages.evaluate import BaselineMismatch, numeric
from prdit.stages.evaluate import run as run_evaluate
from tests.support.evaluation import SIZE, WINDOW, evaluate_toy, phantom
from tests.support.project import params_with

GOOD = range(6)  # samples 0..5 of toy_eval are 16^3 (6.nii.gz is the wrong-size one)


def _params(baselines: dict | None = None, **extra) -> object:
    return params_with(
        {
            "datasets": ["toy"],
            "sources": {"toy": {"format": "nifti", "path": "data/raw/toy", "download": "none"}},
            "preprocess": {"size": SIZE, "highres_size": 2 * SIZE},
            "evaluate": {"bootstrap": 5, "ms_ssim_pairs": 3},
            "baselines": baselines or {},
            **extra,
        }
    )


def _eval(gen=None, name=None) -> dict:
    m, _, _ = evaluate_toy(EvalSettings(WINDOW, ms_ssim_pairs=4, bootstrap=10, seed=0), name, generated=gen)
    return m


def _copy_samples(dest: Path, suffix: str = ".nii.gz") -> Path:
    dest.mkdir(parents=True)
    for i in GOOD:
        shutil.copy(f"samples/toy/{SIZE}/{i}.nii.gz", dest / f"{i}{suffix}")
    return dest


def test_copies_of_our_samples_score_what_the_samples_score(toy_eval):
    """(a) Same bytes, same reader (DICOMOrient to LPS is the identity on our files), same float32 map:
    bitwise the same cubes, so every number is equal (tolerance 0)."""
    folder = _copy_samples(Path("elsewhere/ours"))
    p = _params({"ours": {"dataset": "toy", "size": SIZE, "path": str(folder), "values": "hu"}})
    for i in GOOD:
        ours = read_volume(Path(f"samples/toy/{SIZE}/{i}.nii.gz"), SIZE, "generated", WINDOW)
        assert np.array_equal(read_unit(folder / f"{i}.nii.gz", SIZE, "hu", WINDOW), ours)
    run_evaluate(p, "toy", SIZE)
    run_evaluate(p, "toy", SIZE, baseline="ours")
    samples = json.loads(Path(f"metrics/toy/{SIZE}.json").read_text())
    base = json.loads(Path(f"metrics/toy/ours/{SIZE}.json").read_text())
    assert numeric(base) == numeric(samples) and base["fid"] is not None
    assert base["memorization"]["near_copies"] == samples["memorization"]["near_copies"] == ["5"]
    assert samples["generated"] == {
        "kind": "samples",
        "name": None,
        "path": f"samples/toy/{SIZE}",
        "values": "hu",
    }
    assert base["generated"] == {
        "kind": "baseline",
        "name": "ours",
        "path": str(folder),
        "values": "hu",
        "axes": "zyx",
        "flip": [],
    }
    assert Path(f"reports/toy/ours/{SIZE}/report.html").is_file()
    # mid_slices.npz in both report folders: the contract of the comparison report
    real0 = unit_to_hu(
        read_volume(Path(f"data/processed/toy/{SIZE}/c0.nii.gz"), SIZE, "real", WINDOW), WINDOW
    )
    gen0 = unit_to_hu(read_volume(Path(f"samples/toy/{SIZE}/0.nii.gz"), SIZE, "generated", WINDOW), WINDOW)
    mid = SIZE // 2
    for report in (Path(f"reports/toy/{SIZE}"), Path(f"reports/toy/ours/{SIZE}")):
        with np.load(report / "mid_slices.npz") as z:
            assert sorted(z.files) == sorted(MID_SLICE_KEYS)
            assert all(z[k].dtype == np.float32 and z[k].shape == (SIZE, SIZE) for k in z.files)
            for who, vol in (("generated", gen0), ("real", real0)):
                assert np.array_equal(z[f"{who}_axial"], vol[mid])
                assert np.array_equal(z[f"{who}_coronal"], vol[:, mid])
                assert np.array_equal(z[f"{who}_sagittal"], vol[:, :, mid])


def _dyadic(rng: np.random.Generator) -> np.ndarray:
    """A toy volume in [-1, 1] whose values are multiples of 2^-9: every map below is exact on it."""
    return np.round(phantom(rng) * 512).astype(np.float32) / 512


def test_a_unit_range_npy_in_xyz_scores_as_its_hu_equivalent(toy_eval):
    """(b) Values k/512 in [-1, 1]: HU = 1000 u (<= 19 significant bits), [0, 1] = (u + 1) / 2 and back
    (-1000 + 2000 x, then prdit.hu.to_unit's 2 (h + 1000) / 2000 - 1) all have representable exact results, so
    both files give bitwise the same cubes and the same metrics (tolerance 0)."""
    rng = np.random.default_rng(7)
    hu_dir, unit_dir = Path("b/hu"), Path("b/unit")
    unit_dir.mkdir(parents=True)
    for i in range(5):
        u = _dyadic(rng)
        write_nifti(hu_dir / f"{i}.nii.gz", unit_to_hu(u, WINDOW), (8.0,) * 3)
        # stored as [x, y, z] and feet-first (z reversed): declared axes xyz, flip z
        np.save(unit_dir / f"{i}.npy", ((u + 1) / 2)[::-1].transpose(2, 1, 0))
    u = _dyadic(rng)  # one .npz (a single array) too
    np.savez(unit_dir / "5.npz", volume=((u + 1) / 2)[::-1].transpose(2, 1, 0))
    write_nifti(hu_dir / "5.nii.gz", unit_to_hu(u, WINDOW), (8.0,) * 3)
    (unit_dir / "README.txt").write_text("not a volume")
    hu = baseline_set("hu", hu_dir, SIZE, "hu", WINDOW)
    unit = baseline_set("unit", unit_dir, SIZE, (0.0, 1.0), WINDOW, axes="xyz", flip=("z",))
    assert unit.ids == hu.ids == [str(i) for i in range(6)]
    for a, b in zip(hu.paths, unit.paths):
        assert np.array_equal(hu.read(a), unit.read(b))
    wrong = read_unit(unit.paths[0], SIZE, (0.0, 1.0), WINDOW, axes="zyx", flip=("z",))
    assert not np.array_equal(wrong, hu.read(hu.paths[0]))  # the declaration matters
    m_hu, m_unit = _eval(hu, "hu"), _eval(unit, "unit")
    assert numeric(m_unit) == numeric(m_hu) and m_unit["fid"] is not None
    assert m_unit["generated"]["values"] == [0.0, 1.0] and m_unit["generated"]["axes"] == "xyz"
    assert any("README.txt" in n and "ignored" in n for n in m_unit["notes"])
    assert (
        Path(f"metrics/toy/unit/{SIZE}.json").is_file()
        and Path(f"reports/toy/unit/{SIZE}/mid_slices.npz").is_file()
    )


def test_a_nifti_baseline_in_another_orientation_is_reoriented(toy_eval):
    """(d) Our samples stored RAS-wise (direction diag(-1, -1, 1), the array flipped in x and y: the same
    anatomy) as uncompressed .nii: DICOMOrient flips them back exactly, so the metrics are the samples'."""
    folder = Path("b/ras")
    folder.mkdir(parents=True)
    for i in GOOD:
        arr, spacing = read_nifti(f"samples/toy/{SIZE}/{i}.nii.gz")
        image = to_image(arr[:, ::-1, ::-1], spacing, direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1))
        sitk.WriteImage(image, str(folder / f"{i}.nii"))
        assert np.array_equal(read_hu(folder / f"{i}.nii", SIZE, "hu", WINDOW), arr)
    for f in Path(f"samples/toy/{SIZE}").glob("6.nii.gz"):
        f.unlink()
    m_samples, m_ras = _eval(), _eval(baseline_set("ras", folder, SIZE, "hu", WINDOW), "ras")
    assert numeric(m_ras) == numeric(m_samples)


def _bad_files(folder: Path) -> dict[str, tuple[str, str]]:
    """name -> (file written into `folder`, what the error says)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    cube = (phantom(rng) + 1) / 2  # [0, 1]
    files = {
        "wrong size": ("1.npy", np.zeros((8, 8, 8), np.float32), f"expected a {SIZE}^3 volume"),
        "2-D": ("1.npy", cube[0], "expected a 3-D volume, got shape (16, 16) (2-D)"),
        "4-D": ("1.npy", cube[None], "expected a 3-D volume, got shape (1, 16, 16, 16) (4-D)"),
        "0..255": ("1.npy", np.round(cube * 255).astype(np.uint8), "outside the declared range [0, 1]"),
        "just above 1": (
            "1.npy",
            np.where(cube == cube.max(), 1.001, cube),
            "outside the declared range [0, 1]",
        ),
        "NaN": ("1.npy", np.where(cube == cube.max(), np.nan, cube), "NaN or inf"),
    }
    out = {}
    for key, (name, arr, says) in files.items():
        sub = folder / key.replace(" ", "_")
        sub.mkdir()
        np.save(sub / "0.npy", cube)
        np.save(sub / name, arr)
        out[key] = (str(sub / name), says)
    sub = folder / "two_arrays"
    sub.mkdir()
    np.savez(sub / "0.npz", a=cube, b=cube)
    out["two arrays"] = (str(sub / "0.npz"), "holds 2 arrays")
    sub = folder / "nifti_4d"
    sub.mkdir()
    sitk.WriteImage(sitk.JoinSeries([sitk.GetImageFromArray(cube)] * 2), str(sub / "0.nii.gz"))
    out["4-D NIfTI"] = (str(sub / "0.nii.gz"), "expected a 3-D volume, got shape (2, 16, 16, 16)")
    return out


def test_bad_baseline_files_are_one_line_errors_naming_the_file(toy_eval):
    """(c) Nothing is resized, squeezed or rescaled: each bad file stops the evaluation, naming itself."""
    for key, (path, says) in _bad_files(Path("bad")).items():
        gen = baseline_set(key, Path(path).parent, SIZE, (0, 1), WINDOW)
        with pytest.raises(BaselineError) as info:
            _eval(gen, "bad")
        msg = str(info.value)
        assert "\n" not in msg and msg.startswith(path) and says in msg, (key, msg)
    assert not Path("metrics/toy/bad").exists()


def test_declared_ranges_allow_float_rounding_only(toy_eval):
    folder = Path("tol")
    folder.mkdir()
    cube = (phantom(np.random.default_rng(2)) + 1) / 2
    cube[0, 0, 0], cube[0, 0, 1] = np.nextafter(np.float32(1), np.float32(2)), -np.float32(2.0**-24)
    np.save(folder / "0.npy", cube)  # one float32 rounding past either end: accepted
    assert read_hu(folder / "0.npy", SIZE, (0, 1), WINDOW).max() == pytest.approx(1000, abs=1e-3)
    hu_in_unit = folder / "1.npy"
    np.save(hu_in_unit, 2 * cube - 1)  # declared HU but plainly [-1, 1]
    with pytest.raises(
        BaselineError, match=r"1\.npy: declared HU but every voxel lies in .* within \[-1, 1\]"
    ):
        read_hu(hu_in_unit, SIZE, "hu", WINDOW)
    np.save(hu_in_unit, cube)  # ... or [0, 1]
    with pytest.raises(BaselineError, match="normalised data"):
        read_hu(hu_in_unit, SIZE, "hu", WINDOW)


def test_missing_or_empty_folders_and_mismatched_baselines_are_one_line_errors(toy_eval):
    with pytest.raises(BaselineError, match=r"^baselines\.gan\.path: nowhere is not a folder"):
        baseline_set("gan", "nowhere", SIZE, "hu", WINDOW)
    Path("empty").mkdir()
    (Path("empty") / "notes.txt").write_text("x")
    with pytest.raises(BaselineError, match=r"^baselines\.gan\.path: empty holds no volumes"):
        baseline_set("gan", "empty", SIZE, "hu", WINDOW)
    p = _params({"gan": {"dataset": "toy", "size": 2 * SIZE, "path": "empty", "values": "hu"}})
    with pytest.raises(
        BaselineMismatch, match=rf"^baselines\.gan: declared for toy/{2 * SIZE}, asked .* toy/{SIZE}$"
    ):
        run_evaluate(p, "toy", SIZE, baseline="gan")
    with pytest.raises(BaselineMismatch, match=r"^baselines\.other: not declared"):
        run_evaluate(p, "toy", SIZE, baseline="other")
    with pytest.raises(BaselineError, match=r"^baselines\.gan\.path: empty holds no volumes"):
        run_evaluate(
            _params({"gan": {"dataset": "toy", "size": SIZE, "path": "empty", "values": "hu"}}),
            "toy",
            SIZE,
            "gan",
        )
    assert issubclass(BaselineError, PrditError) and issubclass(BaselineMismatch, PrditError)


def test_an_experiment_evaluates_its_own_samples_into_its_own_folders(toy_eval):
    p = _params(experiments={"e1": {"sample": {"steps": 3}}}).views["e1"]
    _copy_samples(Path(f"samples/toy/e1/{SIZE}"))
    run_evaluate(p, "toy", SIZE)
    m = json.loads(Path(f"metrics/toy/e1/{SIZE}.json").read_text())
    assert m["generated"] == {
        "kind": "experiment",
        "name": "e1",
        "path": f"samples/toy/e1/{SIZE}",
        "values": "hu",
    }
    assert m["n"]["generated"] == len(GOOD) and not m["skipped"]
    assert (
        Path(f"reports/toy/e1/{SIZE}/mid_slices.npz").is_file()
        and not Path(f"metrics/toy/{SIZE}.json").exists()
    )
