# PRDiT pipeline: raw chest CT -> HU volumes -> preprocessed cubes -> 3 training stages -> samples -> metrics.
# Every rule calls one `prdit <command>`; the logic lives in the prdit package.


configfile: "params.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/sample.smk"
include: "workflow/rules/evaluate.smk"


rule all:
    default_target: True
    input:
        final_targets(),


# One MLflow pipeline run per invocation that has work to do: the stage runs nest under it (PRDIT_PIPELINE_RUN,
# inherited by the jobs). Never in the way: with tracking off or MLflow unreachable the stages run unnested.
onstart:
    from prdit import tracking

    tracking.start_pipeline_run(PARAMS, PARAM_FILES, command="snakemake")


onsuccess:
    from prdit import tracking

    tracking.end_pipeline_run(PARAMS, "FINISHED")


onerror:
    from prdit import tracking

    tracking.end_pipeline_run(PARAMS, "FAILED")
