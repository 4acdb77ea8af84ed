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
PARAMS_ARG = " ".join(f"--params {f}" for f in PARAM_FILES)
SIZE = PARAMS.preprocess.size
HIGHRES = PARAMS.preprocess.highres_size
CONDA_ENV = "../../envs/prdit.yaml"
EXTRACTOR_WEIGHTS = [PARAMS.evaluate.weights] if PARAMS.evaluate.weights else []


wildcard_constraints:
    dataset="|".join(PARAMS.datasets),


def used(stage):
    """The params a stage reads (prdit.config.STAGE_PARAMS): a change to them re-runs the rule."""
    return lambda wildcards: PARAMS.used(stage, wildcards.get("dataset"))
