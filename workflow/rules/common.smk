# Helpers shared by the rules: the output layout under data/, params and code per step.
# PARAMS (the validated params.yaml) and PARAMS_FILE come from the Snakefile.

from pathlib import Path

from mldiff import codedeps

# Rules pass params.yaml to `mldiff`; overriding values with --config/--configfile would make
# the DAG disagree with what the commands read, so switch presets with `mldiff preset NAME`.
if mlconfig.validate(dict(config), "snakemake config") != PARAMS:
    raise ValueError(
        "Snakemake config differs from params.yaml: edit params.yaml or run "
        "`mldiff preset NAME` instead of --config/--configfile overrides"
    )

RAW = "data/raw/simulation.nc"
STORE = "data/store"
LEVEL = f"{STORE}/level_{{n}}.nc"
REFERENCE_DIR = "data/reference"
REFERENCE = f"{REFERENCE_DIR}/n{{n}}.nc"
MODELS = "data/models"
MODEL = f"{MODELS}/{{run}}/model.pt"
SAMPLES_DIR = "data/samples"
SAMPLES = f"{SAMPLES_DIR}/{{run}}/n{{n}}.nc"
RESULTS = "data/results"
REPORT = f"{RESULTS}/report.html"
LOGS = "data/logs"
BENCH = "data/benchmarks"
SOURCE = "src/mldiff"
USER_SYSTEMS = "systems"
# Software of every rule: `--sdm conda` builds ENV (path relative to the rule files),
# `--sdm apptainer` runs IMAGE (`apptainer build mldiff.sif workflow/apptainer.def`).
ENV = "../envs/mldiff.yaml"
IMAGE = "mldiff.sif"


def step_params(step):
    """The params sections `step` reads (a rerun trigger when they change)."""
    return mlconfig.step_params(PARAMS, step)


def run_params(wildcards):
    """What training one run reads: its train.runs entry, its prior and network."""
    return mlconfig.step_params(PARAMS, "train", wildcards.run)


def folder(name, up=1):
    """A params function: the folder `up` levels above the first file of input `name`."""

    def get(wildcards, input):
        files = input[name]
        first = Path(files if isinstance(files, str) else files[0])
        return str(first.parents[up - 1])

    return get


def code(step):
    """The package files `step` runs (mldiff.codedeps; dvc.yaml lists the same)."""
    return [f"{SOURCE}/{f}" for f in codedeps.step_files(step, Path(SOURCE))]


def user_code():
    """The user's simulator modules: everything in systems/ (as DVC tracks it) and the files
    of pde.imports found in the working directory."""
    found = [str(p) for p in Path(USER_SYSTEMS).rglob("*")
             if p.is_file() and "__pycache__" not in p.parts]
    return sorted({*found, *codedeps.user_module_files(PARAMS.pde.imports)})

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
