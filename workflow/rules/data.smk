# Downloads run where Snakemake runs (login nodes have the internet access compute nodes often lack).
localrules:
    download,


rule download:
    output:
        MANIFEST,
    log:
        "logs/download/{dataset}.log",
    benchmark:
        "logs/benchmarks/download/{dataset}.tsv"
    conda:
        CONDA_ENV
    threads: DATA_JOBS["download"]["threads"]
    resources:
        mem_mb=DATA_JOBS["download"]["mem_mb"],
        runtime=DATA_JOBS["download"]["runtime"],
    params:
        used=used("download"),
    shell:
        "prdit download --dataset {wildcards.dataset:q} > {log:q} 2>&1"


# Ingest and preprocess compute each case once per (inputs, params) into the per-case cache
# .prdit/cache/ (prdit/data/cache.py) and assemble their output folder from it: a new or changed case,
# or a re-run after a kill, computes only the cases not in the cache. With ingest.shards /
# preprocess.shards = N > 1 the cases are spread over N jobs (rules ingest_shard / preprocess_shard,
# every N-th case each; under SLURM N sbatch jobs, e.g. 20 for ~1,000 series), which fill the cache;
# rule ingest / preprocess then assembles the folder (and qc.csv of every case) from the cache.
# ingest_plan discovers the DICOM series once for all of them. N = 1 (the default) is one job.


rule ingest:
    input:
        MANIFEST,
        ingest_shards,
    output:
        directory(INTERIM),
    log:
        "logs/ingest/{dataset}.log",
    benchmark:
        "logs/benchmarks/ingest/{dataset}.tsv"
    conda:
        CONDA_ENV
    threads: DATA_JOBS["ingest"]["threads"]
    resources:
        mem_mb=DATA_JOBS["ingest"]["mem_mb"],
        runtime=DATA_JOBS["ingest"]["runtime"],
    params:
        plan=ingest_plan_arg,
        used=used("ingest"),
    shell:
        "prdit ingest --dataset {wildcards.dataset:q} {params.plan} --threads {threads} > {log:q} 2>&1"


rule preprocess:
    input:
        INTERIM,
        preprocess_shards,
    output:
        directory(PROCESSED),
    log:
        "logs/preprocess/{dataset}.log",
    benchmark:
        "logs/benchmarks/preprocess/{dataset}.tsv"
    conda:
        CONDA_ENV
    threads: DATA_JOBS["preprocess"]["threads"]
    resources:
        mem_mb=DATA_JOBS["preprocess"]["mem_mb"],
        runtime=DATA_JOBS["preprocess"]["runtime"],
    params:
        used=used("preprocess"),
    shell:
        "prdit preprocess --dataset {wildcards.dataset:q} --threads {threads} > {log:q} 2>&1"


if INGEST_SHARDS > 1:

    # Discovery (DICOM headers of every file) once, for every shard and the assembly.
    rule ingest_plan:
        input:
            MANIFEST,
        output:
            temp(INGEST_PLAN),
        log:
            "logs/ingest/{dataset}.plan.log",
        benchmark:
            "logs/benchmarks/ingest/{dataset}.plan.tsv"
        conda:
            CONDA_ENV
        threads: DATA_JOBS["ingest_plan"]["threads"]
        resources:
            mem_mb=DATA_JOBS["ingest_plan"]["mem_mb"],
            runtime=DATA_JOBS["ingest_plan"]["runtime"],
        params:
            used=used("ingest"),
        shell:
            "prdit ingest --dataset {wildcards.dataset:q} --write-plan {output:q} --threads {threads} "
            "> {log:q} 2>&1"

    rule ingest_shard:
        input:
            plan=INGEST_PLAN,
        output:
            temp(INGEST_SHARD),
        log:
            "logs/ingest/{dataset}.shard{shard}.log",
        benchmark:
            "logs/benchmarks/ingest/{dataset}.shard{shard}.tsv"
        conda:
            CONDA_ENV
        threads: DATA_JOBS["ingest_shard"]["threads"]
        resources:
            mem_mb=DATA_JOBS["ingest_shard"]["mem_mb"],
            runtime=DATA_JOBS["ingest_shard"]["runtime"],
        params:
            used=used("ingest"),
        shell:
            "prdit ingest --dataset {wildcards.dataset:q} --plan {input.plan:q} --shard {wildcards.shard} "
            "--threads {threads} > {log:q} 2>&1"


if PREPROCESS_SHARDS > 1:

    rule preprocess_shard:
        input:
            INTERIM,
        output:
            temp(PREPROCESS_SHARD),
        log:
            "logs/preprocess/{dataset}.shard{shard}.log",
        benchmark:
            "logs/benchmarks/preprocess/{dataset}.shard{shard}.tsv"
        conda:
            CONDA_ENV
        threads: DATA_JOBS["preprocess_shard"]["threads"]
        resources:
            mem_mb=DATA_JOBS["preprocess_shard"]["mem_mb"],
            runtime=DATA_JOBS["preprocess_shard"]["runtime"],
        params:
            used=used("preprocess"),
        shell:
            "prdit preprocess --dataset {wildcards.dataset:q} --shard {wildcards.shard} "
            "--threads {threads} > {log:q} 2>&1"


rule split:
    input:
        PROCESSED,
    output:
        SPLITS,
    log:
        "logs/split/{dataset}.log",
    benchmark:
        "logs/benchmarks/split/{dataset}.tsv"
    conda:
        CONDA_ENV
    threads: DATA_JOBS["split"]["threads"]
    resources:
        mem_mb=DATA_JOBS["split"]["mem_mb"],
        runtime=DATA_JOBS["split"]["runtime"],
    params:
        used=used("split"),
    shell:
        "prdit split --dataset {wildcards.dataset:q} > {log:q} 2>&1"
