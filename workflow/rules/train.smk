# The three training stages, one rule: {model} is local (stage 1), global (stage 2, on the frozen stage 1)
# or highres (stage 3, on the frozen stage 2), with "-<key>" for a named experiment's own model
# (prdit.topology; common.smk). How a job launches, checkpoints and resumes (exit 75,
# `prdit launch`, mpi=0, exec): docs/slurm.md, "Multi-GPU and multi-node training" and "Time limits".


rule train:
    input:
        unpack(train_inputs),
    output:
        model=MODEL,
        metrics=TRAIN_METRICS,
    log:
        "logs/train/{dataset}.{model}.log",
    benchmark:
        "logs/benchmarks/train/{dataset}.{model}.tsv"
    conda:
        CONDA_ENV
    threads: train_threads
    resources:
        mem_mb=job_limit("train", "mem_mb"),
        runtime=job_limit("train", "runtime"),
        gpu=train_resource("gpu"),
        nodes=train_resource("nodes"),
        mpi=0,
    params:
        stage=model_stage,
        key=key_arg,
        used=used(train_stage, params=model_view),
    shell:
        "exec prdit launch --nodes {resources.nodes} --gpus {resources.gpu} --cpus {threads} -- "
        "prdit train --dataset {wildcards.dataset:q} --stage {params.stage} {params.key} >> {log:q} 2>&1"
