# mldiff workflow: params -> simulate -> store (-> reference) -> train -> sample -> evaluate
# -> report.
# Every rule is a thin call of one `mldiff <step>` command; dvc.yaml calls the same commands.
from snakemake.utils import min_version, validate

min_version("8.20")

# params.yaml is read by mldiff's strict loader, not by `configfile:`: Snakemake would evaluate
# a YTE template (`__use_yte__: true`, i.e. run its code) before any validation. mldiff refuses
# templated files; values given with --config still override (and common.smk refuses them).
from mldiff import config as mlconfig

config.update(mlconfig.deep_merge(mlconfig.load_params("params.yaml").model_dump(mode="json"),
                                  config))


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
