"""Read the simulated dataset, or a scientist's own file, into the canonical in-memory layout.

Any NetCDF/HDF5 file (or zarr store, where the ``zarr`` package is installed) that xarray can
open is described by configuration alone — the ``data.source`` block, passed as keywords::

    read_source(path, variables=["conc"], dims={"sample": "member", "y": "lat", "x": "lon"},
                time={"dim": "step", "index": 3}, boundary="neumann", length=2.0)

The canonical Dataset has dims ``(sample, y, x)``, one float variable per selected species
(source names kept), integer ``sample`` coords, cell-centre coords ``y``, ``x`` in physical
units (CF ``units``/``long_name``/``axis``) and attrs ``boundary``, ``length``, ``origin``,
``source``, ``time_dim``, ``time_index`` (and ``time_value`` when the time axis has
coordinates; no time attrs when the file has no time axis), plus the
source file's global attrs prefixed ``source_``. The simulated dataset (dims
``sample, time, y, x``, attrs ``boundary``) is read through the same function with the
defaults and ``time={"value": t}``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from mldiff.errors import MldiffError
from mldiff.spectral import BOUNDARIES

CANONICAL_DIMS: tuple[str, str, str] = ("sample", "y", "x")

log = logging.getLogger(__name__)


MAX_ABS = 1e30  # larger magnitudes overflow float32 statistics (squares exceed 3.4e38)


def _open_lazy(path: Path, engine: str | None) -> xr.Dataset:
    """Open without loading (the simulated file holds every time step)."""
    if not path.exists():
        raise MldiffError(f"{path}: file not found")
    try:
        return xr.open_dataset(path, engine=engine)
    except Exception as exc:  # noqa: BLE001 - any reader failure means the same to the user
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MldiffError(f"{path}: not a readable NetCDF/HDF5/zarr dataset ({first})") from None


def stated_boundary(path: str | os.PathLike) -> str:
    """The ``boundary`` attribute of the file at ``path`` when it names one, else ``neumann``
    (also when the file cannot be read yet: reading it reports that)."""
    try:
        with xr.open_dataset(path) as ds:
            stated = ds.attrs.get("boundary")
    except Exception:  # noqa: BLE001 - absent or unreadable: read_source names the problem
        return "neumann"
    return stated if stated in BOUNDARIES else "neumann"


def _select_time(
    ds: xr.Dataset, path: Path, time: Mapping[str, Any]
) -> tuple[xr.Dataset, dict[str, Any]]:
    """Pick one snapshot along ``time["dim"]`` by ``index`` or ``value``; return it and attrs.

    Without ``dim`` the default is ``"time"`` if the file has it or a selection is asked for.
    """
    asked = time.get("index") is not None or time.get("value") is not None
    dim = time["dim"] if "dim" in time else ("time" if asked or "time" in ds.dims else None)
    if dim is None:
        return ds, {}
    if dim not in ds.dims:
        raise MldiffError(f"{path}: time dimension {dim!r} not found; it has {sorted(ds.dims)}")
    size = ds.sizes[dim]
    coord = ds[dim].values if dim in ds.coords else None
    if time.get("index") is not None and time.get("value") is not None:
        raise MldiffError(f"{path}: give time.index or time.value, not both")
    if time.get("value") is not None:
        value = float(time["value"])
        if coord is None:
            raise MldiffError(f"{path}: time.value needs coordinates on {dim!r}; use time.index")
        hits = np.flatnonzero(np.isclose(coord.astype(float), value, rtol=1e-6, atol=1e-9))
        if hits.size == 0:
            raise MldiffError(
                f"{path}: time value {value} not in {dim!r} "
                f"({size} values from {coord.min()} to {coord.max()})"
            )
        index = int(hits[0])
    elif time.get("index") is not None:
        index = int(time["index"])
        if not -size <= index < size:
            raise MldiffError(f"{path}: time index {index} out of range for {dim!r} of size {size}")
        index %= size
    elif size == 1:
        index = 0
    else:
        raise MldiffError(f"{path}: {dim!r} has {size} steps; set time.index or time.value")
    attrs: dict[str, Any] = {"time_dim": dim, "time_index": index}
    if coord is not None and np.issubdtype(coord.dtype, np.number):
        attrs["time_value"] = float(coord[index])
    return ds.isel({dim: index}), attrs


def _axis(ds: xr.Dataset, path: Path, dim: str, n: int) -> tuple[float, float, dict] | None:
    """``(length, origin, attrs)`` from uniform 1D coordinates on ``dim``, or None if absent."""
    if dim not in ds.coords:
        return None
    c = np.asarray(ds[dim].values, dtype=float)
    h = (c[-1] - c[0]) / (n - 1) if n > 1 else 0.0
    if n < 2 or h <= 0 or not np.allclose(np.diff(c), h, rtol=1e-5, atol=0.0):
        raise MldiffError(f"{path}: coordinate {dim!r} is not uniform and increasing")
    return n * h, c[0] - h / 2, dict(ds[dim].attrs)


def read_source(
    path: str | os.PathLike,
    variables: Sequence[str] | None = None,
    dims: Mapping[str, str] | None = None,
    time: Mapping[str, Any] | None = None,
    boundary: str | None = None,
    length: float | None = None,
    engine: str | None = None,
    drop_constant: bool | None = None,
) -> xr.Dataset:
    """Read one snapshot of ``path`` into the canonical ``(sample, y, x)`` Dataset.

    ``variables``: species to keep (default: every data variable over sample, y and x).
    ``dims``: source names of ``sample``, ``y``, ``x`` (default: the same names).
    ``time``: ``{"dim": name or None, "index": int}`` or ``{..., "value": float}``
    (default dim ``"time"`` when present; a single step needs no selection).
    ``boundary``: ``periodic``/``neumann`` (default: the file's ``boundary`` attr, else
    ``neumann``; a value contradicting the attr is an error).
    ``length``: domain side ``L``; default from uniform coords, else 2.0 (origin ``-L/2``).
    ``drop_constant``: members (samples) constant in every species once stored as float32
    (dead patterns, all zeros, flushed denormals) are an error naming them (False), dropped
    with a log line (True) or kept (None, for the pipeline's own simulated file).
    Integer variables are converted to float64 with a log line.
    Raises :class:`MldiffError` naming the file for every layout or value problem.
    """
    path = Path(path)
    names = {d: (dims or {}).get(d, d) for d in CANONICAL_DIMS}
    ds = _open_lazy(path, engine)
    with ds:
        missing = [src for src in names.values() if src not in ds.dims]
        if missing:
            raise MldiffError(f"{path}: missing dimension(s) {missing}; it has {sorted(ds.dims)}")
        if variables is None:
            wanted = set(names.values())
            variables = [str(v) for v in ds.data_vars if wanted <= set(ds[v].dims)]
        absent = [v for v in variables if v not in ds.data_vars]
        if absent or not variables:
            raise MldiffError(
                f"{path}: variable(s) {absent or '[]'} not found; "
                f"it has {sorted(map(str, ds.data_vars))}"
            )
        ds, time_attrs = _select_time(ds[list(variables)], path, time or {})
        for v in variables:
            if set(ds[v].dims) != set(names.values()):
                raise MldiffError(
                    f"{path}: variable {v!r} has dims {ds[v].dims}; expected "
                    f"{tuple(names.values())} after time selection"
                )
        ds = ds.load()
    ny, nx = ds.sizes[names["y"]], ds.sizes[names["x"]]
    if ny != nx:
        raise MldiffError(f"{path}: grid is {ny}x{nx}; expected a square n x n grid")
    if ds.sizes[names["sample"]] == 0 or nx < 2:
        raise MldiffError(f"{path}: holds {ds.sizes[names['sample']]} samples on a {ny}x{nx} "
                          "grid; expected samples of at least 2x2 cells")
    for v in variables:
        values = ds[v].values
        if values.dtype.kind not in "iuf":  # signed, unsigned integers or floats
            raise MldiffError(f"{path}: variable {v!r} has dtype {values.dtype}; expected numbers")
        if values.dtype.kind in "iu":
            log.warning("%s: variable %r holds %s integers; converted to float64", path, v,
                        values.dtype)
            ds[v] = ds[v].astype(np.float64)
        if not np.isfinite(values).all():
            raise MldiffError(f"{path}: variable {v!r} contains NaN or inf values")
        if np.abs(values).max() > MAX_ABS:
            raise MldiffError(
                f"{path}: variable {v!r} reaches {np.abs(values).max():.3g}; expected |values| "
                f"<= {MAX_ABS:g} (stores are float32: rescale the data)"
            )
    if drop_constant is not None:
        ds = _constant_members(ds, path, variables, names["sample"], drop_constant)
    stated = ds.attrs.get("boundary")
    if stated is not None and stated not in BOUNDARIES:
        raise MldiffError(f"{path}: attribute 'boundary' is {stated!r}; expected one of "
                          f"{BOUNDARIES}")
    if boundary is not None and stated is not None and boundary != stated:
        raise MldiffError(f"{path}: boundary {boundary!r} contradicts the file's attribute "
                          f"boundary = {stated!r}")
    boundary = boundary or stated or "neumann"
    if boundary not in BOUNDARIES:
        raise MldiffError(f"{path}: boundary: expected one of {BOUNDARIES}, got {boundary!r}")
    axes = [_axis(ds, path, names[d], nx) for d in ("y", "x")]
    if axes[0] and axes[1] and not np.isclose(axes[0][0], axes[1][0], rtol=1e-6):
        raise MldiffError(f"{path}: domain is {axes[0][0]} x {axes[1][0]}; expected a square")
    from_coords = axes[0] or axes[1]
    if from_coords and length is not None and not np.isclose(from_coords[0], length, rtol=1e-6):
        raise MldiffError(f"{path}: length {length} contradicts the coordinates ({from_coords[0]})")
    L = float(from_coords[0]) if from_coords else float(length if length is not None else 2.0)
    origin = float(from_coords[1]) if from_coords else -L / 2
    return canonical_dataset(
        {v: ds[v].transpose(*names.values()) for v in variables},
        length=L,
        origin=origin,
        boundary=boundary,
        coord_attrs=[a[2] if a else {} for a in axes],
        attrs={
            "source": str(path),
            **time_attrs,
            **{f"source_{k}": v for k, v in ds.attrs.items()},
        },
    )


def _constant_members(ds: xr.Dataset, path: Path, variables: Sequence[str], dim: str,
                      drop: bool) -> xr.Dataset:
    """Members constant in every species once stored as float32: an error naming them, or
    (``drop``) removed with a log line."""
    constant = np.ones(ds.sizes[dim], dtype=bool)
    for v in variables:
        values = ds[v].transpose(dim, ...).values.astype(np.float32)
        flat = values.reshape(len(values), -1)
        constant &= (flat == flat[:, :1]).all(axis=1)
    members = np.flatnonzero(constant).tolist()
    if not members:
        return ds
    shown = f"{members[:10]}{' ...' if len(members) > 10 else ''}"
    if not drop:
        raise MldiffError(f"{path}: {len(members)} member(s) {shown} along {dim!r} are constant "
                          "in every variable (dead patterns); set data.source.drop_constant: "
                          "true to drop them")
    log.warning("%s: dropped %d constant member(s) %s along %r", path, len(members), shown, dim)
    return ds.isel({dim: np.flatnonzero(~constant)})


def canonical_dataset(
    fields: Mapping[str, xr.DataArray | np.ndarray],
    *,
    length: float,
    origin: float,
    boundary: str,
    coord_attrs: Sequence[Mapping[str, Any]] = ({}, {}),
    attrs: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """Assemble ``(sample, n, n)`` fields into the canonical Dataset on ``[origin, origin+L]²``.

    Coordinates are the cell centres ``origin + (i + ½) L / n``; ``coord_attrs`` (for y, x)
    override the default CF attrs (``units`` "1", ``long_name``, ``axis``). Variable attrs of
    DataArrays are kept.
    """
    first = np.asarray(next(iter(fields.values())))
    n = first.shape[-1]
    centres = origin + (np.arange(n) + 0.5) * (length / n)
    coords = {"sample": ("sample", np.arange(first.shape[0]))}
    for (dim, axis), extra in zip((("y", "Y"), ("x", "X")), coord_attrs, strict=True):
        coords[dim] = (
            dim,
            centres,
            {"units": "1", "long_name": f"{dim} cell centre", **extra, "axis": axis},
        )
    data = {
        name: (CANONICAL_DIMS, np.asarray(f), dict(getattr(f, "attrs", {})))
        for name, f in fields.items()
    }
    base = {"boundary": boundary, "length": float(length), "origin": float(origin)}
    return xr.Dataset(data, coords=coords, attrs={**base, **(attrs or {})})
