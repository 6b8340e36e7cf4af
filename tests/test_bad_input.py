"""The bad-input catalogue: each case exits non-zero with one line naming the key or file and
what was expected, and leaves no output behind (the README's troubleshooting table lists it)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import xarray as xr
import yaml

from helpers import run_cli
from mldiff import cli, config, io

SMALL = {
    "pde": {"n": 16, "n_samples": 8, "batch_size": 8, "times": [0.5]},
    "store": {"levels": [8, 16], "time": 0.5, "split": {"train": 0.5, "validation": 0.25,
                                                         "test": 0.25}},
    "networks": {"fno": {"arch": "fno", "params": {"width": 4, "modes": 4, "layers": 1}}},
    "train": {"batch_size": 2, "runs": {"r": {"network": "fno", "prior": "matern",
                                               "schedule": [[8, 2]]}}},
    "sample": {"resolutions": [16], "n_samples": 2, "steps": 2},
}


def merged(override):
    base = config.deep_merge(config.Params().model_dump(mode="json"), SMALL, depth=2)
    return config.deep_merge(base, override)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A small raw dataset, its store levels and a trained model (valid inputs to corrupt)."""
    root = tmp_path_factory.mktemp("valid")
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump(merged({})))
    steps = [
        ["simulate", "--params", params, "--out", root / "raw.nc"],
        *[["store", "--params", params, "--input", root / "raw.nc", "--level", n,
           "--out", root / "store" / f"level_{n}.nc"] for n in (8, 16)],
        ["train", "--params", params, "--run", "r", "--store", root / "store",
         "--out", root / "models" / "r" / "model.pt"],
    ]
    for argv in steps:
        assert cli.main([str(a) for a in argv]) == 0, argv
    return root


def source_file(root, name, **changes):
    """A scientist's file with exotic names (conc over member, lat, lon), then ``changes``."""
    conc = np.random.default_rng(0).normal(size=(8, 16, 16))
    data = {"conc": conc, **changes.get("data", {})}
    shape = changes.get("shape")
    if shape:
        data["conc"] = np.random.default_rng(0).normal(size=shape)
    dims = changes.get("dims", ("member", "lat", "lon"))
    ds = xr.Dataset({k: (dims, v) for k, v in data.items()})
    path = root / name
    ds.to_netcdf(path)
    return str(path)


SOURCE = {"variables": ["conc"], "dims": {"sample": "member", "y": "lat", "x": "lon"}}

# (id, params override, expected text) for `mldiff simulate`
PARAMS_CASES = [
    ("unknown key", {"pde": {"nn": 64}}, "pde.nn: unknown key; did you mean 'n'?"),
    ("unknown section", {"stor": {}}, "stor: unknown key; did you mean 'store'?"),
    ("wrong type", {"pde": {"n": "big"}}, "pde.n:"),
    ("not a power of two", {"pde": {"n": 100}}, "pde.n: expected a power of two"),
    ("grid too small", {"pde": {"n": 4}}, "pde.n:"),
    ("negative time", {"pde": {"times": [-1.0]}}, "pde.times.0:"),
    ("decreasing times", {"pde": {"times": [1.0, 0.5]}}, "expected strictly increasing"),
    ("bad laplacian", {"pde": {"laplacian": "fd"}}, "pde.laplacian:"),
    ("bad dtype", {"pde": {"dtype": "float16"}}, "pde.dtype:"),
    ("unknown system", {"pde": {"system": "navier_stokes"}}, "navier_stokes"),
    ("unknown pde parameter", {"pde": {"parameters": {"Duu": 1.0}}}, "Duu"),
    ("dt0 above dt_max", {"pde": {"solver": {"dt0": 1.0, "dt_max": 0.1}}}, "must not exceed"),
    ("no samples", {"pde": {"n_samples": 0}}, "pde.n_samples:"),
    ("level not a power of two", {"store": {"levels": [8, 12]}}, "expected powers of two"),
    ("levels decreasing", {"store": {"levels": [16, 8]}}, "expected strictly increasing"),
    ("level above grid", {"store": {"levels": [8, 32]}}, "finest level 32 exceeds"),
    ("snapshot not saved", {"store": {"time": 3.0}}, "store.time: 3.0 is not one of"),
    ("split not summing to 1", {"store": {"split": {"train": 0.5, "validation": 0.1,
                                                     "test": 0.1}}}, "must be 1"),
    ("no species", {"store": {"species": []}}, "store.species:"),
    ("gamma not trace class", {"priors": {"matern": {"params": {"gamma": 0.9}}}},
     "gamma: expected > 1"),
    ("unknown prior", {"priors": {"matern": {"name": "brownian"}}}, "brownian"),
    ("unknown network", {"networks": {"fno": {"arch": "transformer"}}}, "transformer"),
    ("unknown hyperparameter", {"networks": {"fno": {"params": {"depthh": 2}}}}, "depthh"),
    ("run with unknown network", {"train": {"runs": {"r": {"network": "mlp"}}}},
     "train.runs.r.network: 'mlp' is not one of networks"),
    ("schedule level not stored", {"train": {"runs": {"r": {"schedule": [[32, 2]]}}}},
     "levels [32] are not in store.levels"),
    ("modes too many for grid", {"networks": {"fno": {"params": {"modes": 12}}}},
     "too small for networks.fno modes=12"),
    ("dimvarying grid too coarse for modes",
     {"diffusion": {"process": "dimvarying", "options": {"factors": [2, 4],
                                                         "switch_times": [0.4, 0.6]}}},
     "too small for networks.fno modes=4"),
    ("multilevel unet", {"networks": {"u": {"arch": "unet", "params": {"width": 4}}},
                         "train": {"runs": {"r": {"network": "u",
                                                  "schedule": [[8, 1], [16, 1]]}}}},
     "the unet is resolution-bound"),
    ("resolution not a power of two", {"sample": {"resolutions": [24]}}, "sample.resolutions:"),
    ("beta_max below beta_min", {"diffusion": {"beta_min": 5.0, "beta_max": 1.0}},
     "beta_max (1.0) must be >= beta_min"),
    ("unknown process", {"diffusion": {"process": "ve"}}, "'ve'"),
    ("batch not divisible by processes", {"train": {"processes": 3}},
     "train.batch_size: 2 is not divisible"),
    ("bad run name", {"train": {"runs": {"r/../x": {"network": "fno", "prior": "matern",
                                                     "schedule": [[8, 2]]}}}},
     "train.runs: run names must be 1 to 64 letters"),
]


