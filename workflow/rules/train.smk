# The three training stages. model.pt holds EMA weights + config + provenance; last.pt beside it is the
# resumable checkpoint that survives a killed or preempted job (Snakemake deletes only model.pt).
# `prdit train` exits 75 after a SIGTERM/SIGUSR1 checkpoint; `retries` re-runs it and it resumes from last.pt.
# Logs are appended so the attempts before a preemption stay readable.


rule train_local:
    input:
        data="data/processed/{dataset}",
        splits=rules.split.output,
    output:
        model="models/{dataset}/local/model.pt",
        metrics="models/{dataset}/local/metrics.json",
    log:
        "logs/train/{dataset}.local.log",
    benchmark:
        "logs/benchmarks/train/{dataset}.local.tsv"
    retries: 3
    conda:
        CONDA_ENV
    threads: 8
    resources:
        mem_mb=64000,
        runtime=72 * 60,
        gpu=1,
    params:
        args=PARAMS_ARG,
        used=used("train-local"),
    shell:
        "prdit train {params.args} --dataset {wildcards.dataset} --stage local >> {log} 2>&1"


rule train_global:
    input:
        data="data/processed/{dataset}",
        splits=rules.split.output,
        parent="models/{dataset}/local/model.pt",
    output:
        model="models/{dataset}/global/model.pt",
        metrics="models/{dataset}/global/metrics.json",
    log:
        "logs/train/{dataset}.global.log",
    benchmark:
        "logs/benchmarks/train/{dataset}.global.tsv"
    retries: 3
    conda:
        CONDA_ENV
    threads: 8
    resources:
        mem_mb=64000,
        runtime=72 * 60,
        gpu=1,
    params:
        args=PARAMS_ARG,
        used=used("train-global"),
    shell:
        "prdit train {params.args} --dataset {wildcards.dataset} --stage global >> {log} 2>&1"


rule train_highres:
    input:
        data="data/processed/{dataset}",
        splits=rules.split.output,
        parent="models/{dataset}/global/model.pt",
    output:
        model="models/{dataset}/highres/model.pt",
        metrics="models/{dataset}/highres/metrics.json",
    log:
        "logs/train/{dataset}.highres.log",
    benchmark:
        "logs/benchmarks/train/{dataset}.highres.tsv"
    retries: 3
    conda:
        CONDA_ENV
    threads: 8
    resources:
        mem_mb=64000,
        runtime=72 * 60,
        gpu=1,
    params:
        args=PARAMS_ARG,
        used=used("train-highres"),
    shell:
        "prdit train {params.args} --dataset {wildcards.dataset} --stage highres >> {log} 2>&1"
