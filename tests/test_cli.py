"""The CLI: each step writes its output atomically; bad input gives one line, exit 2, no output."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from helpers import run_cli
from mldiff.datasets import open_level

SMALL = {
    "pde": {"n": 16, "n_samples": 6, "batch_size": 3, "times": [0.5, 1.0]},
    "store": {"levels": [8, 16], "time": 1.0, "split": {"train": 0.5, "validation": 0.25,
                                                         "test": 0.25}},
    "networks": {"fno": {"arch": "fno", "params": {"modes": 4}}},
    "train": {"runs": {"r": {"network": "fno", "prior": "matern", "schedule": [[8, 2]]}}},
    "sample": {"resolutions": [16]},
}


@pytest.fixture
def raw(tmp_path, write_params, capsys):
    params = write_params(SMALL)
    out = tmp_path / "raw.nc"
    assert run_cli(capsys, ["simulate", "--params", params, "--out", out])[0] == 0
    return params, out


def test_simulate_then_store_round_trip(tmp_path, raw, capsys):
    params, out = raw
    with xr.open_dataset(out) as ds:
        assert ds["u"].dims == ("sample", "time", "y", "x")
        assert ds.sizes["sample"] == 6 and list(ds["time"].values) == [0.5, 1.0]
        assert "git_revision" in ds.attrs and "params" in ds.attrs
    level = tmp_path / "level_8.nc"
    code, _ = run_cli(capsys, ["store", "--params", params, "--input", out, "--level", 8,
                      "--out", level])
    assert code == 0
    ds = open_level(level)
    with xr.open_dataset(out) as source:
        fine = source["u"].sel(time=1.0).values
    coarse = fine.reshape(6, 8, 2, 8, 2).mean(axis=(2, 4))
    np.testing.assert_allclose(ds["u"].values, coarse, rtol=1e-5, atol=1e-6)


def corrupt(path):
    path.write_bytes(b"CDF\x01garbage")
    return path


def truncated(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


BAD_STORE = [
    ("missing input", lambda raw: raw.with_name("nope.nc"), ["--level", 8], "file not found"),
    ("corrupt input", lambda raw: corrupt(raw), ["--level", 8], "raw.nc"),
    ("truncated input", lambda raw: truncated(raw), ["--level", 8], "raw.nc"),
    ("level not in params", lambda raw: raw, ["--level", 4], "--level 4: not in store.levels"),
]


@pytest.mark.parametrize(("case", "make_input", "extra", "expected"), BAD_STORE,
                         ids=[c[0] for c in BAD_STORE])
def test_store_bad_input(tmp_path, raw, capsys, case, make_input, extra, expected):
    params, out = raw
    dest = tmp_path / "store" / "level_8.nc"
    code, errors = run_cli(capsys, ["store", "--params", params, "--input", make_input(out),
                           *extra, "--out", dest])
    assert code == 2
    assert len(errors) == 1 and expected in errors[0]
    assert not dest.exists()
    assert not dest.parent.exists() or not list(dest.parent.iterdir())


def test_a_species_the_system_lacks_is_refused_up_front(tmp_path, raw, write_params, capsys):
    _, out = raw
    params = write_params({**SMALL, "store": {**SMALL["store"], "species": ["w"]}}, "p2.yaml")
    dest = tmp_path / "level_8.nc"
    code, errors = run_cli(capsys, ["store", "--params", params, "--input", out, "--level", 8,
                           "--out", dest])
    assert code == 2 and "p2.yaml: store.species: ['w'] are not species" in errors[0]
    assert not dest.exists()


BAD_PARAMS = [
    ({"pde": {"n": 12}}, "pde.n: expected a power of two"),
    ({"pde": {"sytem": "x"}}, "did you mean 'system'"),
    ({"pde": {"system": "nope"}}, "nope"),
    ({"data": {"source": {"path": "missing.nc", "variables": ["u"],
                          "dims": {"sample": "s", "y": "y", "x": "x"}}},
      "reference": {"resolutions": []}}, "missing.nc"),
]


@pytest.mark.parametrize(("override", "expected"), BAD_PARAMS, ids=[e for _, e in BAD_PARAMS])
def test_simulate_bad_params(tmp_path, write_params, capsys, override, expected):
    params = write_params(override)
    out = tmp_path / "raw.nc"
    code, errors = run_cli(capsys, ["simulate", "--params", params, "--out", out])
    assert code == 2 and len(errors) == 1 and expected in errors[0]
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))


def test_preset_writes_valid_params_and_rejects_unknown(tmp_path, capsys):
    out = tmp_path / "params.yaml"
    assert run_cli(capsys, ["preset", "tiny", "--out", out])[0] == 0
    from mldiff import config

    assert config.load_params(out).pde.n == 32
    code, errors = run_cli(capsys, ["preset", "huge", "--out", tmp_path / "x.yaml"])
    assert code == 2 and "preset 'huge'" in errors[0] and "tiny" in errors[0]


def test_version_and_step_help(capsys):
    from mldiff import __version__, cli

    for argv in (["--version"], ["train", "--help"]):
        with pytest.raises(SystemExit) as exit_:
            cli.main(argv)
        assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"mldiff {__version__}\n")
    assert "Train one run" in out  # the description
    assert "--params PARAMS       params file (default: params.yaml)" in out
    assert "example:\n  mldiff train --run " in out
    assert "--run RUN             name in train.runs\n" in out  # required: no default shown
