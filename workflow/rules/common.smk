# Everything the rules compute: parameters, paths of the stages' inputs, resources. The rules themselves
# (data.smk, train.smk, sample.smk, evaluate.smk) only declare files and call `prdit <command>`.
import os

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from prdit import paths, topology
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
# the same paths, which tests/workflow/test_parity.py checks).
MANIFEST = str(paths.manifest("{dataset}"))
INTERIM = str(paths.interim("{dataset}"))
INGEST_PLAN = str(paths.shards(paths.interim("{dataset}")) / "plan.json")
INGEST_SHARD = str(paths.shards(paths.interim("{dataset}")) / "{shard}.csv")
PROCESSED = str(paths.processed("{dataset}"))
PREPROCESS_SHARD = str(paths.shards(paths.processed("{dataset}")) / "{shard}.csv")
SPLIT_PARTS = ("train", "val", "test")
SPLITS = [str(paths.splits("{dataset}", part)) for part in SPLIT_PARTS]
# Named experiments (params `experiments:`, docs/design.md "Experiments"): samples, metrics and reports of
# each under its name ({experiment}); without the section the layout has no such level. A model folder
# ({model}) is its stage, or "<stage>-<key>" for an experiment whose stage reads other values than the
# project's own (Params.model_key): experiments with equal keys share the model, so it trains once.
EXPERIMENTS = PARAMS.experiments()
BASELINES = PARAMS.baselines
NAME = "{experiment}" if EXPERIMENTS else None
MODEL = str(paths.model_file("{dataset}", "{model}"))
TRAIN_METRICS = str(paths.model_dir("{dataset}", "{model}") / "metrics.json")
SAMPLES = str(paths.samples("{dataset}", "{size}", NAME))
SAMPLE_SHARD = str(paths.shards(paths.samples("{dataset}", "{size}", NAME)) / "{shard}")
METRICS = str(paths.metrics("{dataset}", "{size}", NAME))
REPORT = str(paths.reports("{dataset}", "{size}", NAME))
BASELINE_METRICS = str(paths.metrics("{dataset}", "{size}", "{baseline}"))
BASELINE_REPORT = str(paths.reports("{dataset}", "{size}", "{baseline}"))
COMPARE = str(paths.compare("{dataset}", "{size}"))

SIZE = PARAMS.preprocess.size
HIGHRES = PARAMS.preprocess.highres_size
SIZES = PARAMS.sizes()
CONDA_ENV = "../../envs/prdit.yaml"
EXTRACTOR_WEIGHTS = [PARAMS.evaluate.weights] if PARAMS.evaluate.weights else []
INGEST_SHARDS = PARAMS.ingest.shards
PREPROCESS_SHARDS = PARAMS.preprocess.shards
SAMPLE_SHARDS = PARAMS.sample.shards
TRAIN_STAGES = topology.present(HIGHRES)


wildcard_constraints:
    dataset="|".join(PARAMS.datasets),
    model=f"({'|'.join(TRAIN_STAGES)})(-[0-9a-f]{{12}})?",
    size="|".join(str(s) for s in SIZES),
    shard=r"\d+",
    experiment="|".join(EXPERIMENTS) or "(?!)",
    baseline="|".join(BASELINES) or "(?!)",


def view(wildcards):
    """The parameters of the job's experiment (the project's own without `experiments:`)."""
    return PARAMS.view(wildcards.get("experiment"))


def model_name(p, stage):
    """The {model} wildcard of `stage` under parameters `p`: the stage, or "<stage>-<key>"."""
    return paths.model_name(stage, p.model_key(stage))


def model_stage(wildcards):
    return wildcards.model.split("-", 1)[0]


def model_key(wildcards):
    return wildcards.model.split("-", 1)[1] if "-" in wildcards.model else None


def model_view(wildcards):
    """The parameters that train the job's model: the first experiment whose stage has that key."""
    return PARAMS.for_model(model_stage(wildcards), model_key(wildcards))


def experiment_arg(wildcards):
    """`--experiment NAME` for a job of a named experiment; nothing without `experiments:`."""
    name = wildcards.get("experiment")
    return f"--experiment {name}" if name else ""


def key_arg(wildcards):
    key = model_key(wildcards)
    return f"--key {key}" if key else ""


def final_targets():
    """Every dataset's metrics at every size (per experiment), the baselines' and the comparisons."""
    targets = expand(
        METRICS, dataset=PARAMS.datasets, size=SIZES, experiment=EXPERIMENTS or [None]
    )
    for name, b in BASELINES.items():
        targets.append(
            BASELINE_METRICS.format(dataset=b.dataset, size=b.size, baseline=name)
        )
    if EXPERIMENTS or BASELINES:
        targets += expand(COMPARE, dataset=PARAMS.datasets, size=SIZES)
    return targets


