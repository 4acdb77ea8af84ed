# Generated volumes at each working size ({size}: the backbone size from the stage-2 model, the stage-3 size
# from the highres model).
# sample.shards = N > 1: rule sample runs once per shard (N independent jobs, one GPU each under SLURM), each
# drawing whole batches into samples/<dataset>/<size>.shards/<k>/ (temporary); the local rule merge_samples
# joins them into samples/<dataset>/<size>/, byte for byte what one job writes (so evaluation waits for every
# shard). N = 1 (the default) is the single job writing the folder itself.
# Finished batches are kept in <output>.partial/ (beside the output, which Snakemake deletes when a job fails):
# `prdit sample` stopped by SIGTERM (SLURM's warning, --signal=TERM@300 in the slurm profile) exits 75 after
# the batch in progress, and the slurm profile's `retries` (or a re-run after kill -9) draw only the missing
# batches. `exec` lets the signal reach prdit, not the shell; logs are appended across attempts.


rule sample:
    input:
        model=sample_model,
    output:
        sample_output(),
    log:
        f"logs/sample/{sample_tag()}.log",
    benchmark:
        f"logs/benchmarks/sample/{sample_tag()}.tsv"
    conda:
        CONDA_ENV
    threads: 4
    resources:
        mem_mb=job_limit("sample", "mem_mb"),
        runtime=job_limit("sample", "runtime"),
        gpu=1,
    params:
        shard=shard_arg,
        experiment=experiment_arg,
        used=used("sample"),
    shell:
        "exec prdit sample --dataset {wildcards.dataset:q} --size {wildcards.size} {params.experiment} "
        "{params.shard} >> {log:q} 2>&1"


if SAMPLE_SHARDS > 1:

    localrules:
        merge_samples,

    # Hard links (or copies) and one montage: seconds, so it runs where Snakemake runs.
    rule merge_samples:
        input:
            sample_shards,
        output:
            directory(SAMPLES),
        log:
            f"logs/sample/{job_tag()}.merge.log",
        benchmark:
            f"logs/benchmarks/sample/{job_tag()}.merge.tsv"
        conda:
            CONDA_ENV
        threads: 1
        resources:
            mem_mb=4000,
            runtime=30,
        params:
            experiment=experiment_arg,
            used=used("sample"),
        shell:
            "prdit merge-samples --dataset {wildcards.dataset:q} --size {wildcards.size} {params.experiment} "
            "> {log:q} 2>&1"
