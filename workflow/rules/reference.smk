rule reference:
    """Reference data simulated directly on a grid finer than the store (reference.resolutions)."""
    input:
        levels=level_files(),
        code=code("reference"),
        user_code=user_code(),
    output:
        REFERENCE,
    params:
        file=PARAMS_FILE,
        store=folder("levels"),
        sections=step_params("reference"),
    log:
        f"{LOGS}/reference_n{{n}}.log",
    benchmark:
        f"{BENCH}/reference_n{{n}}.tsv"
    conda:
        ENV
    container:
        IMAGE
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "mldiff --threads {threads} reference --params {params.file} --store {params.store}"
        " --resolution {wildcards.n} --out {output} 2> {log}"
