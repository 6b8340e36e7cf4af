rule evaluate:
    """The generalization matrix: every run x resolution against held-out data, with references."""
    input:
        level_files(),
        reference_files(),
        sample_files(),
        expand(f"{MODELS}/{{run}}/train.json", run=PARAMS.train.runs),
        expand(f"{MODELS}/{{run}}/validation.csv", run=PARAMS.train.runs),
    output:
        metrics=f"{RESULTS}/metrics.json",
        matrix=f"{RESULTS}/matrix.csv",
        spectra=f"{RESULTS}/spectra.csv",
        curves=f"{RESULTS}/metric_vs_resolution.csv",
        summary=f"{RESULTS}/evaluation.json",
        figures=directory(f"{RESULTS}/figures"),
    params:
        file=PARAMS_FILE,
        sections=step_params("evaluate"),
    log:
        f"{LOGS}/evaluate.log",
    benchmark:
        f"{BENCH}/evaluate.tsv"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
    shell:
        "mldiff --threads {threads} evaluate --params {params.file} --store {STORE}"
        " --samples {SAMPLES_DIR} --models {MODELS} --reference {REFERENCE_DIR}"
        " --out {RESULTS} 2> {log}"


rule report:
    """One self-contained HTML report: setup, tables, figures, verdicts."""
    input:
        rules.evaluate.output,
    output:
        REPORT,
    params:
        file=PARAMS_FILE,
        sections=step_params("report"),
    log:
        f"{LOGS}/report.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "mldiff report --params {params.file} --results {RESULTS} --out {output} 2> {log}"