@pytest.mark.parametrize(("override", "expected"), [c[1:] for c in PARAMS_CASES],
                         ids=[c[0] for c in PARAMS_CASES])
def test_bad_params(tmp_path, capsys, override, expected):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(merged(override)))
    out = tmp_path / "raw.nc"
    code, errors = run_cli(capsys, ["simulate", "--params", path, "--out", out])
    assert code != 0 and len(errors) == 1 and expected in errors[0], errors
    assert str(path) in errors[0]
    assert not out.exists() and not list(tmp_path.glob(".*"))


FILE_CASES = [
    ("params file missing", lambda d: (d / "nope.yaml", None), "nope.yaml: params file not found"),
    ("params not YAML", lambda d: (d / "p.yaml", "pde: [oops"), "p.yaml: not valid YAML"),
    ("params not a mapping", lambda d: (d / "p.yaml", "- 1\n- 2\n"), "expected a YAML mapping"),
]


@pytest.mark.parametrize(("make", "expected"), [c[1:] for c in FILE_CASES],
                         ids=[c[0] for c in FILE_CASES])
def test_bad_params_files(tmp_path, capsys, make, expected):
    path, text = make(tmp_path)
    if text is not None:
        path.write_text(text)
    code, errors = run_cli(capsys, ["simulate", "--params", path, "--out", tmp_path / "o.nc"])
    assert code != 0 and len(errors) == 1 and expected in errors[0], errors
    assert not (tmp_path / "o.nc").exists()


def _garbage(path):
    path.write_text("this is not netcdf")
    return path


