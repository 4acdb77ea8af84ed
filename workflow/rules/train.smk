# The three training stages. model.pt holds EMA weights + config + provenance; last.pt beside it is the
# resumable checkpoint that survives a killed or preempted job (Snakemake deletes only model.pt).
# `prdit train` exits 75 after a SIGTERM/SIGUSR1 checkpoint; the profiles' `retries` resubmit the job and it
# resumes from last.pt (a rule-level `retries:` would also restart inside a SLURM allocation about to end).
# torchrun starts one process per GPU the rule asks for (resources.gpu; raise it in the profile). `exec` lets
# SLURM's warning signal reach the trainer instead of killing the shell. Logs are appended across attempts.


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
    conda:
        CONDA_ENV
    threads: 8
    resources:
        mem_mb=64000,
        runtime=72 * 60,
        gpu=1,
    params:
        used=used("train-local"),
    shell:
        "exec torchrun --no-python --standalone --nproc-per-node {resources.gpu} --shutdown-timeout 300 "
        "prdit train {PRDIT_PARAMS:q} --dataset {wildcards.dataset} --stage local >> {log} 2>&1"


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
    conda:
        CONDA_ENV
    threads: 8
    resources:
        mem_mb=64000,
        runtime=72 * 60,
        gpu=1,
    params:
        used=used("train-global"),
    shell:
        "exec torchrun --no-python --standalone --nproc-per-node {resources.gpu} --shutdown-timeout 300 "
        "prdit train {PRDIT_PARAMS:q} --dataset {wildcards.dataset} --stage global >> {log} 2>&1"


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
    conda:
        CONDA_ENV
    threads: 8
    resources:
        mem_mb=64000,
        runtime=72 * 60,
        gpu=1,
    params:
        used=used("train-highres"),
    shell:
        "exec torchrun --no-python --standalone --nproc-per-node {resources.gpu} --shutdown-timeout 300 "
        "prdit train {PRDIT_PARAMS:q} --dataset {wildcards.dataset} --stage highres >> {log} 2>&1"
