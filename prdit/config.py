"""Typed, validated view of params.yaml: the one parameter file of Snakemake, DVC and prdit.

Validation happens before any work: the JSON schema (workflow/schemas/params.schema.yaml) catches
unknown keys and wrong types, `_check` catches impossible combinations; both name the key.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from prdit import paths, topology
from prdit.errors import ConfigError
from prdit.protocol import CONVENTIONS, MEDICALNET_23DATASET_SHA256, PAPER_WEIGHTS_NAME, Conventions

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "params.schema.yaml"
STAGES = topology.STAGES

# The params each pipeline stage reads: Snakemake rules and DVC stages list exactly these, so a change
# re-runs only the stages that read it. "{dataset}" is filled in per dataset, "{name}" per baseline.
STAGE_PARAMS: dict[str, tuple[str, ...]] = {
    "phantom": ("phantom",),
    "download": ("sources.{dataset}", "phantom", "download"),  # narrowed per source kind by Params.used
    "ingest": ("sources.{dataset}", "ingest"),
    "preprocess": ("sources.{dataset}", "preprocess", "protocol"),
    "split": ("split", "protocol"),
    "train-local": ("train.common", "train.local", "diffusion", "preprocess.size", "protocol"),
    "train-global": ("train.common", "train.global", "diffusion", "preprocess.size", "protocol"),
    "train-highres": (
        "train.common",
        "train.highres",
        "diffusion",
        "preprocess.size",
        "preprocess.highres_size",
        "protocol",
    ),
    "sample": ("sample", "diffusion", "preprocess.window", "preprocess.fov_mm", "protocol"),
    "evaluate": ("evaluate", "preprocess.window", "protocol"),
    "evaluate-baseline": ("evaluate", "preprocess.window", "protocol", "baselines.{name}"),
    "compare": ("evaluate", "preprocess.window", "protocol"),
}


@dataclass(frozen=True)
class Source:
    format: str
    path: str
    download: str
    case_ids: str = "auto"  # auto | pseudonym | source: how cases are named (prdit.data.pseudonyms)
    # auto | lidc | rad-chestct: the dataset whose paper recipe preprocess.mode reference follows
    # (prdit.data.paper_recipe); auto = by format, as before (npz: rad-chestct, dicom / nifti: lidc)
    recipe: str = "auto"


@dataclass(frozen=True)
class Phantom:
    patients: int
    seed: int
    matrix: int
    fov_mm: tuple[float, float]
    slice_thickness_mm: tuple[float, float]
    z_extent_mm: float


@dataclass(frozen=True)
class Ingest:
    min_slices: int
    max_gap_factor: float
    min_extent_mm: tuple[float, float, float]  # x, y, z (LPS): less coverage is rejected
    shards: int = 1  # Snakemake jobs the cases are spread over (scheduling only; outputs do not depend on it)


@dataclass(frozen=True)
class Preprocess:
    mode: str
    window: tuple[float, float]
    fov_mm: float
    size: int
    highres_size: int | None
    shards: int = 1  # Snakemake jobs the cases are spread over (scheduling only; outputs do not depend on it)
    reference_range: tuple[float, float] = (-1.0, 1.0)  # where mode `reference` maps its [0, 1] min-max


@dataclass(frozen=True)
class Split:
    seed: int
    val_fraction: float
    test_fraction: float


@dataclass(frozen=True)
class Diffusion:
    timesteps: int
    noise_std: float


# Metadata of a training setting that changes when or how things happen, never the weights a run reaches:
# it stays out of the resume fingerprint, so changing it keeps last.pt. Every other setting is in it.
NOT_WEIGHTS = {"decides_weights": False}


def weight_fields(settings: Any) -> dict[str, Any]:
    """The fields of a settings dataclass that decide the weights a run reaches (all not marked NOT_WEIGHTS):
    what a resumed last.pt must agree on."""
    return {
        f.name: getattr(settings, f.name) for f in fields(settings) if f.metadata.get("decides_weights", True)
    }


@dataclass(frozen=True)
class TrainCommon:
    """train.common: settings shared by the three stages; the engine reads them from this object."""

    seed: int
    ema_decay: float
    grad_clip: float
    weight_decay: float
    warmup_steps: int
    grad_accum: int
    checkpoint_every: int = field(metadata=NOT_WEIGHTS)
    val_every: int = field(metadata=NOT_WEIGHTS)
    preview_every: int = field(metadata=NOT_WEIGHTS)
    log_every: int = field(metadata=NOT_WEIGHTS)
    num_workers: int = field(metadata=NOT_WEIGHTS)
    compile: bool | str = field(metadata=NOT_WEIGHTS)  # true, false or "strict" (prdit.train.compiling)
    max_nonfinite: int = field(metadata=NOT_WEIGHTS)
    # the GPU memory `micro_batch: auto` fits into (GiB); None = the device's own (prdit.train.batching)
    gpu_memory_gib: float | None = field(default=None, metadata=NOT_WEIGHTS)


@dataclass(frozen=True)
class TrainStage:
    """train.<stage>: what one stage builds and how long it trains."""

    model: str
    steps: int = field(metadata=NOT_WEIGHTS)  # a run continues from last.pt when steps grows
    batch_size: int
    lr: float
    checkpointing: bool = False
    # per-GPU micro-batch: None = train.common.grad_accum decides, an int, or "auto" (fits the GPU); it
    # changes memory and float summation order only, never the trajectory (prdit.train.batching)
    micro_batch: int | str | None = field(default=None, metadata=NOT_WEIGHTS)


@dataclass(frozen=True)
class Train:
    common: TrainCommon
    local: TrainStage
    global_: TrainStage
    highres: TrainStage

    def stage(self, name: str) -> TrainStage:
        """The settings of stage `name` (local, global or highres)."""
        if name not in STAGES:
            raise ConfigError(f"unknown training stage {name!r}; expected one of {', '.join(STAGES)}")
        return self.global_ if name == "global" else getattr(self, name)


@dataclass(frozen=True)
class Sample:
    n: int
    steps: int
    k: int
    batch_size: int
    seed: int
    shards: int = 1  # independent sampling jobs (whole batches each); their union is the unsharded output


@dataclass(frozen=True)
class Evaluate:
    weights: str | None
    sha256: str | None
    ms_ssim_pairs: int
    bootstrap: int
    seed: int
    url: str | None = None
    num_samples: int | None = None


@dataclass(frozen=True)
class Baseline:
    """baselines.<name>: a folder of another method's generated volumes, evaluated like our samples."""

    dataset: str
    size: int
    path: str
    values: str | tuple[float, float]  # "hu", or the linear range the volumes span (mapped onto the window)
    axes: str = "zyx"  # what the axes of a .npy/.npz array are (ours: zyx); NIfTI files carry their own
    flip: tuple[str, ...] = ()  # axes reversed after reordering


