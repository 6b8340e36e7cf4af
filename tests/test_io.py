"""Atomic writes, provenance and checksums: no half-written or silently altered file is trusted."""

from __future__ import annotations

import netCDF4
import numpy as np
import pytest
import xarray as xr

from mldiff import io
from mldiff.errors import MldiffError


def dataset():
    return xr.Dataset({"u": (("sample", "y", "x"), np.arange(32.0).reshape(2, 4, 4))})


def test_atomic_path_leaves_nothing_when_the_writer_fails(tmp_path):
    target = tmp_path / "out" / "a.nc"
    with pytest.raises(RuntimeError), io.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert not target.exists() and list(target.parent.iterdir()) == []


def test_round_trip_keeps_values_and_records_provenance(tmp_path):
    ds = dataset()
    ds.attrs.update(io.provenance({"store": {"levels": [8]}}))
    io.write_netcdf(ds, tmp_path / "a.nc")
    back = io.open_dataset(tmp_path / "a.nc", variables=("u",), dims=("sample",))
    np.testing.assert_array_equal(back["u"].values, ds["u"].values)
    assert back.attrs["params"] == '{"store": {"levels": [8]}}'
    assert {"git_revision", "torch_version", "mldiff_version", "Conventions"} <= set(back.attrs)
    with netCDF4.Dataset(tmp_path / "a.nc") as nc:
        assert nc["u"].chunking() == [1, 4, 4] and nc["u"].filters()["zlib"]


def test_a_modified_file_fails_its_checksum(tmp_path):
    path = tmp_path / "a.nc"
    io.write_netcdf(dataset(), path)
    with netCDF4.Dataset(path, "a") as nc:
        nc["u"][0, 0, 0] = 99.0
    with pytest.raises(MldiffError, match="a.nc: checksum mismatch"):
        io.open_dataset(path)


@pytest.mark.parametrize(
    ("content", "expected"),
    [(None, "file not found"), (b"", "not a readable"), (b"hello world", "not a readable")],
)
def test_unreadable_files_name_the_file(tmp_path, content, expected):
    path = tmp_path / "bad.nc"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(MldiffError, match=f"bad.nc: {expected}"):
        io.open_dataset(path)


def test_missing_variables_and_nonfinite_values_are_named(tmp_path):
    ds = dataset()
    ds["u"][0, 0, 0] = np.nan
    io.write_netcdf(ds, tmp_path / "a.nc")
    with pytest.raises(MldiffError, match=r"missing variable\(s\) \['v'\]"):
        io.open_dataset(tmp_path / "a.nc", variables=("v",))
    with pytest.raises(MldiffError, match="'u' contains NaN or inf"):
        io.open_dataset(tmp_path / "a.nc", variables=("u",))


def test_temporaries_of_killed_writers_are_removed_by_the_next_write(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale = tmp_path / f".a.nc.{dead}.tmp"
    stale.write_text("half-written by a killed process")
    io.write_netcdf(dataset(), tmp_path / "a.nc")
    assert not stale.exists() and (tmp_path / "a.nc").exists()
    stale.write_text("again")
    io.discard(tmp_path / "a.nc")
    assert list(tmp_path.iterdir()) == []
