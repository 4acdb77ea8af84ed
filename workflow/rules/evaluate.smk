# Metrics against the real held-out volumes, with the real-vs-real floor beside them.


rule evaluate_base:
    input:
        samples=f"samples/{{dataset}}/{SIZE}",
        data="data/processed/{dataset}",
        splits=rules.split.output,
    output:
        metrics=f"metrics/{{dataset}}/{SIZE}.json",
        report=directory(f"reports/{{dataset}}/{SIZE}"),
    log:
        f"logs/evaluate/{{dataset}}.{SIZE}.log",
    benchmark:
        f"logs/benchmarks/evaluate/{{dataset}}.{SIZE}.tsv"
    conda:
        CONDA_ENV
    threads: 4
    resources:
        mem_mb=32000,
        runtime=6 * 60,
        gpu=1,
    params:
        args=PARAMS_ARG,
        size=SIZE,
        used=used("evaluate"),
    shell:
        "prdit evaluate {params.args} --dataset {wildcards.dataset} --size {params.size} > {log} 2>&1"


rule evaluate_highres:
    input:
        samples=f"samples/{{dataset}}/{HIGHRES}",
        data="data/processed/{dataset}",
        splits=rules.split.output,
    output:
        metrics=f"metrics/{{dataset}}/{HIGHRES}.json",
        report=directory(f"reports/{{dataset}}/{HIGHRES}"),
    log:
        f"logs/evaluate/{{dataset}}.{HIGHRES}.log",
    benchmark:
        f"logs/benchmarks/evaluate/{{dataset}}.{HIGHRES}.tsv"
    conda:
        CONDA_ENV
    threads: 4
    resources:
        mem_mb=32000,
        runtime=6 * 60,
        gpu=1,
    params:
        args=PARAMS_ARG,
        size=HIGHRES,
        used=used("evaluate"),
    shell:
        "prdit evaluate {params.args} --dataset {wildcards.dataset} --size {params.size} > {log} 2>&1"
