from snakemake.utils import validate

from prdit.config import STAGE_PARAMS, deep_merge, from_dict, load

validate(config, "../schemas/params.schema.yaml")
PARAMS = from_dict(config, origin="snakemake config")

# The prdit commands read the same files Snakemake merged; `--config KEY=VALUE` would not reach them.
PARAM_FILES = ["params.yaml"] + [
    f
    for f in workflow.overwrite_configfiles
    if os.path.abspath(f) != os.path.abspath("params.yaml")
]
if load(PARAM_FILES).raw != PARAMS.raw:
    raise ValueError(
        "prdit rules read their parameters from files: put overrides in a YAML file and pass it with "
        "--configfile, not --config"
    )
# Those files as `prdit` options. Rules put them straight in their shell command, `prdit <command>
# {PRDIT_PARAMS:q} ...` (each word shell-quoted), never under `params:`: Snakemake re-runs a job whose params
# changed, and which files the values came from is no reason to. What a rule reads is its `params.used`
# (the values, wherever they were set), so an override file re-runs exactly the rules that read what it
# changes. Under a cluster executor each job re-reads the Snakefile with the same --configfiles.
PRDIT_PARAMS = [word for f in PARAM_FILES for word in ("--params", f)]
SIZE = PARAMS.preprocess.size
HIGHRES = PARAMS.preprocess.highres_size
CONDA_ENV = "../../envs/prdit.yaml"
EXTRACTOR_WEIGHTS = [PARAMS.evaluate.weights] if PARAMS.evaluate.weights else []


wildcard_constraints:
    dataset="|".join(PARAMS.datasets),


def _canonical(value):
    """Dicts with sorted keys, all the way down: Snakemake compares params by repr, and an override file
    that repeats a value must not re-run anything because merging put its key first."""
    if isinstance(value, dict):
        return {k: _canonical(value[k]) for k in sorted(value)}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


def used(stage):
    """The params a stage reads (prdit.config.STAGE_PARAMS): a change to them, and only that, re-runs the rule."""
    return lambda wildcards: _canonical(PARAMS.used(stage, wildcards.get("dataset")))
