# Metrics of generated volumes ({size}) against the real training set, beside the real-vs-real floor
# (held-out vs train). Outputs marked report() make up `snakemake --report report.html`; the reports/ folder
# also holds report.md, montages and the CSVs behind them (evaluate replaces the folder as a whole).


if EXTRACTOR_WEIGHTS:

    localrules:
        fetch_weights,

    # evaluate.weights set but absent: download it (evaluate.url; without one the pinned 23-dataset
    # MedicalNet, refused under protocol: paper, which then stops with the manual step of docs/reproducing.md)
    # on the submit host, sha256-checked. protected(): a later run never deletes or overwrites the file;
    # one you already have at that path is used as it is.
    rule fetch_weights:
        output:
            protected(EXTRACTOR_WEIGHTS[0]),
        log:
            "logs/fetch_weights.log",
        benchmark:
            "logs/benchmarks/fetch_weights.tsv"
        conda:
            CONDA_ENV
        threads: 1
        resources:
            mem_mb=1000,
            runtime=60,
        shell:
            "prdit fetch-weights > {log:q} 2>&1"


rule evaluate:
    input:
        samples=SAMPLES,
        data=PROCESSED,
        weights=EXTRACTOR_WEIGHTS,
        splits=SPLITS,
    output:
        metrics=report(
            METRICS,
            caption="../report/metrics.rst",
            category="Metrics",
        ),
        html=report(
            f"{REPORT}/report.html",
            caption="../report/evaluation.rst",
            category="Evaluation",
        ),
        histogram=f"{REPORT}/hu_histogram.csv",
        slices=f"{REPORT}/mid_slices.npz",
    log:
        f"logs/evaluate/{job_tag()}.log",
    benchmark:
        f"logs/benchmarks/evaluate/{job_tag()}.tsv"
    conda:
        CONDA_ENV
    threads: 4
    resources:
        mem_mb=job_limit("evaluate", "mem_mb"),
        runtime=job_limit("evaluate", "runtime"),
        gpu=1,
    params:
        experiment=experiment_arg,
        used=used("evaluate"),
    shell:
        "prdit evaluate --dataset {wildcards.dataset:q} --size {wildcards.size} {params.experiment} "
        "> {log:q} 2>&1"


# Another method's volumes (params `baselines.<name>`) through the same evaluation as our samples.
rule evaluate_baseline:
    input:
        volumes=baseline_path,
        data=PROCESSED,
        weights=EXTRACTOR_WEIGHTS,
        splits=SPLITS,
    output:
        metrics=report(
            BASELINE_METRICS,
            caption="../report/metrics.rst",
            category="Metrics",
        ),
        html=report(
            f"{BASELINE_REPORT}/report.html",
            caption="../report/evaluation.rst",
            category="Evaluation",
        ),
        histogram=f"{BASELINE_REPORT}/hu_histogram.csv",
        slices=f"{BASELINE_REPORT}/mid_slices.npz",
    log:
        "logs/evaluate/{dataset}.{baseline}.{size}.log",
    benchmark:
        "logs/benchmarks/evaluate/{dataset}.{baseline}.{size}.tsv"
    conda:
        CONDA_ENV
    threads: 4
    resources:
        mem_mb=job_limit("evaluate", "mem_mb"),
        runtime=job_limit("evaluate", "runtime"),
        gpu=1,
    params:
        used=used("evaluate-baseline"),
    shell:
        "prdit evaluate --dataset {wildcards.dataset:q} --size {wildcards.size} "
        "--baseline {wildcards.baseline:q} > {log:q} 2>&1"


# One table, chart and montage grid of every experiment and baseline at a dataset and size (seconds).
rule compare:
    input:
        compare_inputs,
    output:
        report(
            directory(COMPARE),
            patterns=["table.html", "fid.png", "montage.png"],
            caption="../report/compare.rst",
            category="Comparison",
        ),
    log:
        "logs/compare/{dataset}.{size}.log",
    benchmark:
        "logs/benchmarks/compare/{dataset}.{size}.tsv"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        used=used("compare"),
    shell:
        "prdit compare --dataset {wildcards.dataset:q} --size {wildcards.size} > {log:q} 2>&1"
