rule simulate:
    """Simulate the PDE (or import data.source) into the raw dataset."""
    input:
        [PARAMS.data.source.path] if PARAMS.data.source else [],
    output:
        RAW,
    params:
        file=PARAMS_FILE,
        sections=step_params("simulate"),
    log:
        f"{LOGS}/simulate.log",
    benchmark:
        f"{BENCH}/simulate.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "mldiff --threads {threads} simulate --params {params.file} --out {output} 2> {log}"
