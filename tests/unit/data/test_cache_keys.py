"""The per-case jobs (prdit.data.cache.CaseJob) key a case exactly as the kwargs-dict jobs they replaced, so
every entry of a user's .prdit/cache stays valid; a field outside KEY never changes a key."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from prdit.data import ingest, preprocess
from prdit.data.cache import CaseCache, entry_key, key_or_unique

USED_INGEST = {
    "ingest": {"min_slices": 16, "max_gap_factor": 1.5, "shards": 4},
    "sources.t": {"format": "dicom"},
}
USED_PRE = {"preprocess": {"size": 16, "window": [-1000, 1000], "shards": 2}, "sources.t": {"recipe": "lidc"}}


def old_ingest_key(job: dict, root: Path, cache: CaseCache) -> str:
    """prdit/data/ingest.py's case_key before the jobs were dataclasses (kwargs dicts run as fn(**job))."""
    files = job.get("files") or [job["path"]]
    desc = {k: v for k, v in job.items() if k not in ("files", "path", "out", "hide")}
    rel = [Path(f).relative_to(root).as_posix() for f in files]
    inputs = [[r, sha] for r, sha in zip(rel, cache.content_hashes(job["case"], files))]
    return entry_key("ingest", USED_INGEST, desc, inputs=inputs)


def old_preprocess_key(job: dict, cache: CaseCache) -> str:
    desc = {k: v for k, v in job.items() if k not in ("path", "out_root")}
    content = cache.content_hashes(job["case"], [job["path"]])[0]
    return entry_key("preprocess", USED_PRE, desc, input=content)


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    root = tmp_path / "raw"
    (root / "p1" / "s1").mkdir(parents=True)
    for i in range(3):
        (root / "p1" / "s1" / f"{i}.dcm").write_bytes(b"slice %d" % i)
    (root / "c.npz").write_bytes(b"npz")
    (root / "v.nii.gz").write_bytes(b"interim volume")
    return root


def dicom_dict(raw: Path, hidden: bool) -> dict:
    """A DICOM job as the old plan built it (`hide` only under case_ids: pseudonym)."""
    return dict(
        case="p1",
        patient_id="p1",
        files=[str(f) for f in sorted((raw / "p1" / "s1").iterdir())],
        source="p1/s1",
        series_uid="1.2.3",
        out="p1.nii.gz",
        max_gap_factor=1.5,
        min_slices=16,
        min_extent_mm=[200.0, 150.0, 100.0],
        **({"hide": {"p1": "x"}} if hidden else {}),
    )


def file_dict(raw: Path) -> dict:
    return dict(
        case="c",
        patient_id="c",
        path=str(raw / "c.npz"),
        fmt="npz",
        source="c.npz",
        out="c.nii.gz",
        min_slices=16,
        min_extent_mm=[200.0, 150.0, 100.0],
    )


def preprocess_dicts(raw: Path) -> list[dict]:
    """The old run_preprocess's jobs: default mode; reference mode (+ reference_range); a recipe of its own."""
    base = dict(
        case="v",
        patient_id="pv",
        path=str(raw / "v.nii.gz"),
        out_root=".",
        sizes=[16, 32],
        mode="default",
        fmt="dicom",
        fov_mm=320.0,
        window=(-1000.0, 1000.0),
    )
    ref = {**base, "mode": "reference", "reference_range": (-1.0, 1.0)}
    return [base, ref, {**ref, "recipe": "rad-chestct"}]


def test_ingest_keys_are_the_old_ones(raw: Path, tmp_path: Path) -> None:
    cache = CaseCache("ingest", "t", root=tmp_path / "cache")
    for old, kind in [
        (dicom_dict(raw, hidden=False), ingest.DicomJob),
        (dicom_dict(raw, hidden=True), ingest.DicomJob),
        (file_dict(raw), ingest.FileJob),
    ]:
        job = kind(**old)
        assert job.as_dict() == old  # the plan file's job, as before
        assert kind.from_dict(old) == job
        assert ingest.case_key(job, USED_INGEST, raw, cache) == old_ingest_key(old, raw, cache)
    assert ingest.job_class("dicom") is ingest.DicomJob and ingest.job_class("nifti") is ingest.FileJob
    # the key fields, spelled out: a change here invalidates every user's cache
    assert ingest.DicomJob(**dicom_dict(raw, False)).key_fields().keys() == {
        "case", "patient_id", "source", "series_uid", "max_gap_factor", "min_slices", "min_extent_mm"
    }  # fmt: skip
    assert ingest.FileJob(**file_dict(raw)).key_fields().keys() == {
        "case", "patient_id", "fmt", "source", "min_slices", "min_extent_mm"
    }  # fmt: skip


def test_preprocess_keys_are_the_old_ones(raw: Path, tmp_path: Path) -> None:
    cache = CaseCache("preprocess", "t", root=tmp_path / "cache")
    keys = set()
    for old in preprocess_dicts(raw):
        job = preprocess.PreprocessJob(**old)
        assert job.as_dict() == old
        key = preprocess.case_key(job, USED_PRE, cache)
        assert key == old_preprocess_key(old, cache)
        keys.add(key)
    assert len(keys) == 3  # reference_range and recipe are in the key where they are set


def test_a_field_outside_the_key_never_changes_it(raw: Path, tmp_path: Path) -> None:
    cache = CaseCache("ingest", "t", root=tmp_path / "cache")

    @dataclass(frozen=True)
    class Annotated(ingest.DicomJob):
        note: str = "a new field, not in KEY"

    job = ingest.DicomJob(**dicom_dict(raw, hidden=False))
    key = ingest.case_key(job, USED_INGEST, raw, cache)
    assert ingest.case_key(Annotated(**dicom_dict(raw, hidden=False)), USED_INGEST, raw, cache) == key
    assert (
        ingest.case_key(replace(job, hide={"p1": "x"}, out="elsewhere.nii.gz"), USED_INGEST, raw, cache)
        == key
    )
    assert ingest.case_key(replace(job, min_slices=17), USED_INGEST, raw, cache) != key  # a key field does
    pre = preprocess.PreprocessJob(**preprocess_dicts(raw)[0])
    pkey = preprocess.case_key(pre, USED_PRE, cache)
    assert preprocess.case_key(replace(pre, out_root="other"), USED_PRE, cache) == pkey
    scheduling = {**USED_PRE, "preprocess": {**USED_PRE["preprocess"], "shards": 9}}
    assert preprocess.case_key(pre, scheduling, cache) == pkey  # shards: never a case's outputs


def test_outputs_move_under_the_entry_and_unreadable_inputs_get_a_unique_key(
    raw: Path, tmp_path: Path
) -> None:
    job = ingest.FileJob(**file_dict(raw))
    moved = job.under(tmp_path / "entry")
    assert moved.out == str(tmp_path / "entry" / "c.nii.gz") and moved.path == job.path
    assert job.input_files() == [str(raw / "c.npz")]
    gone = replace(job, path=str(raw / "gone.npz"))
    cache = CaseCache("ingest", "t", root=tmp_path / "cache")
    first, second = (key_or_unique(lambda j: ingest.case_key(j, USED_INGEST, raw, cache), gone) for _ in "ab")
    assert first.startswith("unreadable-") and first != second
