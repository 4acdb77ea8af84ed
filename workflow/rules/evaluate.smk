# Metrics of generated volumes against the real training set, beside the real-vs-real floor (held-out vs train).
# Outputs marked report() make up `snakemake --report report.html`; the reports/ folder also holds report.md,
# montages and the CSVs behind them (evaluate replaces the folder as a whole).


if EXTRACTOR_WEIGHTS:

    localrules:
        fetch_weights,

    # evaluate.weights set but absent: download it (evaluate.url, default MedicalNet) on the submit host,
    # sha256-checked. protected(): a later run never deletes or overwrites the file; one you already
    # have at that path is used as it is.
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
            "prdit fetch-weights {PRDIT_PARAMS:q} > {log} 2>&1"


rule evaluate_base:
    input:
        samples=f"samples/{{dataset}}/{SIZE}",
        data="data/processed/{dataset}",
        weights=EXTRACTOR_WEIGHTS,
        splits=rules.split.output,
    output:
        metrics=report(
            f"metrics/{{dataset}}/{SIZE}.json",
            caption="../report/metrics.rst",
            category="Metrics",
        ),
        html=report(
            f"reports/{{dataset}}/{SIZE}/report.html",
            caption="../report/evaluation.rst",
            category="Evaluation",
        ),
        histogram=f"reports/{{dataset}}/{SIZE}/hu_histogram.csv",
    log:
        f"logs/evaluate/{{dataset}}.{SIZE}.log",
    benchmark:
        f"logs/benchmarks/evaluate/{{dataset}}.{SIZE}.tsv"
    conda:
        CONDA_ENV
    threads: 4
    resources:
        mem_mb=32000,
        runtime=6 * 60,
        gpu=1,
    params:
        size=SIZE,
        used=used("evaluate"),
    shell:
        "prdit evaluate {PRDIT_PARAMS:q} --dataset {wildcards.dataset} --size {params.size} > {log} 2>&1"


rule evaluate_highres:
    input:
        samples=f"samples/{{dataset}}/{HIGHRES}",
        data="data/processed/{dataset}",
        weights=EXTRACTOR_WEIGHTS,
        splits=rules.split.output,
    output:
        metrics=report(
            f"metrics/{{dataset}}/{HIGHRES}.json",
            caption="../report/metrics.rst",
            category="Metrics",
        ),
        html=report(
            f"reports/{{dataset}}/{HIGHRES}/report.html",
            caption="../report/evaluation.rst",
            category="Evaluation",
        ),
        histogram=f"reports/{{dataset}}/{HIGHRES}/hu_histogram.csv",
    log:
        f"logs/evaluate/{{dataset}}.{HIGHRES}.log",
    benchmark:
        f"logs/benchmarks/evaluate/{{dataset}}.{HIGHRES}.tsv"
    conda:
        CONDA_ENV
    threads: 4
    resources:
        mem_mb=32000,
        runtime=6 * 60,
        gpu=1,
    params:
        size=HIGHRES,
        used=used("evaluate"),
    shell:
        "prdit evaluate {PRDIT_PARAMS:q} --dataset {wildcards.dataset} --size {params.size} > {log} 2>&1"
