"""Helpers shared by tests: running the tools, comparing outputs, a small Gaussian store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from mldiff import config, io
from mldiff.datasets import build_level, canonical_dataset
from mldiff.diffusion import build_prior

DATA_SCALE = 4.0  # data covariance C = DATA_SCALE * Q_matern


def gaussian_store(tmp_path, levels=(8, 16), samples=160, seed=0):
    """Level files of fields x ~ N(0, DATA_SCALE · Q) drawn on the finest grid (neumann)."""
    prior = build_prior("matern", gamma=1.5, scale=DATA_SCALE)
    g = torch.Generator().manual_seed(seed)
    x = prior.sample((samples,), levels[-1], "neumann", g, torch.float64)
    source = canonical_dataset({"u": x.numpy()}, length=2.0, origin=-1.0, boundary="neumann")
    paths = {}
    for n in levels:
        paths[n] = tmp_path / f"level_{n}.nc"
        io.write_netcdf(build_level(source, n, split=(0.6, 0.4, 0.0), seed=0), paths[n])
    return paths


def params_for(levels, schedule, **train):
    runs = {"run": {"network": "fno", "prior": "matern", "schedule": schedule}}
    return config.validate({
        "pde": {"n": levels[-1], "times": [1.0]},
        "store": {"levels": list(levels), "time": 1.0},
        "priors": {"matern": {"name": "matern", "params": {"gamma": 1.5}}},
        "networks": {"fno": {"arch": "fno", "params": {"width": 16, "modes": 8, "layers": 2,
                                                        "time_dim": 16}}},
        "train": {"runs": runs, "device": "cpu", "validate_every": 5, "checkpoint_every": 3,
                  "batch_size": 8, **train},
        "sample": {"resolutions": [levels[-1]]},
    })


BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


def run(cmd: list[str], cwd: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def data_files(root: Path) -> dict[str, Path]:
    """Pipeline outputs under data/ (not logs, benchmarks or the user's external data)."""
    skip = {"logs", "benchmarks", "external"}
    return {
        str(p.relative_to(root)): p
        for p in (root / "data").rglob("*")
        if p.is_file() and p.relative_to(root / "data").parts[0] not in skip
        and not p.name.startswith(".")
    }


# Wall-clock attributes, and the checksums of all attributes that cover them (a file's own, and
# the one it records of its source).
TIMING_ATTRS = {"history", "source_history", "sampling_time_s", "training_summary",
                "mldiff_attrs_sha256", "source_mldiff_attrs_sha256"}


def assert_same_netcdf(a: Path, b: Path) -> None:
    """Same variables, values and attributes (wall-clock attributes excepted)."""
    with xr.open_dataset(a) as da, xr.open_dataset(b) as db:
        assert set(da.variables) == set(db.variables), a
        for name in da.variables:
            np.testing.assert_array_equal(da[name].values, db[name].values, err_msg=str(a))
        keys = (set(da.attrs) | set(db.attrs)) - TIMING_ATTRS
        differ = sorted(k for k in keys if str(da.attrs.get(k)) != str(db.attrs.get(k)))
        assert not differ, f"{a}: attrs differ: {differ}"


def run_cli(capsys, argv) -> tuple[int, list[str]]:
    """Run ``mldiff argv`` in-process: the exit code and the ``mldiff: error:`` lines."""
    from mldiff import cli

    code = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if line.startswith("mldiff: error:")]
