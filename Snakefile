# mldiff workflow: params -> simulate -> store (-> reference) -> train -> sample -> evaluate
# -> report.
# Every rule is a thin call of one `mldiff <step>` command; dvc.yaml calls the same commands.
from snakemake.utils import min_version, validate

min_version("8.20")

# params.yaml is read by mldiff's strict loader, not by `configfile:`: Snakemake would evaluate
# a YTE template (`__use_yte__: true`, i.e. run its code) before any validation. mldiff refuses
# templated files; values given with --config still override (and common.smk refuses them).
# A bad params file ends with mldiff's one line `mldiff: error: <key>: ...`, as from the CLI.
import sys

from mldiff import config as mlconfig
from mldiff.errors import MldiffError

PARAMS_FILE = "params.yaml"
try:
    PARAMS = mlconfig.load_params(PARAMS_FILE)
except MldiffError as exc:
    sys.exit(f"mldiff: error: {exc}")
config.update(mlconfig.deep_merge(PARAMS.model_dump(mode="json"), config))


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


# Already checked by mldiff above; the JSON schema documents the config for Snakemake.
validate(config, "workflow/schemas/params.schema.json", set_default=False)


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
