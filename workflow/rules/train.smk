# The three training stages, one rule: {stage} is local (stage 1), global (stage 2, on the frozen stage 1)
# or highres (stage 3, on the frozen stage 2). model.pt holds EMA weights + config + provenance; last.pt
# beside it is the resumable checkpoint that survives a killed or preempted job (Snakemake deletes only
# model.pt). `prdit train` exits 75 after a SIGTERM/SIGUSR1 checkpoint; the profiles' `retries` resubmit the
# job and it resumes from last.pt (a rule-level `retries:` would also restart inside a SLURM allocation about
# to end).
# `prdit launch` starts torchrun with one process per GPU (resources.train.<stage>.gpu in the params files).
# With resources.train.<stage>.nodes = N > 1 (SLURM) it starts one srun step with one torchrun per node, the
# rendezvous taken from SLURM's variables (prdit/train/launch.py); under SLURM even one node runs in that
# step, which is what SLURM's warning signal (--signal=TERM@300) reaches. `mpi=0` makes the slurm-jobstep
# executor run the command in the batch script (as for MPI jobs, without its own one-task srun, which would
# hold the allocation's GPUs) while the submit side adds no MPI task options. `exec` lets signals reach the
# launcher instead of the shell. Logs are appended across attempts. Its CPUs follow its GPUs (train_threads:
# one per GPU process and per loader worker, per node).


rule train:
    input:
        unpack(train_inputs),
    output:
        model=MODEL,
        metrics=TRAIN_METRICS,
    log:
        "logs/train/{dataset}.{stage}.log",
    benchmark:
        "logs/benchmarks/train/{dataset}.{stage}.tsv"
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
        used=used(train_stage),
    shell:
        "exec prdit launch --nodes {resources.nodes} --gpus {resources.gpu} --cpus {threads} -- "
        "prdit train --dataset {wildcards.dataset:q} --stage {wildcards.stage} >> {log:q} 2>&1"
