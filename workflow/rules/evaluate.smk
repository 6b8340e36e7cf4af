rule evaluate:
    """The generalization matrix: every run x resolution against held-out data, with references."""
    input:
        levels=level_files(),
        references=reference_files(),
        samples=sample_files(),
        training=expand(f"{MODELS}/{{run}}/train.json", run=PARAMS.train.runs),
        validation=expand(f"{MODELS}/{{run}}/validation.csv", run=PARAMS.train.runs),
        code=code("evaluate"),
    output:
        metrics=f"{RESULTS}/metrics.json",
        matrix=f"{RESULTS}/matrix.csv",
        spectra=f"{RESULTS}/spectra.csv",
        curves=f"{RESULTS}/metric_vs_resolution.csv",
        validation=f"{RESULTS}/validation.csv",
        generalization=f"{RESULTS}/generalization.csv",
        summary=f"{RESULTS}/evaluation.json",
        figures=report(
            directory(f"{RESULTS}/figures"),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Figures",
        ),
    params:
        file=PARAMS_FILE,
        store=folder("levels"),
        samples=folder("samples", up=2),
        models=folder("training", up=2),
        reference=lambda w, input: (
            f"--reference {Path(input.references[0]).parent}" if input.references else ""
        ),
        results=lambda w, output: Path(output.metrics).parent,
        sections=step_params("evaluate"),
    log:
        f"{LOGS}/evaluate.log",
    benchmark:
        f"{BENCH}/evaluate.tsv"
    conda:
        ENV
    container:
        IMAGE
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
    shell:
        "mldiff --threads {threads} evaluate --params {params.file} --store {params.store}"
        " --samples {params.samples} --models {params.models} {params.reference}"
        " --out {params.results} 2> {log}"


rule report:
    """One self-contained HTML report: setup, tables, figures, verdicts."""
    input:
        results=rules.evaluate.output,
        code=code("report"),
    output:
        report(REPORT, caption="../report/report.rst", category="Report"),
    params:
        file=PARAMS_FILE,
        results=folder("results"),
        sections=step_params("report"),
    log:
        f"{LOGS}/report.log",
    conda:
        ENV
    container:
        IMAGE
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "mldiff report --params {params.file} --results {params.results} --out {output} 2> {log}"
