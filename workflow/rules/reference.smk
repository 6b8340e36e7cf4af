rule reference:
    """Reference data simulated directly on a grid finer than the store (reference.resolutions)."""
    input:
        level_files(),
    output:
        REFERENCE,
    params:
        file=PARAMS_FILE,
        sections=step_params("reference"),
    log:
        f"{LOGS}/reference_n{{n}}.log",
    benchmark:
        f"{BENCH}/reference_n{{n}}.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "mldiff --threads {threads} reference --params {params.file} --store {STORE}"
        " --resolution {wildcards.n} --out {output} 2> {log}"
