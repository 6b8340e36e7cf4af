"""params.yaml validation: defaults, presets, schema and one-line errors naming the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mldiff import config
from mldiff.errors import MldiffError

ROOT = Path(__file__).resolve().parents[1]


def test_params_yaml_is_the_default_study():
    assert config.load_params(ROOT / "params.yaml") == config.Params()


@pytest.mark.parametrize("preset", ["tiny", "paper"])
def test_presets_validate(preset):
    raw = config.deep_merge(
        config.Params().model_dump(mode="json"),
        config.read_yaml(config.PRESETS_DIR / f"{preset}.yaml"),
        depth=2,
    )
    assert isinstance(config.validate(raw, preset), config.Params)


def test_snakemake_schema_is_generated_from_the_model():
    on_disk = json.loads((ROOT / "workflow" / "schemas" / "params.schema.json").read_text())
    expected = json.loads(json.dumps(config.json_schema()))
    hint = "regenerate: mldiff schema --out workflow/schemas/params.schema.json"
    assert on_disk == expected, hint


BAD = [
    ({"pde": {"nn": 64}}, "pde.nn: unknown key; did you mean 'n'?"),
    ({"stor": {}}, "stor: unknown key; did you mean 'store'?"),
    ({"pde": {"n": 100}}, "pde.n: expected a power of two"),
    ({"pde": {"n": "big"}}, "pde.n:"),
    ({"pde": {"n": 4}}, "pde.n:"),
    ({"pde": {"times": [2.0, 1.0]}}, "pde.times: expected strictly increasing"),
    ({"pde": {"times": [-1.0]}}, "pde.times.0:"),
    ({"pde": {"laplacian": "fd"}}, "pde.laplacian:"),
    ({"pde": {"dtype": "float16"}}, "pde.dtype:"),
    ({"pde": {"system": "navier_stokes"}}, "navier_stokes"),
    ({"pde": {"parameters": {"Duu": 1.0}}}, "Duu"),
    ({"pde": {"solver": {"dt0": 1.0, "dt_max": 0.1}}}, "pde.solver: dt0 (1.0) must not exceed"),
    ({"pde": {"solver": {"ramp_steps": -1}}}, "pde.solver.ramp_steps:"),
    ({"pde": {"n_samples": 0}}, "pde.n_samples:"),
    ({"store": {"levels": [16, 24]}}, "store.levels: expected powers of two"),
    ({"store": {"levels": [32, 16]}}, "store.levels: expected strictly increasing"),
    ({"store": {"levels": [16, 128]}}, "finest level 128 exceeds"),
    ({"store": {"time": 3.0}}, "store.time: 3.0 is not one of the saved pde.times"),
    ({"store": {"method": "nearest"}}, "store.method:"),
    ({"store": {"split": {"train": 0.5, "validation": 0.1, "test": 0.1}}}, "must be 1"),
    ({"store": {"species": []}}, "store.species:"),
    ({"data": {"source": {"path": "x.nc", "variables": []}}}, "data.source.variables:"),
    ({"reference": {"resolutions": [64]}}, "reference.resolutions: [64] must be finer than"),
    ({"reference": {"resolutions": [96]}}, "reference.resolutions: expected powers of two"),
    ({"reference": {"resolutions": [128, 128]}}, "reference.resolutions: expected distinct"),
    ({"reference": {"train_samples": 0}}, "reference.train_samples:"),
    ({"sample": {"resolutions": [16, 16]}}, "sample.resolutions: expected distinct"),
    ({"evaluate": {"n_permutations": 99}},
     "evaluate.n_permutations: 99 cannot give a Holm-adjusted p <= 0.05 over up to 15 tests"),
    (
        {"reference": {"resolutions": [128]},
         "data": {"source": {"path": "x.nc", "variables": ["u"],
                             "dims": {"sample": "s", "y": "y", "x": "x"}}}},
        "reference.resolutions: data.source data cannot be re-simulated",
    ),
    (
        {"data": {"source": {"path": "x.nc", "variables": ["u"],
                             "dims": {"sample": "s", "y": "y", "x": "x"},
                             "time": {"dim": "t"}}}},
        "data.source.time: give exactly one of",
    ),
]


@pytest.mark.parametrize(("override", "expected"), BAD, ids=[e for _, e in BAD])
def test_bad_params_give_one_line_naming_the_key(write_params, override, expected):
    path = write_params(override)
    with pytest.raises(MldiffError) as info:
        config.load_params(path)
    message = str(info.value)
    assert expected in message
    assert message.startswith(str(path))
    assert "\n" not in message


def test_unreadable_yaml_names_the_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("pde: [unclosed\n")
    with pytest.raises(MldiffError, match=r"params.yaml: not valid YAML \(line"):
        config.load_params(path)


def test_missing_params_file(tmp_path):
    with pytest.raises(MldiffError, match="params file not found"):
        config.load_params(tmp_path / "nope.yaml")


def test_step_params_cover_what_each_step_reads():
    params = config.Params()
    assert set(config.step_params(params, "store")) == {"store"}
    assert config.step_params(params, "simulate")["pde"]["n"] == params.pde.n


def test_step_params_do_not_depend_on_key_order(write_params):
    import yaml

    path = write_params()
    raw = yaml.safe_load(path.read_text())
    raw["networks"]["fno"]["params"] = dict(reversed(raw["networks"]["fno"]["params"].items()))
    other = config.validate(raw)
    assert config.step_params(other, "train") == config.step_params(config.Params(), "train")
    assert repr(config.step_params(other, "train")) == repr(
        config.step_params(config.Params(), "train"))


def test_solver_tight_names_the_documented_setting():
    from mldiff.pde import TIGHT

    params = config.validate({"pde": {"solver": "tight"}})
    assert params.pde.solver.model_dump() == TIGHT
