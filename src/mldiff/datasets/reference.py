"""Reference data on grids finer than the store, simulated directly from the same functions.

Levels coarsened from one simulation share one law, so the store is the ground truth up to its
finest level ``F``. Above ``F`` a fresh simulation with white noise *per cell* would be another
law (per-cell noise loses large-scale content as cells shrink). Here sample ``i`` restarts from
its own initial condition drawn on the ``pde.n`` grid, ``u0 = system.initial_condition(pde.n,
seed + i)``, held piecewise constant on the finer ``n × n`` cells: the same initial function,
solved with a finer spatial discretization. As ``n`` grows the fields converge to the
continuum solution ``u(t; u0)`` (second order in ``h`` for the finite-volume Laplacian), whose
law the store approximates on ``pde.n`` cells; ``relative_l2_to_store`` (attr) is the
per-sample difference at the store's finest level, restricted by ``store.method``, i.e. the
store's own discretization error as seen from the finer grid.

A reference file has the layout of a store level (:mod:`mldiff.datasets.store`) with the
store's sample indices, split codes and normalization statistics: the whole test split and the
first ``reference.train_samples`` training samples (validation samples are not simulated).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import xarray as xr

from mldiff import io
from mldiff.config import Params, step_params
from mldiff.datasets.coarsen import restrict
from mldiff.datasets.store import SPLITS, assemble_level, open_level
from mldiff.errors import MldiffError
from mldiff.pde import simulate_dataset

LAW = ("the PDE solution from each sample's initial condition drawn on {m}x{m} cells and held "
       "piecewise constant, simulated on {n}x{n} cells (the store's law, discretized finer)")


def reference_samples(level: xr.Dataset, train_samples: int) -> np.ndarray:
    """Sorted sample indices to simulate: the test split and the first ``train_samples`` of
    the training split of a store ``level``."""
    codes, samples = level["split"].values, level["sample"].values
    train = samples[codes == SPLITS.index("train")][:train_samples]
    return np.sort(np.concatenate([train, samples[codes == SPLITS.index("test")]]))


def build_reference(params: Params, level_path: Path, n: int, progress: bool = True) -> xr.Dataset:
    """Simulate the reference of grid ``n`` for the store whose finest level is ``level_path``.

    Returns a level Dataset (float32, ``(sample, y, x)`` per species of ``store.species``) at
    ``store.time``, with the store's split codes and statistics and attrs ``reference_law``,
    ``initial_grid`` and ``relative_l2_to_store`` (``‖R u_n − u_F‖ / ‖u_F‖`` over all samples
    and species, ``R`` the restriction to the level's grid ``F``).
    """
    if n not in params.reference.resolutions:
        raise MldiffError(f"--resolution {n}: not in reference.resolutions "
                          f"{params.reference.resolutions}")
    level = open_level(level_path)
    pde, store = params.pde, params.store
    expected = {"source_pde": pde.system, "source_seed": params.seed,
                "source_initial_grid": pde.n, "level": store.levels[-1],
                "time_value": store.time}
    for key, value in expected.items():
        if str(level.attrs.get(key, value)) != str(value):  # (absent: an older store)
            raise MldiffError(f"{level_path}: attribute {key!r} is {level.attrs.get(key)} but "
                              f"params give {value}; rebuild the store")
    samples = reference_samples(level, params.reference.train_samples)
    times = [t for t in pde.times if t <= store.time]
    sim = simulate_dataset(
        pde.system, pde.parameters, n, times, samples.tolist(), params.seed, initial_grid=pde.n,
        progress=progress, **pde.solver_kwargs(),
    ).isel(time=-1, drop=True)
    fields = {s: sim[s].values for s in store.species}
    stored = level.sel(sample=samples)
    difference = norm = 0.0
    for s, values in fields.items():
        coarse = restrict(torch.from_numpy(values), n // level.sizes["x"], store.method,
                          str(level.attrs["boundary"])).numpy()
        difference += float(((coarse - stored[s].values) ** 2).sum())
        norm += float((stored[s].values.astype(np.float64) ** 2).sum())
    stats = (level["norm_mean"].values, level["norm_std"].values)
    attrs = {
        **io.provenance(step_params(params, "reference")),
        "title": f"reference for {level.attrs.get('title', 'the store')} at {n}x{n}",
        "reference_law": LAW.format(m=pde.n, n=n),
        "initial_grid": pde.n,
        "solver_steps": sim.attrs["solver_steps"],
        "coarsening": "none",
        "coarsening_factor": 1,
        "source_resolution": n,
        "relative_l2_to_store": np.sqrt(difference / norm),
    }
    origin = f"copied from the store ({level_path.name}: its training split)"
    return assemble_level(stored, fields, stored["split"].values, stats, origin, attrs)
