localrules:
    download,


rule download:
    output:
        "data/raw/{dataset}/manifest.csv",
    log:
        "logs/download/{dataset}.log",
    benchmark:
        "logs/benchmarks/download/{dataset}.tsv"
    conda:
        CONDA_ENV
    threads: 4
    resources:
        mem_mb=2000,
        runtime=24 * 60,
    params:
        args=PARAMS_ARG,
        used=used("download"),
    shell:
        "prdit download {params.args} --dataset {wildcards.dataset} > {log} 2>&1"


rule ingest:
    input:
        "data/raw/{dataset}/manifest.csv",
    output:
        directory("data/interim/{dataset}"),
    log:
        "logs/ingest/{dataset}.log",
    benchmark:
        "logs/benchmarks/ingest/{dataset}.tsv"
    conda:
        CONDA_ENV
    threads: 8
    resources:
        mem_mb=16000,
        runtime=6 * 60,
    params:
        args=PARAMS_ARG,
        used=used("ingest"),
    shell:
        "prdit ingest {params.args} --dataset {wildcards.dataset} --threads {threads} > {log} 2>&1"


rule preprocess:
    input:
        "data/interim/{dataset}",
    output:
        directory("data/processed/{dataset}"),
    log:
        "logs/preprocess/{dataset}.log",
    benchmark:
        "logs/benchmarks/preprocess/{dataset}.tsv"
    conda:
        CONDA_ENV
    threads: 8
    resources:
        mem_mb=16000,
        runtime=6 * 60,
    params:
        args=PARAMS_ARG,
        used=used("preprocess"),
    shell:
        "prdit preprocess {params.args} --dataset {wildcards.dataset} --threads {threads} > {log} 2>&1"


rule split:
    input:
        "data/processed/{dataset}",
    output:
        expand("data/splits/{{dataset}}/{part}.txt", part=("train", "val", "test")),
    log:
        "logs/split/{dataset}.log",
    benchmark:
        "logs/benchmarks/split/{dataset}.tsv"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        args=PARAMS_ARG,
        used=used("split"),
    shell:
        "prdit split {params.args} --dataset {wildcards.dataset} > {log} 2>&1"
