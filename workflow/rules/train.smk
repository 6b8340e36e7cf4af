rule train:
    """Train one run of train.runs (per level, or multilevel coarse to fine)."""
    input:
        levels=level_files(),
        code=code("train"),
    output:
        model=MODEL,
        loss=f"{MODELS}/{{run}}/loss.csv",
        validation=f"{MODELS}/{{run}}/validation.csv",
        summary=f"{MODELS}/{{run}}/train.json",
    params:
        file=PARAMS_FILE,
        store=folder("levels"),
        sections=run_params,
    log:
        f"{LOGS}/train_{{run}}.log",
    benchmark:
        f"{BENCH}/train_{{run}}.tsv"
    conda:
        ENV
    container:
        IMAGE
    threads: 2
    resources:
        gpu=PARAMS.train.processes,
        mem_mb=8000,
        runtime=240,
    shell:
        "mldiff --threads {threads} train --params {params.file} --run {wildcards.run}"
        " --store {params.store} --out {output.model} --resume 2> {log}"
