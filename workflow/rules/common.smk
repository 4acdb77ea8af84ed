# Everything the rules compute: parameters, paths of the stages' inputs, resources. The rules themselves
# (data.smk, train.smk, sample.smk, evaluate.smk) only declare files and call `prdit <command>`.
import os

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from prdit import paths
from prdit.config import load, from_dict
from prdit.plan import limits

# The prdit commands read the same files Snakemake merged; `--config KEY=VALUE` would not reach them.
PARAM_FILES = ["params.yaml"] + [
    f
    for f in workflow.overwrite_configfiles
    if os.path.abspath(f) != os.path.abspath("params.yaml")
]
# Read through prdit.config first: it rejects a duplicated key (file, line, key), which Snakemake's own
# reading of --configfile keeps silently (the last one wins).
FROM_FILES = load(PARAM_FILES)
validate(config, "../schemas/params.schema.yaml")
PARAMS = from_dict(config, origin="snakemake config")
if FROM_FILES.raw != PARAMS.raw:
    raise ValueError(
        "prdit rules read their parameters from files: put overrides in a YAML file and pass it with "
        "--configfile, not --config"
    )
# Those files reach every `prdit` command through the environment (PRDIT_PARAM_FILES, read by prdit/cli.py),
# never through the rules' `params:` or shell text: Snakemake re-runs a job whose params changed, and which
# files the values came from is no reason to. What a rule reads is its `params.used` (the values, wherever
# they were set), so an override file re-runs exactly the rules that read what it changes. The shell commands
# are then exactly dvc.yaml's. Under a cluster executor each job re-reads this file with the same
# --configfiles, and sets the variable again (set, not read: no `envvars:` to assert).
os.environ.update(PRDIT_PARAM_FILES=os.pathsep.join(map(str, PARAM_FILES)))

# Data you already have (`download: none`) must be where `path` says before any job runs: the download job
# of a mistyped path would otherwise start, and Snakemake removes a job's old outputs (manifest.csv) before
# it runs, so fixing the typo would re-run every stage downstream. Checked where the workflow is planned.
if not workflow.remote_exec:
    for name in PARAMS.datasets:
        source = PARAMS.sources[name]
        if source.download == "none" and not os.path.exists(source.path):
            raise WorkflowError(
                f"sources.{name}.path: {source.path} does not exist (download: none reads your copy of the "
                "data there); fix the path, or set download: to fetch it"
            )

# The files of every stage, as patterns of prdit.paths (the one module that knows the layout; dvc.yaml spells
# the same paths, which tests/test_parity.py checks).
MANIFEST = str(paths.manifest("{dataset}"))
INTERIM = str(paths.interim("{dataset}"))
INGEST_PLAN = str(paths.shards(paths.interim("{dataset}")) / "plan.json")
INGEST_SHARD = str(paths.shards(paths.interim("{dataset}")) / "{shard}.csv")
PROCESSED = str(paths.processed("{dataset}"))
PREPROCESS_SHARD = str(paths.shards(paths.processed("{dataset}")) / "{shard}.csv")
SPLIT_PARTS = ("train", "val", "test")
SPLITS = [str(paths.splits("{dataset}", part)) for part in SPLIT_PARTS]
MODEL = str(paths.model_file("{dataset}", "{stage}"))
TRAIN_METRICS = str(paths.model_dir("{dataset}", "{stage}") / "metrics.json")
SAMPLES = str(paths.samples("{dataset}", "{size}"))
SAMPLE_SHARD = str(paths.shards(paths.samples("{dataset}", "{size}")) / "{shard}")
METRICS = str(paths.metrics("{dataset}", "{size}"))
REPORT = str(paths.reports("{dataset}", "{size}"))

SIZE = PARAMS.preprocess.size
HIGHRES = PARAMS.preprocess.highres_size
SIZES = PARAMS.sizes()
CONDA_ENV = "../../envs/prdit.yaml"
EXTRACTOR_WEIGHTS = [PARAMS.evaluate.weights] if PARAMS.evaluate.weights else []
INGEST_SHARDS = PARAMS.ingest.shards
PREPROCESS_SHARDS = PARAMS.preprocess.shards
SAMPLE_SHARDS = PARAMS.sample.shards
TRAIN_STAGES = ("local", "global", "highres") if HIGHRES else ("local", "global")
# Stage 2 trains on the frozen stage 1, stage 3 on the frozen stage 2.
PARENT_STAGE = {"global": "local", "highres": "global"}


wildcard_constraints:
    dataset="|".join(PARAMS.datasets),
    stage="|".join(TRAIN_STAGES),
    size="|".join(str(s) for s in SIZES),
    shard=r"\d+",


def _canonical(value):
    """Dicts with sorted keys, all the way down: Snakemake compares params by repr, and an override file
    that repeats a value must not re-run anything because merging put its key first."""
    if isinstance(value, dict):
        return {k: _canonical(value[k]) for k in sorted(value)}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


def used(stage):
    """The params a stage reads (prdit.config.STAGE_PARAMS): a change to them, and only that, re-runs the
    rule. `stage` may be a function of the wildcards (the training stage)."""

    def values(wildcards):
        name = stage(wildcards) if callable(stage) else stage
        return _canonical(PARAMS.used(name, wildcards.get("dataset")))

    return values


