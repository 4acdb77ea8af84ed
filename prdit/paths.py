"""The project's file layout: the one place that knows where each stage reads and writes.

Every path is relative to the project root (the folder holding params.yaml and the Snakefile): prdit's
commands run there (`prdit --root DIR` or PRDIT_ROOT move there first), as Snakemake and DVC do. The
functions take wildcard-friendly arguments (str or int), so workflow/*.smk can build its patterns with
them, e.g. `str(paths.processed("{dataset}", "{size}"))` or
`str(paths.shards(paths.interim("{dataset}")) / "{shard}.csv")`.
"""

from __future__ import annotations

import os
from pathlib import Path

from prdit.errors import PrditError

# a folder is a project root when it holds one of these (params.yaml: prdit's own parameter file)
ROOT_MARKERS = ("params.yaml", "Snakefile", "dvc.yaml")
ROOT_ENV = "PRDIT_ROOT"

DATA = Path("data")
RAW = DATA / "raw"
INTERIM = DATA / "interim"
PROCESSED = DATA / "processed"
SPLITS = DATA / "splits"
FEATURES = DATA / "features"
MODELS = Path("models")
SAMPLES = Path("samples")
METRICS = Path("metrics")
REPORTS = Path("reports")
CASE_CACHE_ENV = "PRDIT_CACHE_DIR"
STATE = Path(".prdit")  # the project's own caches and spools (not outputs of any stage)


class NotAProjectError(PrditError, FileNotFoundError):
    """prdit was started outside a project root: its relative outputs would land in a foreign folder."""


def raw(dataset: str) -> Path:
    """data/raw/<dataset>: where a downloaded or generated dataset lives."""
    return RAW / str(dataset)


def manifest(dataset: str) -> Path:
    """data/raw/<dataset>/manifest.csv: what a download or the phantom wrote, with checksums."""
    return raw(dataset) / "manifest.csv"


def interim(dataset: str) -> Path:
    """data/interim/<dataset>: ingested HU volumes and their qc.csv."""
    return INTERIM / str(dataset)


def processed(dataset: str, size: str | int | None = None) -> Path:
    """data/processed/<dataset>[/<size>]: preprocessed cubes (NIfTI + float16 training cache), qc."""
    base = PROCESSED / str(dataset)
    return base if size is None else base / str(size)


def shards(stage_dir: Path) -> Path:
    """<stage_dir>.shards: where `--shard` runs of a stage leave their per-shard outputs."""
    return stage_dir.with_name(f"{stage_dir.name}.shards")


def partial(stage_dir: Path) -> Path:
    """<stage_dir>.partial: what an interrupted run of a stage has finished so far (resumed by the next run).

    Beside the output, never inside it: Snakemake deletes a failed job's outputs, and the point of this
    folder is to outlive a killed job.
    """
    return stage_dir.with_name(f"{stage_dir.name}.partial")


def splits(dataset: str, split: str | None = None) -> Path:
    """data/splits/<dataset>[/<split>.txt]: the patient-level split lists."""
    base = SPLITS / str(dataset)
    return base if split is None else base / f"{split}.txt"


def features(dataset: str | None = None, size: str | int | None = None) -> Path:
    """data/features[/<dataset>/<size>]: the evaluation's real-feature cache."""
    if dataset is None:
        return FEATURES
    return FEATURES / str(dataset) if size is None else FEATURES / str(dataset) / str(size)


def feature_cache(dataset: str, size: str | int) -> Path:
    """data/features/<dataset>/<size>/real.npz: the real-set feature cache of one evaluation (a cache, no
    declared output: prdit.evaluate.features)."""
    return features(dataset, size) / "real.npz"


def model_name(stage: str, key: str | None = None) -> str:
    """<stage>[-<key>]: the folder name of a model (the rules' {model} wildcard). `key` (Params.model_key)
    tells apart the models of named experiments whose parameters differ from the project's own;
    experiments with the same key share the folder."""
    return str(stage) if key is None else f"{stage}-{key}"


def model_dir(dataset: str, stage: str, key: str | None = None) -> Path:
    """models/<dataset>/<stage>[-<key>]: model.pt, last.pt, metrics.json and previews of one training stage."""
    return MODELS / str(dataset) / model_name(stage, key)


def model_file(dataset: str, stage: str, key: str | None = None) -> Path:
    """The stage's final weights, what the next stage freezes and `prdit sample` loads."""
    return model_dir(dataset, stage, key) / "model.pt"


def _named(base: Path, name: str | None) -> Path:
    return base if name is None else base / str(name)


def samples(dataset: str, size: str | int | None = None, name: str | None = None) -> Path:
    """samples/<dataset>[/<experiment>][/<size>]: generated volumes (an experiment's under its name)."""
    base = _named(SAMPLES / str(dataset), name)
    return base if size is None else base / str(size)


def metrics(dataset: str, size: str | int, name: str | None = None) -> Path:
    """metrics/<dataset>[/<name>]/<size>.json: the evaluation's numbers (DVC metrics); `name` an experiment
    or a baseline."""
    return _named(METRICS / str(dataset), name) / f"{size}.json"


def reports(dataset: str, size: str | int, name: str | None = None) -> Path:
    """reports/<dataset>[/<name>]/<size>: the evaluation's report.html and its figures and tables."""
    return _named(REPORTS / str(dataset), name) / str(size)


COMPARE = "compare"  # reserved: no experiment or baseline may be called so (params.schema.yaml)


def compare(dataset: str, size: str | int) -> Path:
    """reports/<dataset>/compare/<size>: the comparison of every experiment and baseline at one size."""
    return REPORTS / str(dataset) / COMPARE / str(size)


def medicalnet(name: str) -> Path:
    """Where `prdit fetch-weights` places a MedicalNet checkpoint (prdit.acquire.weights) unless told."""
    return MODELS / "medicalnet" / name


def case_cache() -> Path:
    """The per-case cache of ingest and preprocess (prdit.data.cache); PRDIT_CACHE_DIR moves it."""
    return Path(os.environ.get(CASE_CACHE_ENV) or STATE / "cache")


def pseudonym_key() -> Path:
    """The project's pseudonym key (prdit.data.pseudonyms): never an output, never logged."""
    return STATE / "pseudonym.key"


def inductor_cache() -> Path:
    """.prdit/inductor-cache: torch.compile's inductor and Triton caches, reused by a requeued job."""
    return STATE / "inductor-cache"


def is_root(folder: Path) -> bool:
    return any((folder / m).is_file() for m in ROOT_MARKERS)


def project_root(explicit: str | Path | None = None, cwd: Path | None = None) -> Path:
    """The project root prdit works in: `explicit` (--root), else $PRDIT_ROOT, else the current folder.

    Raises NotAProjectError when that folder holds none of ROOT_MARKERS, so a command started in the
    wrong folder stops before it writes anything there.
    """
    given = explicit or os.environ.get(ROOT_ENV) or None
    folder = Path(given).expanduser() if given else (cwd or Path.cwd())
    folder = folder.resolve()
    if not is_root(folder):
        how = f"--root {given}" if explicit else f"{ROOT_ENV}={given}" if given else "the current folder"
        raise NotAProjectError(
            f"{folder} ({how}) is not a prdit project root (no {', '.join(ROOT_MARKERS)}); "
            f"run prdit in the project folder, or pass --root DIR or set {ROOT_ENV}"
        )
    return folder
