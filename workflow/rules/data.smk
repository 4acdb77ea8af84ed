# Downloads run where Snakemake runs (login nodes have the internet access compute nodes often lack).
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
        used=used("download"),
    shell:
        "prdit download --dataset {wildcards.dataset} > {log} 2>&1"


# Ingest and preprocess compute each case once per (inputs, params) into the per-case cache
# .prdit/cache/ (prdit/data/cache.py) and assemble their output folder from it: a new or changed case,
# or a re-run after a kill, computes only the cases not in the cache. With ingest.shards /
# preprocess.shards = N > 1 the cases are spread over N jobs (rules ingest_shard / preprocess_shard,
# every N-th case each; under SLURM N sbatch jobs, e.g. 20 for ~1,000 series), which fill the cache;
# rule ingest / preprocess then assembles the folder (and qc.csv of every case) from the cache.
# ingest_plan discovers the DICOM series once for all of them. N = 1 (the default) is one job.


rule ingest:
    input:
        "data/raw/{dataset}/manifest.csv",
        ingest_shards,
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
        plan=ingest_plan_arg,
        used=used("ingest"),
    shell:
        "prdit ingest --dataset {wildcards.dataset} {params.plan} --threads {threads} > {log} 2>&1"


rule preprocess:
    input:
        "data/interim/{dataset}",
        preprocess_shards,
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
        used=used("preprocess"),
    shell:
        "prdit preprocess --dataset {wildcards.dataset} --threads {threads} > {log} 2>&1"


if INGEST_SHARDS > 1:

    # Discovery (DICOM headers of every file) once, for every shard and the assembly.
    rule ingest_plan:
        input:
            "data/raw/{dataset}/manifest.csv",
        output:
            temp("data/interim/{dataset}.shards/plan.json"),
        log:
            "logs/ingest/{dataset}.plan.log",
        benchmark:
            "logs/benchmarks/ingest/{dataset}.plan.tsv"
        conda:
            CONDA_ENV
        threads: 8
        resources:
            mem_mb=8000,
            runtime=2 * 60,
        params:
            used=used("ingest"),
        shell:
            "prdit ingest --dataset {wildcards.dataset} --write-plan {output} --threads {threads} "
            "> {log} 2>&1"

    rule ingest_shard:
        input:
            plan="data/interim/{dataset}.shards/plan.json",
        output:
            temp("data/interim/{dataset}.shards/{shard}.csv"),
        log:
            "logs/ingest/{dataset}.shard{shard}.log",
        benchmark:
            "logs/benchmarks/ingest/{dataset}.shard{shard}.tsv"
        conda:
            CONDA_ENV
        threads: 8
        resources:
            mem_mb=16000,
            runtime=6 * 60,
        params:
            used=used("ingest"),
        shell:
            "prdit ingest --dataset {wildcards.dataset} --plan {input.plan} --shard {wildcards.shard} "
            "--threads {threads} > {log} 2>&1"


if PREPROCESS_SHARDS > 1:

    rule preprocess_shard:
        input:
            "data/interim/{dataset}",
        output:
            temp("data/processed/{dataset}.shards/{shard}.csv"),
        log:
            "logs/preprocess/{dataset}.shard{shard}.log",
        benchmark:
            "logs/benchmarks/preprocess/{dataset}.shard{shard}.tsv"
        conda:
            CONDA_ENV
        threads: 8
        resources:
            mem_mb=16000,
            runtime=6 * 60,
        params:
            used=used("preprocess"),
        shell:
            "prdit preprocess --dataset {wildcards.dataset} --shard {wildcards.shard} "
            "--threads {threads} > {log} 2>&1"


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
        used=used("split"),
    shell:
        "prdit split --dataset {wildcards.dataset} > {log} 2>&1"
