# Sampling at the backbone size uses the stage-2 model; at the stage-3 size, the highres model
# (which carries its frozen backbone).


rule sample_base:
    input:
        model="models/{dataset}/global/model.pt",
    output:
        directory(f"samples/{{dataset}}/{SIZE}"),
    log:
        f"logs/sample/{{dataset}}.{SIZE}.log",
    benchmark:
        f"logs/benchmarks/sample/{{dataset}}.{SIZE}.tsv"
    conda:
        CONDA_ENV
    threads: 4
    resources:
        mem_mb=32000,
        runtime=12 * 60,
        gpu=1,
    params:
        args=PARAMS_ARG,
        size=SIZE,
        used=used("sample"),
    shell:
        "prdit sample {params.args} --dataset {wildcards.dataset} --size {params.size} > {log} 2>&1"


rule sample_highres:
    input:
        model="models/{dataset}/highres/model.pt",
    output:
        directory(f"samples/{{dataset}}/{HIGHRES}"),
    log:
        f"logs/sample/{{dataset}}.{HIGHRES}.log",
    benchmark:
        f"logs/benchmarks/sample/{{dataset}}.{HIGHRES}.tsv"
    conda:
        CONDA_ENV
    threads: 4
    resources:
        mem_mb=64000,
        runtime=24 * 60,
        gpu=1,
    params:
        args=PARAMS_ARG,
        size=HIGHRES,
        used=used("sample"),
    shell:
        "prdit sample {params.args} --dataset {wildcards.dataset} --size {params.size} > {log} 2>&1"