def _truncated(path, built):
    data = (built / "raw.nc").read_bytes()
    path.write_bytes(data[: len(data) // 3])
    return path


# (id, builds a store input from the valid tree, expected text) for `mldiff store`
STORE_INPUT_CASES = [
    ("input missing", lambda b, d: d / "absent.nc", "absent.nc: file not found"),
    ("input not NetCDF", lambda b, d: _garbage(d / "text.nc"), "text.nc: not a readable"),
    ("input truncated", lambda b, d: _truncated(d / "cut.nc", b), "cut.nc"),
    ("input is a level file", lambda b, d: b / "store" / "level_8.nc", "level_8.nc"),
]


@pytest.mark.parametrize(("make", "expected"), [c[1:] for c in STORE_INPUT_CASES],
                         ids=[c[0] for c in STORE_INPUT_CASES])
def test_bad_store_inputs(built, tmp_path, capsys, make, expected):
    source = make(built, tmp_path)
    out = tmp_path / "store" / "level_8.nc"
    code, errors = run_cli(capsys, ["store", "--params", built / "params.yaml", "--input",
                                    source, "--level", 8, "--out", out])
    assert code != 0 and len(errors) == 1 and expected in errors[0], errors
    assert not out.exists()


# (id, kwargs of source_file, source-block changes, expected text) for data.source imports
SOURCE_CASES = [
    ("wrong variable name", {}, {"variables": ["concentration"]},
     "variable(s) ['concentration'] not found"),
    ("missing dimension", {}, {"dims": {"sample": "member", "y": "lat", "x": "longitude"}},
     "missing dimension(s) ['longitude']"),
    ("non-square grid", {"shape": (8, 16, 8)}, {}, "expected a square n x n grid"),
    ("NaN values", {"data": {"conc": np.full((8, 16, 16), np.nan)}}, {}, "NaN or inf"),
    ("huge values", {"data": {"conc": np.full((8, 16, 16), 1e35)}}, {}, "expected |values|"),
    ("text values", {"data": {"conc": np.full((8, 16, 16), "a")}}, {}, "expected numbers"),
    ("time index absent", {}, {"time": {"dim": "step", "index": 3}}, "step"),
]


@pytest.mark.parametrize(("file_kw", "block", "expected"), [c[1:] for c in SOURCE_CASES],
                         ids=[c[0] for c in SOURCE_CASES])
def test_bad_outside_data(built, tmp_path, capsys, file_kw, block, expected):
    path = source_file(tmp_path, "mine.nc", **file_kw)
    source = {"path": path, **SOURCE, **block}
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(merged({"data": {"source": source},
                                             "store": {"species": source["variables"]},
                                             "reference": {"resolutions": []}})))
    out = tmp_path / "raw.nc"
    code, errors = run_cli(capsys, ["simulate", "--params", params, "--out", out])
    assert code != 0 and len(errors) == 1 and expected in errors[0], errors
    assert "mine.nc" in errors[0] and not out.exists()


def test_outside_data_with_indivisible_grid_is_refused_at_import(built, tmp_path, capsys):
    path = source_file(tmp_path, "mine.nc", shape=(8, 12, 12))
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(merged({"data": {"source": {"path": path, **SOURCE}},
                                             "store": {"species": ["conc"]},
                                             "reference": {"resolutions": []}})))
    out = tmp_path / "raw.nc"
    code, errors = run_cli(capsys, ["simulate", "--params", params, "--out", out])
    assert code == 2 and len(errors) == 1 and not out.exists()
    assert "mine.nc: grid 12x12 is not a power-of-two multiple of store.levels [8, 16]" in errors[0]


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def _evil(path):
    path.write_bytes(pickle.dumps({"format": 1, "spec": Evil()}))
    return path


def _foreign(path, built):
    """A model file whose weights belong to another network (wider FNO)."""
    obj = torch.load(built / "models" / "r" / "model.pt", weights_only=True)
    obj["ema"] = {k: torch.cat([v, v]) if v.ndim else v for k, v in obj["ema"].items()}
    torch.save(obj, path)
    return path


def _checkpoint(path, built):
    obj = torch.load(built / "models" / "r" / "model.pt", weights_only=True)
    torch.save({"format": 1, "key": "x", "model": obj["ema"]}, path)
    return path


MODEL_CASES = [
    ("model missing", lambda b, d: d / "none.pt", "none.pt: checkpoint not found"),
    ("model truncated", lambda b, d: _truncate_model(d / "cut.pt", b), "cut.pt: not a loadable"),
    ("pickle that is not weights", lambda b, d: _evil(d / "evil.pt"), "evil.pt: not a loadable"),
    ("weights of another network", lambda b, d: _foreign(d / "other.pt", b),
     "other.pt: weights do not match"),
    ("training checkpoint given as model", lambda b, d: _checkpoint(d / "ckpt.pt", b),
     "ckpt.pt: a training checkpoint, not a trained model file"),
]


def _truncate_model(path, built):
    data = (built / "models" / "r" / "model.pt").read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize(("make", "expected"), [c[1:] for c in MODEL_CASES],
                         ids=[c[0] for c in MODEL_CASES])
def test_bad_model_files(built, tmp_path, capsys, make, expected):
    model = make(built, tmp_path)
    out = tmp_path / "n16.nc"
    code, errors = run_cli(capsys, ["sample", "--params", built / "params.yaml", "--model",
                                    model, "--resolution", 16, "--out", out])
    assert code != 0 and len(errors) == 1 and expected in errors[0], errors
    assert not out.exists()
    assert "pwned" not in capsys.readouterr().out


def test_a_level_file_altered_after_writing_is_refused(built, tmp_path, capsys):
    store = tmp_path / "store"
    store.mkdir()
    for n in (8, 16):
        (store / f"level_{n}.nc").write_bytes((built / "store" / f"level_{n}.nc").read_bytes())
    import netCDF4

    with netCDF4.Dataset(store / "level_8.nc", "a") as nc:
        nc["u"][0, 0, 0] = 42.0
    out = tmp_path / "model.pt"
    code, errors = run_cli(capsys, ["train", "--params", built / "params.yaml", "--run", "r",
                                    "--store", store, "--out", out])
    assert code != 0 and "level_8.nc: checksum mismatch" in errors[0] and not out.exists()


def test_catalogue_has_at_least_forty_cases():
    cases = (PARAMS_CASES + FILE_CASES + STORE_INPUT_CASES + SOURCE_CASES + MODEL_CASES)
    assert len(cases) + 2 >= 40
    assert io.CHECKSUM_ATTR  # checksums are what the altered-file case relies on