# ------------------------------------------------------------------------------------------- data stages
def ingest_shards(wildcards):
    """ingest.shards = N > 1: the plan and the N shard tables the assembly waits for."""
    if INGEST_SHARDS == 1:
        return []
    shards = expand(INGEST_SHARD, dataset=wildcards.dataset, shard=range(INGEST_SHARDS))
    return [INGEST_PLAN.format(dataset=wildcards.dataset), *shards]


def ingest_plan_arg(wildcards):
    if INGEST_SHARDS == 1:
        return ""
    return f"--plan {INGEST_PLAN.format(dataset=wildcards.dataset)}"


def preprocess_shards(wildcards):
    if PREPROCESS_SHARDS == 1:
        return []
    return expand(
        PREPROCESS_SHARD, dataset=wildcards.dataset, shard=range(PREPROCESS_SHARDS)
    )


# ------------------------------------------------------------------------------------------- training
def train_inputs(wildcards):
    """The dataset, its split, and for stages 2 and 3 the frozen parent model."""
    inputs = {
        "data": PROCESSED.format(dataset=wildcards.dataset),
        "splits": expand(SPLITS, dataset=wildcards.dataset),
    }
    if wildcards.stage in PARENT_STAGE:
        inputs["parent"] = MODEL.format(
            dataset=wildcards.dataset, stage=PARENT_STAGE[wildcards.stage]
        )
    return inputs


def train_stage(wildcards):
    return f"train-{wildcards.stage}"


def train_resource(name):
    """resources.train.<stage>.<name> of the params files: GPUs and nodes per training stage (default 1).
    No stage reads them, so changing them never re-runs a job; the profile's set-resources of rule `train`
    applies to every stage."""

    def value(wildcards):
        stages = PARAMS.raw.get("resources", {}).get("train", {})
        return stages.get(wildcards.stage, {}).get(name, 1)

    return value


TRAIN_MAX_THREADS = 64  # CPUs per node a training job asks for at most


def train_threads(wildcards):
    """CPUs per node of a training job (`prdit launch --cpus`, SLURM --cpus-per-task): each GPU process
    and its train.common.num_workers loader workers, one CPU each, at most TRAIN_MAX_THREADS; the
    profile's set-threads wins."""
    gpus = int(train_resource("gpu")(wildcards))
    nodes = int(train_resource("nodes")(wildcards))
    per_node = max(1, -(-gpus // nodes))
    return min(TRAIN_MAX_THREADS, per_node * (PARAMS.train.common.num_workers + 1))


# ------------------------------------------------------------------------------------------- sampling
def sample_model(wildcards):
    """The backbone size samples from the stage-2 model, the stage-3 size from the highres model (which
    carries its frozen backbone)."""
    stage = "global" if int(wildcards.size) == SIZE else "highres"
    return MODEL.format(dataset=wildcards.dataset, stage=stage)


def sample_output():
    if SAMPLE_SHARDS == 1:
        return directory(SAMPLES)
    return temp(directory(SAMPLE_SHARD))


def sample_tag():
    """The log/benchmark name of one sampling job (the shard wildcard when sharded)."""
    return "{dataset}.{size}" if SAMPLE_SHARDS == 1 else "{dataset}.{size}.shard{shard}"


def shard_arg(wildcards):
    return f"--shard {wildcards.shard}" if SAMPLE_SHARDS > 1 else ""


def sample_shards(wildcards):
    return expand(
        SAMPLE_SHARD,
        dataset=wildcards.dataset,
        size=wildcards.size,
        shard=range(SAMPLE_SHARDS),
    )


# The data rules' resources (threads, mem_mb, runtime in minutes), one row per rule; the GPU rules' come
# from job_limit below, and a profile's set-threads / set-resources wins. The ingest and preprocess jobs
# are per-case pools of `threads` processes (dvc.yaml passes the same --threads).
DATA_JOBS = {
    "download": dict(threads=4, mem_mb=2000, runtime=24 * 60),
    "ingest_plan": dict(threads=8, mem_mb=8000, runtime=2 * 60),
    "ingest_shard": dict(threads=8, mem_mb=16000, runtime=6 * 60),
    "ingest": dict(threads=8, mem_mb=16000, runtime=6 * 60),
    "preprocess_shard": dict(threads=8, mem_mb=16000, runtime=6 * 60),
    "preprocess": dict(threads=8, mem_mb=16000, runtime=6 * 60),
    "split": dict(threads=1, mem_mb=1000, runtime=10),
}


def job_limit(rule, kind):
    """resources.runtime (minutes) or mem_mb of a GPU rule: prdit/plan/limits.py, the limits `prdit plan`
    checks each job's work against (the stage-3 size and stage have their own)."""
    value = limits.runtime_min if kind == "runtime" else limits.mem_mb

    def of(wildcards):
        size = getattr(wildcards, "size", None)
        highres = getattr(wildcards, "stage", None) == "highres"
        return value(rule, highres or (size is not None and int(size) == HIGHRES))

    return of
