rule sample:
    """Draw fields from one trained run at one resolution."""
    input:
        model=MODEL,
        code=code("sample"),
    output:
        SAMPLES,
    params:
        file=PARAMS_FILE,
        sections=step_params("sample"),
    log:
        f"{LOGS}/sample_{{run}}_n{{n}}.log",
    benchmark:
        f"{BENCH}/sample_{{run}}_n{{n}}.tsv"
    conda:
        ENV
    container:
        IMAGE
    threads: 2
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=60,
    shell:
        "mldiff --threads {threads} sample --params {params.file} --model {input.model}"
        " --resolution {wildcards.n} --out {output} 2> {log}"
