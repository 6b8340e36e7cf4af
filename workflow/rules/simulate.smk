rule simulate:
    """Simulate the PDE (or import data.source) into the raw dataset."""
    input:
        data=[PARAMS.data.source.path] if PARAMS.data.source else [],
        code=code("simulate"),
        user_code=user_code(),
    output:
        RAW,
    params:
        file=PARAMS_FILE,
        sections=step_params("simulate"),
    log:
        f"{LOGS}/simulate.log",
    benchmark:
        f"{BENCH}/simulate.tsv"
    conda:
        ENV
    container:
        IMAGE
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "mldiff --threads {threads} simulate --params {params.file} --out {output} 2> {log}"
