# Helpers shared by the rules: the validated params and the output layout under data/.

from mldiff import config as mlconfig

PARAMS_FILE = "params.yaml"
PARAMS = mlconfig.load_params(PARAMS_FILE)

# Rules pass params.yaml to `mldiff`; overriding values with --config/--configfile would make
# the DAG disagree with what the commands read, so switch presets with `mldiff preset NAME`.
if mlconfig.validate(dict(config), "snakemake config") != PARAMS:
    raise ValueError(
        "Snakemake config differs from params.yaml: edit params.yaml or run "
        "`mldiff preset NAME` instead of --config/--configfile overrides"
    )

RAW = "data/raw/simulation.nc"
STORE = "data/store"
LEVEL = STORE + "/level_{n}.nc"
REFERENCE_DIR = "data/reference"
REFERENCE = REFERENCE_DIR + "/n{n}.nc"
MODELS = "data/models"
MODEL = MODELS + "/{run}/model.pt"
SAMPLES_DIR = "data/samples"
SAMPLES = SAMPLES_DIR + "/{run}/n{n}.nc"
RESULTS = "data/results"
REPORT = RESULTS + "/report.html"
LOGS = "data/logs"
BENCH = "data/benchmarks"

def step_params(step):
    """The params sections `step` reads (a rerun trigger when they change)."""
    return mlconfig.step_params(PARAMS, step)

def level_files():
    return expand(LEVEL, n=PARAMS.store.levels)

def reference_files():
    return expand(REFERENCE, n=PARAMS.reference.resolutions)


def model_files():
    return expand(MODEL, run=PARAMS.train.runs)


def sample_files():
    return expand(SAMPLES, run=PARAMS.train.runs, n=PARAMS.sample.resolutions)


def all_outputs():
    return [REPORT]


wildcard_constraints:
    run="[A-Za-z0-9_]+",
    n="[0-9]+",