@dataclass(frozen=True)
class Downloader:
    base_url: str
    collection: str = ""
    modality: str = "CT"
    record: str = ""
    workers: int = 4
    retries: int = 6
    patients: tuple[str, ...] = ()
    limit: int | None = None
    manifest: str | None = None  # lidc-idri: a TCIA portal .tcia manifest choosing the series
    md5: bool = True  # lidc-idri: verify every image against NBIA's published MD5


@dataclass(frozen=True)
class Params:
    experiment: str
    tracking_uri: str | None
    datasets: tuple[str, ...]
    sources: dict[str, Source]
    phantom: Phantom
    ingest: Ingest
    preprocess: Preprocess
    split: Split
    diffusion: Diffusion
    train: Train
    sample: Sample
    evaluate: Evaluate
    download: dict[str, Downloader]
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)
    baselines: dict[str, Baseline] = field(default_factory=dict)
    protocol: str = "project"  # project | paper (prdit.protocol)
    conventions: Conventions = CONVENTIONS["project"]  # what `protocol` decides, resolved once
    resources: dict[str, Any] = field(default_factory=dict)  # scheduling only: read by no stage
    # the named experiment these parameters are the view of (experiments.<name>); None: the project's own
    exp_name: str | None = None
    views: dict[str, Params] = field(repr=False, compare=False, default_factory=dict)  # name -> its view
    base: Params | None = field(repr=False, compare=False, default=None)  # a view's project parameters

    def experiments(self) -> tuple[str, ...]:
        """The names under `experiments:` in their order; () for a project without that section."""
        return tuple((self.base or self).views)

    def view(self, name: str | None) -> Params:
        """The parameters of experiment `name` (the project's own for None)."""
        root = self.base or self
        if name is None:
            return root
        if name not in root.views:
            known = ", ".join(root.views) or "none: params have no 'experiments' section"
            raise ConfigError(f"experiment {name!r}: not under 'experiments' (known: {known})")
        return root.views[name]

    def lineage_hash(self, stage: str) -> str:
        """Hash of what the model of `stage` depends on: the params it and every stage under it read."""
        used = [self.used(f"train-{s}") for s in topology.lineage(stage)]
        return hashlib.sha256(json.dumps(used, sort_keys=True, default=str).encode()).hexdigest()[:12]

    def model_key(self, stage: str) -> str | None:
        """The key of this view's `stage` model folder (models/<ds>/<stage>-<key>): None when the stage and
        its parents read what the project's own parameters read, so that model is models/<ds>/<stage> as
        without experiments. Experiments with equal keys share the model: it is trained once."""
        mine = self.lineage_hash(stage)
        return None if mine == (self.base or self).lineage_hash(stage) else mine

    def sharing(self, stage: str) -> tuple[str, ...]:
        """The experiments whose `stage` model is this view's (same model key): who trains it once."""
        key = self.model_key(stage)
        return tuple(n for n in self.experiments() if self.view(n).model_key(stage) == key)

    def for_model(self, stage: str, key: str | None) -> Params:
        """The parameters that train the `stage` model of folder key `key` (the first experiment with it)."""
        root = self.base or self
        if key is None:
            return root
        for view in root.views.values():
            if view.model_key(stage) == key:
                return view
        raise ConfigError(
            f"--key {key}: no experiment trains a {stage} model with that key (the parameters changed since "
            "the DAG was planned?)"
        )

    def sizes(self) -> list[int]:
        """Working sizes the DAG produces: the backbone size, then the stage-3 size if any."""
        hr = self.preprocess.highres_size
        return [self.preprocess.size] + ([hr] if hr else [])

    def section(self, dotted: str) -> Any:
        """The raw value at a dotted key such as 'train.local'."""
        node: Any = self.raw
        for part in dotted.split("."):
            node = node[part]
        return node

    def used(self, stage: str, dataset: str | None = None, name: str | None = None) -> dict[str, Any]:
        """The params `stage` reads (STAGE_PARAMS), keyed by dotted name: what its run logs and hashes."""
        keys = [k.format(dataset=dataset, name=name) for k in STAGE_PARAMS[stage]]
        if stage == "download":  # a LIDC download does not depend on the phantom's settings, and so on
            kind = self.sources[dataset].download
            keys = [k for k in keys if k != "phantom" or kind == "phantom"]
            keys = [
                f"download.{kind}" if k == "download" else k
                for k in keys
                if k != "download" or kind in self.download
            ]
        return {k: self.section(k) for k in keys}

    def section_hash(self, *dotted: str) -> str:
        """Short stable hash of the named sections: the provenance of what a stage read."""
        blob = json.dumps({k: self.section(k) for k in sorted(dotted)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _schema() -> dict[str, Any]:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def _describe(error: jsonschema.ValidationError) -> tuple[str, str]:
    path = [str(p) for p in error.absolute_path]
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = set(error.schema.get("properties", {}))
        extra = sorted(k for k in error.instance if k not in known)
        if extra:
            allowed = ", ".join(sorted(known)) or "none"
            return ".".join(path + [extra[0]]), f"unknown key (allowed here: {allowed})"
    return ".".join(path) or "<top level>", error.message


def validate_dict(raw: dict[str, Any], origin: str = "params") -> None:
    """Raise ConfigError naming the key for the first schema or consistency problem in `raw`."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: expected a mapping at the top level, got {type(raw).__name__}")
    validator = jsonschema.Draft202012Validator(_schema())
    errors = sorted(
        validator.iter_errors(raw), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path)))
    )
    if errors:
        key, why = _describe(errors[0])
        raise ConfigError(f"{origin}: key '{key}': {why}")
    _check(raw, origin)


Problems = Iterator[tuple[str, str]]  # (dotted key, why) for each impossible combination found


def _check(raw: dict[str, Any], origin: str) -> None:
    """Raise ConfigError naming the key of the first impossible combination (_CHECKS, in order)."""
    for check in _CHECKS:
        for key, why in check(raw):
            raise ConfigError(f"{origin}: key '{key}': {why}")


def _datasets_have_sources(raw: dict[str, Any]) -> Problems:
    for name in raw["datasets"]:
        if name not in raw["sources"]:
            yield (
                f"sources.{name}",
                f"dataset {name!r} is listed in 'datasets' but has no entry under 'sources'",
            )


def _phantom_ranges(raw: dict[str, Any]) -> Problems:
    for key in ("phantom.fov_mm", "phantom.slice_thickness_mm"):
        lo, hi = _get(raw, key)
        if not 0 < lo <= hi:
            yield key, f"expected 0 < low <= high, got [{lo}, {hi}]"


def _preprocess_window_and_sizes(raw: dict[str, Any]) -> Problems:
    lo, hi = raw["preprocess"]["window"]
    if lo >= hi:
        yield "preprocess.window", f"low ({lo}) must be below high ({hi})"
    size, hr = raw["preprocess"]["size"], raw["preprocess"]["highres_size"]
    if hr is not None and hr != 2 * size:
        yield (
            "preprocess.highres_size",
            f"must be 2 x preprocess.size = {2 * size} (stage 3 doubles the backbone size), got {hr}",
        )


def _split_leaves_training(raw: dict[str, Any]) -> Problems:
    split = raw["split"]
    if split["val_fraction"] + split["test_fraction"] >= 1:
        yield "split", "val_fraction + test_fraction must leave cases for training (sum < 1)"


def _sampling_schedule(raw: dict[str, Any]) -> Problems:
    if raw["sample"]["k"] > raw["sample"]["steps"]:
        yield (
            "sample.k",
            f"the corrector jump k={raw['sample']['k']} exceeds sample.steps={raw['sample']['steps']}",
        )
    if raw["sample"]["steps"] > raw["diffusion"]["timesteps"]:
        yield "sample.steps", f"cannot exceed diffusion.timesteps={raw['diffusion']['timesteps']}"
    smp = raw["sample"]
    batches = -(-smp["n"] // max(1, smp["batch_size"]))
    if smp.get("shards", 1) > batches:
        yield (
            "sample.shards",
            f"{smp['shards']} shards but only {batches} batches to share (a shard gets whole "
            f"batches: ceil(sample.n / sample.batch_size) = ceil({smp['n']} / {smp['batch_size']}))",
        )


def _evaluation_weights(raw: dict[str, Any]) -> Problems:
    ev = raw["evaluate"]
    if ev.get("sha256") and not ev.get("weights"):
        yield "evaluate.sha256", "is set but evaluate.weights is not"
    # the paper's network is told apart by content: the public 23-dataset file, whatever it is called
    paper_weights = CONVENTIONS[raw.get("protocol", "project")].paper_weights
    if paper_weights and str(ev.get("sha256") or "").lower() == MEDICALNET_23DATASET_SHA256:
        yield (
            "evaluate.sha256",
            f"is the 23-dataset MedicalNet's (resnet_50_23dataset.pth); protocol: paper evaluates with "
            f"MedicalNet {PAPER_WEIGHTS_NAME} (the reference's evaluation README)",
        )


def _stage_models_match(raw: dict[str, Any]) -> Problems:
    local, glob = _variant(raw["train"]["local"]["model"]), _variant(raw["train"]["global"]["model"])
    if local and glob and local[1] != glob[1]:
        yield (
            "train.global.model",
            "must use the same patch size as train.local.model (stage 2 reuses stage 1's tokens)",
        )
    if local and glob and local[0] != glob[0]:
        yield (
            "train.global.model",
            f"must use the same size letter as train.local.model ({local[0]}): the two "
            "stages share the timestep embedding",
        )


def _experiments_leave_shards(raw: dict[str, Any]) -> Problems:
    for name, override in (raw.get("experiments") or {}).items():
        if "shards" in ((override or {}).get("sample") or {}):
            yield (
                f"experiments.{name}.sample.shards",
                "sampling jobs are scheduled for the whole project: set sample.shards at the top level",
            )


def _baselines(raw: dict[str, Any]) -> Problems:
    experiments = raw.get("experiments") or {}
    size, hr = raw["preprocess"]["size"], raw["preprocess"]["highres_size"]
    sizes = [size] + ([hr] if hr else [])
    for name, base in (raw.get("baselines") or {}).items():
        if name in experiments:
            yield (
                f"baselines.{name}",
                "is also an experiment's name (each row of the comparison has one name)",
            )
        if base["dataset"] not in raw["datasets"]:
            yield (
                f"baselines.{name}.dataset",
                f"{base['dataset']!r} is not one of 'datasets' {raw['datasets']}",
            )
        if base["size"] not in sizes:
            yield f"baselines.{name}.size", f"{base['size']} is not one of this config's sizes {sizes}"
        values = base["values"]
        if values != "hu" and not values[0] < values[1]:
            yield f"baselines.{name}.values", f"low ({values[0]}) must be below high ({values[1]})"


def _source_paths_and_downloads(raw: dict[str, Any]) -> Problems:
    for name, src in raw["sources"].items():
        if src["download"] != "none" and Path(src["path"]) != paths.raw(name):
            yield (
                f"sources.{name}.path",
                f"a dataset that prdit downloads or generates lives in data/raw/{name}; "
                "set download: none to use data you already have elsewhere",
            )
        if src["download"] in ("lidc-idri", "rad-chestct") and src["download"] not in raw.get("download", {}):
            yield (
                f"sources.{name}.download",
                f"no 'download.{src['download']}' section to take its settings from",
            )


_CHECKS: tuple[Callable[[dict[str, Any]], Problems], ...] = (
    _datasets_have_sources,
    _phantom_ranges,
    _preprocess_window_and_sizes,
    _split_leaves_training,
    _sampling_schedule,
    _evaluation_weights,
    _stage_models_match,
    _experiments_leave_shards,
    _baselines,
    _source_paths_and_downloads,
)


def _variant(model: str) -> tuple[str, str, str] | None:
    """('B', '12', '4') for 'PRDiT-B/12/4'; None for names of another shape (the registry judges those)."""
    parts = model.removeprefix("PRDiT-").split("/")
    return (parts[0], parts[1], parts[2]) if len(parts) == 3 else None


def _get(raw: dict[str, Any], dotted: str) -> Any:
    node: Any = raw
    for part in dotted.split("."):
        node = node[part]
    return node


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Merge `override` into a copy of `base`, recursing into mappings (Snakemake's configfile semantics)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class DuplicateKeyError(yaml.YAMLError):
    """A mapping in a YAML file repeats a key (YAML would keep the last one silently)."""

    def __init__(self, key: object, mark: yaml.Mark) -> None:
        super().__init__(f"duplicate key {key!r}")
        self.problem = f"duplicate key {key!r} (each key may appear once per mapping)"
        self.problem_mark = mark


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that rejects a key repeated in one mapping (a second top-level block would replace
    the first whole)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                repeated = key in seen
            except TypeError:  # an unhashable key: SafeLoader reports it itself
                continue
            if repeated:
                raise DuplicateKeyError(key, key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml_text(text: str) -> Any:
    """yaml.safe_load that rejects duplicated keys (DuplicateKeyError, a yaml.YAMLError with its line)."""
    return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = read_yaml_text(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: parameter file not found") from None
    except (OSError, UnicodeDecodeError) as exc:  # a folder, no permission, binary: one line naming it
        raise ConfigError(f"{path}: cannot read parameter file ({type(exc).__name__})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(f"{path}: not valid YAML{where}: {what}") from None
    if data is None:
        raise ConfigError(f"{path}: the parameter file is empty")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def load(
    path: str | Path | list[str | Path] = "params.yaml", overrides: dict[str, Any] | None = None
) -> Params:
    """Read, merge (later files win), validate and type one or more parameter files."""
    paths = [Path(p) for p in (path if isinstance(path, list) else [path])]
    raw: dict[str, Any] = {}
    for p in paths:
        raw = deep_merge(raw, _read_yaml(p))
    if overrides:
        raw = deep_merge(raw, overrides)
    return from_dict(raw, origin=" + ".join(map(str, paths)))


def from_dict(raw: dict[str, Any], origin: str = "params") -> Params:
    """Validate a plain mapping (e.g. Snakemake's `config`) and return its typed view."""
    raw = {"protocol": "project", **raw}  # prdit.protocol: the project's conventions unless `paper`
    validate_dict(raw, origin)
    stage = lambda d: TrainStage(**d)  # noqa: E731
    tr = raw["train"]
    params = Params(
        experiment=raw["experiment"],
        tracking_uri=raw.get("tracking_uri"),
        datasets=tuple(raw["datasets"]),
        sources={k: Source(**v) for k, v in raw["sources"].items()},
        phantom=Phantom(
            **{
                **raw["phantom"],
                "fov_mm": tuple(raw["phantom"]["fov_mm"]),
                "slice_thickness_mm": tuple(raw["phantom"]["slice_thickness_mm"]),
            }
        ),
        ingest=Ingest(**{**raw["ingest"], "min_extent_mm": tuple(raw["ingest"]["min_extent_mm"])}),
        preprocess=Preprocess(**{**raw["preprocess"], "window": tuple(raw["preprocess"]["window"])}),
        split=Split(**raw["split"]),
        diffusion=Diffusion(**raw["diffusion"]),
        train=Train(
            common=TrainCommon(**tr["common"]),
            local=stage(tr["local"]),
            global_=stage(tr["global"]),
            highres=stage(tr["highres"]),
        ),
        sample=Sample(**raw["sample"]),
        evaluate=Evaluate(**raw["evaluate"]),
        download={
            k: Downloader(**{**v, "patients": tuple(v.get("patients", ()))})
            for k, v in raw.get("download", {}).items()
        },
        raw=copy.deepcopy(raw),
        baselines={
            k: Baseline(
                **{
                    **v,
                    "values": v["values"] if v["values"] == "hu" else tuple(v["values"]),
                    "flip": tuple(v.get("flip", ())),
                }
            )
            for k, v in raw.get("baselines", {}).items()
        },
        protocol=raw["protocol"],
        conventions=CONVENTIONS[raw["protocol"]],
        resources=copy.deepcopy(raw.get("resources", {})),
    )
    for name, override in (raw.get("experiments") or {}).items():
        merged = deep_merge(raw, override or {})
        # what an experiment may override (train, diffusion, sample: the data, the protocol and the
        # evaluation stay the project's) is the schema's; its errors name the experiment through `origin`
        view = from_dict(
            {k: v for k, v in merged.items() if k != "experiments"}, origin=f"{origin}: experiments.{name}"
        )
        object.__setattr__(view, "raw", merged)
        object.__setattr__(view, "exp_name", name)
        object.__setattr__(view, "base", params)
        params.views[name] = view
    return params
