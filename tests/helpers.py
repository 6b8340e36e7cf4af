"""Small builders shared by the training tests: a Gaussian store and params for it."""

from __future__ import annotations

import torch

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
