rule store:
    """One level of the multiresolution store, coarsened from the raw dataset."""
    input:
        RAW,
    output:
        LEVEL,
    params:
        file=PARAMS_FILE,
        sections=step_params("store"),
    log:
        f"{LOGS}/store_{{n}}.log",
    benchmark:
        f"{BENCH}/store_{{n}}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "mldiff --threads {threads} store --params {params.file} --input {input}"
        " --level {wildcards.n} --out {output} 2> {log}"
