# mldiff workflow: params -> simulate -> store (-> reference) -> train -> sample -> evaluate
# -> report.
# Every rule is a thin call of one `mldiff <step>` command; dvc.yaml calls the same commands.
from snakemake.utils import min_version, validate

min_version("8.20")

configfile: "params.yaml"


# Software environment for `--sdm conda` (every rule runs the `mldiff` CLI from it).
conda: "workflow/envs/mldiff.yaml"


validate(config, "workflow/schemas/params.schema.json", set_default=False)


include: "workflow/rules/common.smk"
include: "workflow/rules/simulate.smk"
include: "workflow/rules/store.smk"
include: "workflow/rules/reference.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/sample.smk"
include: "workflow/rules/evaluate.smk"


rule all:
    input:
        all_outputs(),
    default_target: True
