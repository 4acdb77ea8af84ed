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
        expand(
            "metrics/{dataset}/{size}.json",
            dataset=PARAMS.datasets,
            size=PARAMS.sizes(),
        ),
