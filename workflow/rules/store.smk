rule store:
    """One level of the multiresolution store, coarsened from the raw dataset."""
    input:
        raw=RAW,
        code=code("store"),
    output:
        LEVEL,
    params:
        file=PARAMS_FILE,
        sections=step_params("store"),
    log:
        f"{LOGS}/store_{{n}}.log",
    benchmark:
        f"{BENCH}/store_{{n}}.tsv"
    conda:
        ENV
    container:
        IMAGE
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "mldiff --threads {threads} store --params {params.file} --input {input.raw}"
        " --level {wildcards.n} --out {output} 2> {log}"
