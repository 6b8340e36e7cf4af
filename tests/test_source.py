"""Reading the simulated layout and outside files by configuration; bad input fails clearly."""

import numpy as np
import pytest
import xarray as xr

from mldiff.datasets import build_level, open_level, read_source
from mldiff.errors import MldiffError
from mldiff.io import write_netcdf

RNG = np.random.default_rng(0)


def simulated(path, n=16, samples=6, times=(0.0, 1.25, 2.5)):
    """A file in the simulator's layout: (sample, time, y, x), species u and v, on [-1, 1]²."""
    c = -1 + (np.arange(n) + 0.5) * 2 / n
    shape = (samples, len(times), n, n)
    ds = xr.Dataset(
        {s: (("sample", "time", "y", "x"), RNG.normal(size=shape)) for s in ("u", "v")},
        coords={
            "sample": np.arange(samples),
            "time": ("time", np.asarray(times), {"units": "1"}),
            "y": ("y", c, {"units": "1", "long_name": "y", "axis": "Y"}),
            "x": ("x", c, {"units": "1", "long_name": "x", "axis": "X"}),
        },
        attrs={"pde": "fitzhugh_nagumo", "boundary": "neumann"},
    )
    ds.to_netcdf(path)
    return ds


def exotic(path, n=16, members=5, steps=4, coords=True, **overrides):
    """An outside file: variable 'conc' plus a distractor, dims member/step/lat/lon."""
    data = RNG.normal(size=(steps, members, n, n))
    ds = xr.Dataset(
        {
            "conc": (("step", "member", "lat", "lon"), data, {"units": "mol/L"}),
            "land_mask": (("lat", "lon"), np.ones((n, n))),
        },
        coords={"step": np.arange(steps) * 0.5},
    )
    if coords:
        deg = 10 + (np.arange(n) + 0.5) * 0.25
        ds = ds.assign_coords(
            lat=("lat", deg, {"units": "degrees_north"}),
            lon=("lon", deg, {"units": "degrees_east"}),
        )
    ds = ds.assign(overrides)
    ds.to_netcdf(path)
    return ds


EXOTIC = {
    "variables": ["conc"],
    "dims": {"sample": "member", "y": "lat", "x": "lon"},
    "time": {"dim": "step", "index": 2},
    "boundary": "periodic",
}


def test_simulated_layout_selects_time_by_value(tmp_path):
    raw = simulated(tmp_path / "sim.nc")
    ds = read_source(tmp_path / "sim.nc", time={"value": 1.25})
    assert ds["u"].dims == ("sample", "y", "x") and list(ds.data_vars) == ["u", "v"]
    np.testing.assert_array_equal(ds["v"].values, raw["v"].isel(time=1).values)
    assert ds.attrs["boundary"] == "neumann" and ds.attrs["source_pde"] == "fitzhugh_nagumo"
    assert ds.attrs["time_index"] == 1 and ds.attrs["time_value"] == 1.25
    assert ds.attrs["length"] == pytest.approx(2.0) and ds.attrs["origin"] == pytest.approx(-1.0)
    np.testing.assert_allclose(ds["x"].values, raw["x"].values)
    assert ds["y"].attrs["axis"] == "Y" and ds["x"].attrs["units"] == "1"


def test_exotic_names_become_a_store_by_configuration_alone(tmp_path):
    raw = exotic(tmp_path / "mine.nc")
    source = read_source(tmp_path / "mine.nc", **EXOTIC)
    np.testing.assert_array_equal(source["conc"].values, raw["conc"].isel(step=2).values)
    assert source.attrs["length"] == pytest.approx(4.0)  # 16 cells of 0.25 degrees
    assert source.attrs["origin"] == pytest.approx(10.0)
    assert source["y"].attrs["units"] == "degrees_north"
    write_netcdf(
        build_level(source, 8, method="spectral", split=(0.6, 0.2, 0.2)), tmp_path / "l.nc"
    )
    level = open_level(tmp_path / "l.nc")
    assert level["conc"].shape == (5, 8, 8) and level.attrs["species"] == "conc"
    np.testing.assert_allclose(level["x"].values, 10 + (np.arange(8) + 0.5) * 0.5)
    np.testing.assert_allclose(
        level["conc"].values.mean((1, 2)), source["conc"].values.mean((1, 2)), atol=1e-5
    )


def test_file_without_coordinates_uses_the_default_domain(tmp_path):
    exotic(tmp_path / "bare.nc", coords=False)
    ds = read_source(tmp_path / "bare.nc", **EXOTIC)
    assert ds.attrs["length"] == 2.0 and ds.attrs["origin"] == -1.0
    np.testing.assert_allclose(ds["x"].values[[0, -1]], [-1 + 1 / 16, 1 - 1 / 16])
    ds = read_source(tmp_path / "bare.nc", **EXOTIC, length=6.0)
    assert ds.attrs["origin"] == -3.0


def _not_netcdf(p):
    p.write_text("this is not a dataset")


def _non_square(p):
    exotic(p).isel(lon=slice(0, 8)).to_netcdf(p.with_name("ns.nc"))
    p.with_name("ns.nc").replace(p)


BAD = [  # (writer, config override, what the message must mention)
    (None, {}, "not found"),
    (_not_netcdf, {}, "not a readable"),
    (exotic, {"variables": ["temperature"]}, "'conc'"),  # lists what exists
    (exotic, {"dims": {"sample": "ensemble", "y": "lat", "x": "lon"}}, "missing dimension"),
    (_non_square, {}, "square"),
    (lambda p: exotic(p, conc=lambda d: d["conc"].where(d["lat"] < 12)), {}, "NaN"),
    (lambda p: exotic(p, conc=lambda d: d["conc"].where(d["conc"] < 2, np.inf)), {}, "inf"),
    (exotic, {"time": {"dim": "step", "value": 0.75}}, "time value"),
    (exotic, {"time": {"dim": "step", "index": 9}}, "out of range"),
    (exotic, {"time": {"dim": "step"}}, "set time.index"),
    (exotic, {"time": {"dim": None}}, "expected"),  # step left on the variable
    (exotic, {"boundary": "dirichlet"}, "boundary"),
    (exotic, {"length": 2.0}, "contradicts"),
]


@pytest.mark.parametrize(("writer", "override", "needle"), BAD)
def test_bad_input_names_the_file(tmp_path, writer, override, needle):
    path = tmp_path / "bad_input.nc"
    if writer is not None:
        writer(path)
    with pytest.raises(MldiffError, match=needle) as err:
        read_source(path, **{**EXOTIC, **override})
    assert "bad_input.nc" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [({"n": 12}, "power-of-two multiple"), ({"n": 8, "split": (0.5, 0.5, 0.0)}, "too few")],
)
def test_store_level_errors_name_the_source_file(tmp_path, kwargs, needle):
    exotic(tmp_path / "few.nc", members=1)
    source = read_source(tmp_path / "few.nc", **EXOTIC)
    with pytest.raises(MldiffError, match=needle) as err:
        build_level(source, **kwargs)
    assert "few.nc" in str(err.value)