def _canonical(value):
    """Dicts with sorted keys, all the way down: Snakemake compares params by repr, and an override file
    that repeats a value must not re-run anything because merging put its key first."""
    if isinstance(value, dict):
        return {k: _canonical(value[k]) for k in sorted(value)}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


def used(stage, params=view):
    """The params a stage reads (prdit.config.STAGE_PARAMS) under the job's parameters (`params` of the
    wildcards: its experiment's): a change to them, and only that, re-runs the rule. `stage` may be a
    function of the wildcards (the training stage)."""

    def values(wildcards):
        name = stage(wildcards) if callable(stage) else stage
        p = params(wildcards)
        return _canonical(
            p.used(name, wildcards.get("dataset"), wildcards.get("baseline"))
        )

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
    parent = topology.parent(model_stage(wildcards))
    if parent is not None:
        inputs["parent"] = MODEL.format(
            dataset=wildcards.dataset, model=model_name(model_view(wildcards), parent)
        )
    return inputs


def train_stage(wildcards):
    return f"train-{model_stage(wildcards)}"


def train_resource(name):
    """resources.train.<stage>.<name> of the params files: GPUs and nodes per training stage (default 1).
    No stage reads them, so changing them never re-runs a job; the profile's set-resources of rule `train`
    applies to every stage."""

    def value(wildcards):
        stages = PARAMS.resources.get("train", {})
        return stages.get(model_stage(wildcards), {}).get(name, 1)

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
    """The model that generates the size (prdit.topology: the backbone size from the stage-2 model, the
    stage-3 size from the highres model, which carries its frozen backbone), of the job's experiment.
    """
    stage = topology.sampler(int(wildcards.size), SIZE, HIGHRES)
    return MODEL.format(
        dataset=wildcards.dataset, model=model_name(view(wildcards), stage)
    )


def sample_output():
    if SAMPLE_SHARDS == 1:
        return directory(SAMPLES)
    return temp(directory(SAMPLE_SHARD))


def job_tag():
    """The log/benchmark name of one job of a size: "{dataset}[.{experiment}].{size}"."""
    return "{dataset}.{experiment}.{size}" if EXPERIMENTS else "{dataset}.{size}"


def sample_tag():
    """The log/benchmark name of one sampling job (the shard wildcard when sharded)."""
    return job_tag() if SAMPLE_SHARDS == 1 else job_tag() + ".shard{shard}"


def shard_arg(wildcards):
    return f"--shard {wildcards.shard}" if SAMPLE_SHARDS > 1 else ""


def sample_shards(wildcards):
    return expand(
        SAMPLE_SHARD,
        dataset=wildcards.dataset,
        size=wildcards.size,
        experiment=[wildcards.get("experiment")],
        shard=range(SAMPLE_SHARDS),
    )


# ------------------------------------------------------------------------------------------- comparison
def compare_rows(wildcards):
    """The rows of one comparison: each experiment (or the project's own model), then each baseline of
    this dataset and size."""
    rows = [(METRICS, REPORT, {"experiment": e}) for e in EXPERIMENTS or [None]]
    rows += [
        (BASELINE_METRICS, BASELINE_REPORT, {"baseline": name})
        for name, b in BASELINES.items()
        if b.dataset == wildcards.dataset and b.size == int(wildcards.size)
    ]
    return rows


def compare_inputs(wildcards):
    """Every row's metrics and mid-slices, which `prdit compare` reads."""
    inputs = []
    for metrics, report, names in compare_rows(wildcards):
        fill = dict(dataset=wildcards.dataset, size=wildcards.size, **names)
        inputs += [metrics.format(**fill), f"{report}/mid_slices.npz".format(**fill)]
    return inputs


def baseline_path(wildcards):
    return BASELINES[wildcards.baseline].path


# The data rules' resources (threads, mem_mb, runtime in minutes): prdit/plan/limits.py DATA_JOBS, one row
# per rule (dvc.yaml passes the same --threads); a profile's set-threads / set-resources wins.
DATA_JOBS = limits.DATA_JOBS


def job_limit(rule, kind):
    """resources.runtime (minutes) or mem_mb of a GPU rule: prdit/plan/limits.py, the limits `prdit plan`
    checks each job's work against (the stage-3 size and stage have their own)."""
    value = limits.runtime_min if kind == "runtime" else limits.mem_mb

    def of(wildcards):
        size = getattr(wildcards, "size", None)
        highres = "model" in wildcards.keys() and model_stage(wildcards) == "highres"
        return value(rule, highres or (size is not None and int(size) == HIGHRES))

    return of
