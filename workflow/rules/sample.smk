# Sampling at the backbone size uses the stage-2 model; at the stage-3 size, the highres model
# (which carries its frozen backbone).
# sample.shards = N > 1: rule sample_base / sample_highres run once per shard (N independent jobs, one GPU
# each under SLURM), each drawing whole batches into samples/<dataset>/<size>.shards/<k>/ (temporary);
# the local rule merge_samples joins them into samples/<dataset>/<size>/, byte for byte what one job writes
# (so evaluation waits for every shard). N = 1 (the default) is the single job writing the folder itself.

SHARDS = PARAMS.sample.shards


def sample_output(size):
    if SHARDS == 1:
        return directory(f"samples/{{dataset}}/{size}")
    return temp(directory(f"samples/{{dataset}}/{size}.shards/{{shard}}"))


def sample_tag(size):
    """The log/benchmark name of one sampling job (the shard wildcard when sharded)."""
    return (
        f"{{dataset}}.{size}" if SHARDS == 1 else f"{{dataset}}.{size}.shard{{shard}}"
    )


def shard_arg(wildcards):
    return f"--shard {wildcards.shard}" if SHARDS > 1 else ""


rule sample_base:
    input:
        model="models/{dataset}/global/model.pt",
    output:
        sample_output(SIZE),
    log:
        f"logs/sample/{sample_tag(SIZE)}.log",
    benchmark:
        f"logs/benchmarks/sample/{sample_tag(SIZE)}.tsv"
    wildcard_constraints:
        shard=r"\d+",
    conda:
        CONDA_ENV
    threads: 4
    resources:
        mem_mb=32000,
        runtime=12 * 60,
        gpu=1,
    params:
        size=SIZE,
        shard=shard_arg,
        used=used("sample"),
    shell:
        "prdit sample {PRDIT_PARAMS:q} --dataset {wildcards.dataset} --size {params.size} {params.shard} > {log} 2>&1"


rule sample_highres:
    input:
        model="models/{dataset}/highres/model.pt",
    output:
        sample_output(HIGHRES),
    log:
        f"logs/sample/{sample_tag(HIGHRES)}.log",
    benchmark:
        f"logs/benchmarks/sample/{sample_tag(HIGHRES)}.tsv"
    wildcard_constraints:
        shard=r"\d+",
    conda:
        CONDA_ENV
    threads: 4
    resources:
        mem_mb=64000,
        runtime=24 * 60,
        gpu=1,
    params:
        size=HIGHRES,
        shard=shard_arg,
        used=used("sample"),
    shell:
        "prdit sample {PRDIT_PARAMS:q} --dataset {wildcards.dataset} --size {params.size} {params.shard} > {log} 2>&1"


if SHARDS > 1:

    localrules:
        merge_samples,

    # Hard links (or copies) and one montage: seconds, so it runs where Snakemake runs.
    rule merge_samples:
        input:
            lambda wildcards: expand(
                "samples/{dataset}/{size}.shards/{shard}",
                dataset=wildcards.dataset,
                size=wildcards.size,
                shard=range(SHARDS),
            ),
        output:
            directory("samples/{dataset}/{size}"),
        log:
            "logs/sample/{dataset}.{size}.merge.log",
        wildcard_constraints:
            size="|".join(str(s) for s in PARAMS.sizes()),
        conda:
            CONDA_ENV
        threads: 1
        resources:
            mem_mb=4000,
            runtime=30,
        params:
            used=used("sample"),
        shell:
            "prdit merge-samples {PRDIT_PARAMS:q} --dataset {wildcards.dataset} --size {wildcards.size} > {log} 2>&1"
