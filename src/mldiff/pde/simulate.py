"""Simulate reaction–diffusion datasets: seeded initial conditions, batched ETDRK4, xarray output.

:func:`solve` integrates given initial states; :func:`simulate_dataset` draws the initial states
from the system's seeded generator (sample ``i`` uses seed ``seed + i``) and returns snapshots at
the requested times as an :class:`xarray.Dataset`; :func:`estimate_step_error` measures the time
discretization error of a step setting by step halving.

Step settings (plain arguments, shared by all three): ``dt0`` first step (default
:func:`resolve_dt0`: ``min(0.02, 0.4 h²/max D)``), ``ramp_steps`` steps per size before doubling,
``dt_max`` largest step (see :func:`mldiff.pde.etdrk4.step_schedule`). Measured relative L2 error
of ``u``, FitzHugh–Nagumo from white noise, saves at t = 0.05, 0.5, 2.5, 5, largest over those
times, against a 4096-step reference (spectral / finite-volume Laplacian, n = 128):

* defaults ``dt_max=0.5, dt0=0.0195, ramp_steps=2`` (20 steps to t = 5): 1.6e-4 / 9.2e-5;
  finite volume at n = 512 (dt0 = 0.0012): see the benchmark (tests/benchmarks/bench_solver.py).
* :data:`TIGHT` ``dt_max=0.1, dt0=1e-3, ramp_steps=4`` (75 steps): 1.5e-6 / 1.8e-6 (5e-7 at
  t = 5); 7e-7 at t = 5 for n = 512. float32 adds about 1e-6.

The first steps (the reaction transient from white noise) dominate: the error scales with
``dt0 · max D / h²``. :func:`estimate_step_error` measures any setting.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from mldiff import spectral
from mldiff.errors import MldiffError
from mldiff.io import provenance
from mldiff.pde.etdrk4 import ETDRK4, step_schedule
from mldiff.pde.systems import ReactionDiffusionSystem, get_system

DT_MAX = 0.5
DT0 = 0.02
DT0_CELL = 0.4
RAMP_STEPS = 2
TIGHT: dict[str, Any] = {"dt_max": 0.1, "dt0": 1e-3, "ramp_steps": 4}
LAPLACIANS = ("spectral", "finite_volume")
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _check_times(times: Sequence[float]) -> list[float]:
    try:
        values = [float(t) for t in np.atleast_1d(np.asarray(times, dtype=float)).ravel()]
    except (TypeError, ValueError):
        raise MldiffError(f"times: expected a list of numbers, got {times!r}") from None
    if not values or not all(math.isfinite(t) and t >= 0 for t in values):
        raise MldiffError(f"times: expected finite values >= 0, got {list(times)}")
    if any(b <= a for a, b in zip(values, values[1:], strict=False)):
        raise MldiffError(f"times: expected strictly increasing values, got {values}")
    return values


def _stepper(
    system: ReactionDiffusionSystem,
    n: int,
    length: float,
    boundary: str | None,
    laplacian: str,
    dtype: torch.dtype,
    device: torch.device,
) -> ETDRK4:
    """ETDRK4 for ``system``: ``L_s = D_s ·`` (symbol of the ``laplacian`` on ``boundary``)."""
    boundary = boundary or system.boundary
    if boundary not in spectral.BOUNDARIES:
        raise MldiffError(f"boundary: expected one of {spectral.BOUNDARIES}, got {boundary!r}")
    if laplacian not in LAPLACIANS:
        raise MldiffError(f"laplacian: expected one of {LAPLACIANS}, got {laplacian!r}")
    if not (isinstance(n, int) and n >= 2) or not length > 0:
        raise MldiffError(f"grid: expected integer n >= 2 and length > 0, got {n=}, {length=}")
    symbol = spectral.laplacian_symbol(n, length, boundary, laplacian)
    linear = torch.tensor(system.diffusivities, dtype=torch.float64)[:, None, None] * symbol

    def nonlinear(u: torch.Tensor) -> torch.Tensor:
        return torch.stack(system.reaction(*u.unbind(1)), dim=1)

    return ETDRK4(linear, nonlinear, boundary, dtype=dtype, device=device)


def _run(
    stepper: ETDRK4,
    u0: torch.Tensor,
    times: list[float],
    schedule: list[list[float]],
    what: str,
) -> torch.Tensor:
    """Snapshots ``(batch, time, species, n, n)``; MldiffError naming ``what`` on blow-up."""
    out = []
    for t, u in zip(times, stepper.integrate(u0, schedule), strict=True):
        if not bool(torch.isfinite(u).all()):
            raise MldiffError(
                f"pde: the solution became non-finite by t = {t:g} ({what}); reduce pde.dt_max "
                "and/or pde.dt0, or check the pde parameters"
            )
        out.append(u)
    return torch.stack(out, dim=1)


def resolve_dt0(
    system: ReactionDiffusionSystem, n: int, length: float, dt0: float | None, dt_max: float
) -> float:
    """``dt0``, or by default ``min(dt_max, 0.02, 0.4 h² / max_s D_s)`` with ``h = length / n``.

    The white-noise transient lasts about the diffusive time ``h² / D`` of one cell, so the
    default first step shrinks like ``1/n²`` beyond n ≈ 128 (FitzHugh–Nagumo) and the error of
    the default settings hardly depends on ``n`` (a fixed ``dt0 = 0.02`` is 100× less accurate
    at n = 512); the cap 0.02 keeps the first step inside the stiff cubic reaction's range.
    """
    if dt0 is not None:
        return dt0
    d = max(system.diffusivities)
    cell = DT0_CELL * (length / n) ** 2 / d if d > 0 else DT0
    return min(dt_max, DT0, cell)


def _step_text(dt_max: float, dt0: float, ramp_steps: int) -> str:
    return f"dt_max={dt_max:g}, dt0={dt0:g}, ramp_steps={ramp_steps}"


def solve(
    system: ReactionDiffusionSystem,
    u0: torch.Tensor,
    times: Sequence[float],
    *,
    length: float = 2.0,
    boundary: str | None = None,
    laplacian: str = "spectral",
    dt_max: float = DT_MAX,
    dt0: float | None = None,
    ramp_steps: int = RAMP_STEPS,
) -> torch.Tensor:
    """Integrate explicit initial states ``u0`` ``(batch, species, n, n)`` from ``t = 0``.

    Returns the states at ``times`` (sorted, ``>= 0``) as ``(batch, time, species, n, n)`` in the
    dtype and on the device of ``u0``. ``boundary=None`` uses the system's default.
    """
    if u0.ndim != 4 or u0.shape[1] != len(system.species) or u0.shape[2] != u0.shape[3]:
        raise MldiffError(
            f"u0: expected shape (batch, {len(system.species)}, n, n), got {tuple(u0.shape)}"
        )
    if u0.dtype not in DTYPES.values():
        raise MldiffError(f"u0: expected dtype float32 or float64, got {u0.dtype}")
    times = _check_times(times)
    stepper = _stepper(system, u0.shape[-1], length, boundary, laplacian, u0.dtype, u0.device)
    dt0 = resolve_dt0(system, u0.shape[-1], length, dt0, dt_max)
    schedule = step_schedule(times, dt_max, dt0, ramp_steps)
    return _run(stepper, u0, times, schedule, _step_text(dt_max, dt0, ramp_steps))


def _device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError:
        raise MldiffError(f"device: expected 'auto', 'cpu' or 'cuda[:i]', got {device!r}") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise MldiffError(f"device: {device!r} requested but CUDA is not available; use 'auto'")
    return chosen


def _system(
    system: str | ReactionDiffusionSystem, parameters: Mapping[str, Any] | None
) -> ReactionDiffusionSystem:
    if isinstance(system, ReactionDiffusionSystem):
        if parameters:
            raise MldiffError("parameters: give them to the system instance, not both")
        return system
    return get_system(system, parameters)


def simulate_dataset(
    system: str | ReactionDiffusionSystem,
    parameters: Mapping[str, Any] | None,
    n: int,
    times: Sequence[float],
    n_samples: int | Sequence[int],
    seed: int,
    *,
    initial_grid: int | None = None,
    length: float = 2.0,
    origin: float = -1.0,
    boundary: str | None = None,
    laplacian: str = "spectral",
    batch_size: int = 16,
    dt_max: float = DT_MAX,
    dt0: float | None = None,
    ramp_steps: int = RAMP_STEPS,
    dtype: str = "float64",
    device: str = "auto",
    progress: bool = True,
) -> xr.Dataset:
    """Simulate trajectories on ``n × n`` cells of ``[origin, origin + length]²``.

    ``n_samples`` is a count ``N`` (samples ``0 … N−1``) or the sample indices themselves.
    Sample ``i`` starts from ``u0 = system.initial_condition(m, seed + i, length, origin)``
    drawn on ``m = initial_grid`` cells (default ``n``) and held piecewise constant on the
    ``n × n`` cells (``n`` a multiple of ``m``): with a fixed ``m`` every ``n`` discretizes the
    same initial *function*, so finer grids converge to one continuum law (second order in
    ``h`` for the finite-volume Laplacian) instead of a new law per grid (white noise per
    cell). The step schedule depends on the settings only, so the result does not depend on
    ``batch_size`` (bitwise on CPU for a given thread count; tested for FitzHugh–Nagumo and
    Gray–Scott). Returns dims ``(sample, time, y, x)`` with the indices as ``sample``
    coordinate, one variable per species, snapshots only at ``times`` (strictly increasing,
    ``>= 0``; 0 gives the initial state). Working memory is bounded by ``batch_size`` samples
    integrated at once; ``device="auto"`` picks CUDA when available.
    """
    system = _system(system, parameters)
    times = _check_times(times)
    if dtype not in DTYPES:
        raise MldiffError(f"dtype: expected one of {sorted(DTYPES)}, got {dtype!r}")
    indices = _indices(n_samples)
    for name, value, low in (("seed", seed, 0), ("batch_size", batch_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise MldiffError(f"{name}: expected an integer >= {low}, got {value!r}")
    m = n if initial_grid is None else initial_grid
    if not (isinstance(m, int) and 1 <= m <= n and n % m == 0):
        raise MldiffError(f"initial_grid: expected an integer dividing n = {n}, got {m!r}")
    torch_device = _device(device)
    boundary = boundary or system.boundary
    stepper = _stepper(system, n, length, boundary, laplacian, DTYPES[dtype], torch_device)
    dt0 = resolve_dt0(system, n, length, dt0, dt_max)
    schedule = step_schedule(times, dt_max, dt0, ramp_steps)
    steps = _step_text(dt_max, dt0, ramp_steps)
    count = len(indices)
    data = np.empty((len(system.species), count, len(times), n, n), dtype=dtype)
    with tqdm(total=count, unit="sample", desc=system.name, disable=not progress) as bar:
        for start in range(0, count, batch_size):
            batch = indices[start : start + batch_size]
            u0 = np.stack([system.initial_condition(m, seed + i, length, origin) for i in batch])
            u0 = u0.repeat(n // m, axis=-2).repeat(n // m, axis=-1)
            u0 = torch.from_numpy(u0).to(device=torch_device, dtype=DTYPES[dtype])
            what = f"samples {batch[0]}-{batch[-1]}, {steps}"
            result = _run(stepper, u0, times, schedule, what)
            data[:, start : start + len(batch)] = result.permute(2, 0, 1, 3, 4).cpu().numpy()
            bar.update(len(batch))
    return _dataset(
        system, data, indices, times, seed, m, length, origin, boundary, laplacian, steps, dtype,
        torch_device,
    )


def _indices(n_samples: int | Sequence[int]) -> list[int]:
    """``N`` → ``[0, …, N−1]``; a sequence of distinct integers ``>= 0`` as given."""
    if isinstance(n_samples, int) and not isinstance(n_samples, bool):
        if n_samples >= 1:
            return list(range(n_samples))
    elif isinstance(n_samples, Sequence | np.ndarray):
        values = [int(i) for i in n_samples if isinstance(i, int | np.integer)]
        if values and len(values) == len(n_samples) == len(set(values)) and min(values) >= 0:
            return values
    raise MldiffError(
        f"n_samples: expected an integer >= 1 or distinct sample indices >= 0, got {n_samples!r}"
    )


def _dataset(
    system: ReactionDiffusionSystem,
    data: np.ndarray,
    indices: list[int],
    times: list[float],
    seed: int,
    initial_grid: int,
    length: float,
    origin: float,
    boundary: str,
    laplacian: str,
    steps: str,
    dtype: str,
    device: torch.device,
) -> xr.Dataset:
    """Wrap ``data`` ``(species, sample, time, y, x)`` with CF coordinates and provenance."""
    n = data.shape[-1]
    centres = spectral.cell_centres(n, length, origin).numpy()
    coords = {
        "sample": ("sample", np.asarray(indices), {"long_name": "sample index"}),
        "time": (
            "time",
            np.asarray(times),
            {"units": "1", "long_name": "nondimensional time", "axis": "T"},
        ),
        "y": ("y", centres, {"units": "1", "long_name": "y", "axis": "Y"}),
        "x": ("x", centres, {"units": "1", "long_name": "x", "axis": "X"}),
    }
    variables = {
        s: (
            ("sample", "time", "y", "x"),
            data[i],
            {"units": "1", "long_name": system.long_names.get(s, s)},
        )
        for i, s in enumerate(system.species)
    }
    settings = {
        "pde": system.name,
        "pde_parameters": system.params,
        "pde_preset": system.preset,
        "boundary": boundary,
        "laplacian": laplacian,
        "length": length,
        "origin": origin,
        "steps": steps,
        "dtype": dtype,
        "seed": seed,
        "initial_grid": initial_grid,
    }
    attrs: dict[str, Any] = {
        "title": f"{system.name} reaction-diffusion simulation",
        "pde": system.name,
        **{f"pde_{k}": v for k, v in system.params.items()},
        "pde_parameters": json.dumps(system.params, sort_keys=True),
        "boundary": boundary,
        "laplacian": laplacian,
        "domain": f"[{origin:g}, {origin + length:g}]^2, {n}x{n} cell-centred cells",
        "solver": "pseudo-spectral ETDRK4 (Cox-Matthews; Kassam-Trefethen contour coefficients)",
        "solver_steps": steps,
        "solver_device": str(device),
        "seed": seed,
        "seed_convention": "sample i starts from the initial condition drawn with seed + i "
        "(numpy.random.default_rng(seed + i))",
        "initial_grid": initial_grid,
        "initial_condition": f"{system.name} initial condition drawn on {initial_grid}x"
        f"{initial_grid} cells, held piecewise constant on the {n}x{n} cells",
        **provenance(settings),
    }
    if system.preset is not None:
        attrs["pde_preset"] = system.preset
    return xr.Dataset(variables, coords=coords, attrs=attrs)


def estimate_step_error(
    system: str | ReactionDiffusionSystem,
    parameters: Mapping[str, Any] | None,
    n: int,
    times: Sequence[float],
    *,
    n_samples: int = 2,
    seed: int = 0,
    length: float = 2.0,
    origin: float = -1.0,
    boundary: str | None = None,
    laplacian: str = "spectral",
    dt_max: float = DT_MAX,
    dt0: float | None = None,
    ramp_steps: int = RAMP_STEPS,
    dtype: str = "float64",
    device: str = "auto",
) -> dict[str, float]:
    """Relative L2 time-discretization error per species of a step setting, by step halving.

    Integrates ``n_samples`` samples with the setting and with every step halved
    (``dt_max/2, dt0/2, 2·ramp_steps``) and returns, per species, the Richardson estimate for
    4th order ``e ≈ (16/15) max_t ‖u_h(t) − u_{h/2}(t)‖ / ‖u_{h/2}(t)‖`` (norms over all
    samples and cells). Valid in the asymptotic regime (``e ≪ 1``).
    """
    system = _system(system, parameters)
    dt0 = resolve_dt0(system, n, length, dt0, dt_max)
    coarse, fine = (
        simulate_dataset(
            system,
            None,
            n,
            times,
            n_samples,
            seed,
            length=length,
            origin=origin,
            boundary=boundary,
            laplacian=laplacian,
            batch_size=n_samples,
            dt_max=dt_max / halving,
            dt0=dt0 / halving,
            ramp_steps=ramp_steps * halving,
            dtype=dtype,
            device=device,
            progress=False,
        )
        for halving in (1, 2)
    )
    errors = {}
    for s in coarse.data_vars:
        diff = np.sqrt(((coarse[s] - fine[s]) ** 2).sum(("sample", "y", "x")))
        norm = np.sqrt((fine[s] ** 2).sum(("sample", "y", "x")))
        errors[str(s)] = float((16 / 15) * (diff / norm).max())
    return errors
