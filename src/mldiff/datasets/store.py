"""Multiresolution store: one Dataset (NetCDF file) per grid level, splits and normalization.

A level file ``level_<n>.nc`` holds, for grid size ``n``:

* one float32 variable per species over ``(sample, y, x)``, coarsened from the source;
* coords ``sample`` (int), ``y``, ``x`` (cell centres of the level, physical units, CF
  ``units``/``long_name``/``axis``);
* ``split(sample)`` int8 with CF ``flag_values = [0, 1, 2]``,
  ``flag_meanings = "train validation test"``;
* ``norm_mean(species)``, ``norm_std(species)`` float64 over a string coord ``species``:
  per-species mean and standard deviation over the *training* samples of the *source*
  (finest) grid, identical in every level, so ``(u - mean) / std`` maps one function to one
  normalized function at every resolution;
* attrs ``level`` (= n), ``dx``, ``dy``, ``length``, ``origin``, ``boundary``,
  ``coarsening`` (method), ``coarsening_factor``, ``source_resolution``, ``species``
  (space-separated), ``split_fractions`` (train, validation, test), ``split_seed``,
  ``Conventions``, the source's time selection (``time_dim``, ``time_index``, ``time_value``)
  and attrs (``source``, ``source_*``), and :func:`mldiff.io.provenance`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import xarray as xr

from mldiff.datasets.coarsen import METHODS, restrict
from mldiff.datasets.source import CANONICAL_DIMS, canonical_dataset
from mldiff.errors import MldiffError
from mldiff.io import attr, open_dataset, provenance
from mldiff.spectral import BOUNDARIES

SPLITS: tuple[str, str, str] = ("train", "validation", "test")
RESERVED = ("split", "norm_mean", "norm_std", "species", "sample", "y", "x")
REQUIRED_ATTRS = ("level", "length", "origin", "boundary", "coarsening", "species")
_CHUNK = 256  # samples coarsened at once (bounds float64/FFT temporaries)


def split_sizes(n_samples: int, fractions: Sequence[float]) -> list[int]:
    """``[n_train, n_validation, n_test]``: ``n_val = round(f_val N)``, ``n_test = round(f_test
    N)``, ``n_train`` the rest; each split with a positive fraction must get one sample."""
    f = [float(v) for v in fractions]
    if len(f) != 3 or min(f) < 0 or abs(sum(f) - 1) > 1e-6 or f[0] == 0:
        raise MldiffError(
            f"split: expected three fractions (train > 0, validation, test >= 0) summing to 1, "
            f"got {list(fractions)}"
        )
    n_val, n_test = round(f[1] * n_samples), round(f[2] * n_samples)
    sizes = [n_samples - n_val - n_test, n_val, n_test]
    if any(s < 1 and fr > 0 for s, fr in zip(sizes, f, strict=True)):
        raise MldiffError(
            f"split: {n_samples} samples are too few for fractions {f} "
            f"(sizes would be {sizes}; each split with a positive fraction needs >= 1)"
        )
    return sizes


def split_indices(n_samples: int, fractions: Sequence[float], seed: int) -> dict[str, np.ndarray]:
    """Disjoint sorted index arrays ``{"train", "validation", "test"}`` covering ``0 … N-1``.

    Sizes from :func:`split_sizes`; membership from ``torch.randperm(N)`` under
    ``torch.Generator().manual_seed(seed)``, so it depends on ``(N, fractions, seed)`` only —
    the same at every level.
    """
    sizes = split_sizes(n_samples, fractions)
    perm = torch.randperm(n_samples, generator=torch.Generator().manual_seed(int(seed))).numpy()
    bounds = np.cumsum([0, *sizes])
    return {name: np.sort(perm[bounds[i] : bounds[i + 1]]) for i, name in enumerate(SPLITS)}


def _coarsen(values: np.ndarray, factor: int, method: str, boundary: str) -> np.ndarray:
    """Value-preserving restriction in float64, chunked over samples; float32 result."""
    chunks = [
        restrict(values[i : i + _CHUNK].astype(np.float64), factor, method, boundary)
        for i in range(0, len(values), _CHUNK)
    ]
    return np.concatenate(chunks).astype(np.float32)


def build_level(
    source_ds: xr.Dataset,
    n: int,
    *,
    method: str = "average",
    species: Sequence[str] | None = None,
    split: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    params: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """Build the level of grid size ``n`` from a canonical source (see :func:`read_source`).

    ``n`` must be the source size ``N`` divided by a power of two; each species is restricted
    by ``N/n`` with :func:`mldiff.datasets.coarsen.restrict` (value-preserving ``method``).
    Splits from :func:`split_indices`; normalization stats from the training samples of the
    source grid (the same in every level). ``params`` is recorded in the provenance attrs.
    """
    where = source_ds.attrs.get("source", "source dataset")
    missing = [d for d in CANONICAL_DIMS if d not in source_ds.dims]
    missing += [a for a in ("boundary", "length", "origin") if a not in source_ds.attrs]
    if missing:
        raise MldiffError(f"{where}: not a canonical source (missing {missing}); use read_source")
    species = list(species) if species is not None else [str(v) for v in source_ds.data_vars]
    absent = [s for s in species if s not in source_ds.data_vars]
    if absent or not species:
        raise MldiffError(
            f"{where}: species {absent or '[]'} not found; it has {list(source_ds.data_vars)}"
        )
    clash = [s for s in species if s in RESERVED]
    if clash:
        raise MldiffError(f"{where}: species names {clash} clash with reserved names {RESERVED}")
    if method not in METHODS:
        raise MldiffError(f"coarsening method: expected one of {METHODS}, got {method!r}")
    size = source_ds.sizes["x"]
    factor = size // n if isinstance(n, int | np.integer) and n > 0 else 0
    if factor < 1 or factor * n != size or factor & (factor - 1):
        raise MldiffError(
            f"{where}: grid size {size} is not a power-of-two multiple of level {n}"
        )
    try:
        parts = split_indices(source_ds.sizes["sample"], split, seed)
    except MldiffError as exc:
        raise MldiffError(f"{where}: {exc}") from None
    codes = np.empty(source_ds.sizes["sample"], dtype=np.int8)
    for code, name in enumerate(SPLITS):
        codes[parts[name]] = code

    mean, std = [], []
    for s in species:
        train = source_ds[s].values[parts["train"]].astype(np.float64)
        mean.append(train.mean())
        std.append(np.sqrt(((train - mean[-1]) ** 2).mean()))
        if not std[-1] > 0:
            raise MldiffError(f"{where}: species {s!r} is constant on the training split")

    boundary = source_ds.attrs["boundary"]
    fields = {s: _coarsen(source_ds[s].values, factor, method, boundary) for s in species}
    attrs = {
        "coarsening": method,
        "coarsening_factor": factor,
        "source_resolution": size,
        "split_fractions": np.asarray(split, dtype=np.float64),
        "split_seed": int(seed),
        **provenance(params),
    }
    stats = f"over the training split of the source grid (level {size})"
    return assemble_level(source_ds, fields, codes, (mean, std), stats, attrs)


def assemble_level(
    source_ds: xr.Dataset,
    fields: Mapping[str, np.ndarray],
    codes: np.ndarray,
    stats: tuple[Sequence[float], Sequence[float]],
    stats_origin: str,
    attrs: Mapping[str, Any],
) -> xr.Dataset:
    """A level Dataset (layout in the module docstring) from ``fields`` ``{species: (sample,
    n, n)}`` on the geometry of ``source_ds``, whose attrs and variable attrs it inherits:
    split ``codes`` per sample, ``stats = (mean, std)`` per species (``stats_origin`` says
    over what), and ``attrs`` on top. The ``sample`` coordinate is ``source_ds``'s."""
    length, n = float(source_ds.attrs["length"]), next(iter(fields.values())).shape[-1]
    ds = canonical_dataset(
        {s: xr.DataArray(np.asarray(v, dtype=np.float32), attrs=source_ds[s].attrs)
         for s, v in fields.items()},
        length=length,
        origin=float(source_ds.attrs["origin"]),
        boundary=source_ds.attrs["boundary"],
        coord_attrs=[source_ds[d].attrs for d in ("y", "x")],
        attrs={
            **source_ds.attrs,
            "level": int(n),
            "dx": length / n,
            "dy": length / n,
            "species": " ".join(fields),
            "Conventions": "CF-1.10",
            **attrs,
        },
    )
    ds = ds.assign_coords(sample=("sample", source_ds["sample"].values, source_ds["sample"].attrs))
    ds["split"] = xr.DataArray(
        codes,
        dims="sample",
        attrs={
            "long_name": "dataset split",
            "flag_values": np.arange(3, dtype=np.int8),
            "flag_meanings": " ".join(SPLITS),
        },
    )
    for name, values, what in (("norm_mean", stats[0], "mean"), ("norm_std", stats[1],
                                                                  "standard deviation")):
        ds[name] = xr.DataArray(np.array(values, dtype=np.float64), dims="species",
                                attrs={"long_name": f"{what} {stats_origin}"})
    return ds.assign_coords(species=("species", np.array(list(fields), dtype=object)))


def open_level(path: str | os.PathLike) -> xr.Dataset:
    """Open a level file and check its layout; :class:`MldiffError` naming ``path`` otherwise."""
    ds = open_dataset(
        path, variables=("split", "norm_mean", "norm_std"), dims=(*CANONICAL_DIMS, "species")
    )
    absent = [a for a in REQUIRED_ATTRS if a not in ds.attrs]
    if absent:
        raise MldiffError(f"{path}: not a level file (missing attrs {absent})")
    # Parsed once here, defensively; callers read the plain values back from ds.attrs.
    kinds = {"level": int, "length": float, "origin": float, "boundary": str,
             "coarsening": str, "species": "words"}
    parsed = {name: attr(ds.attrs, path, name, kind) for name, kind in kinds.items()}
    species, n = parsed["species"], parsed["level"]
    if parsed["boundary"] not in BOUNDARIES:
        raise MldiffError(f"{path}: attribute 'boundary' is {parsed['boundary']!r}, expected one "
                          f"of {BOUNDARIES}")
    if not (4 <= n <= 4096 and parsed["length"] > 0):
        raise MldiffError(f"{path}: attributes level={n}, length={parsed['length']}; expected a "
                          "level from 4 to 4096 and a positive length")
    ds.attrs.update({**parsed, "species": " ".join(species)})
    if list(map(str, ds["species"].values)) != species:
        raise MldiffError(f"{path}: species coord {list(map(str, ds['species'].values))} != "
                          f"attribute {species}")
    if ds.sizes["sample"] == 0:
        raise MldiffError(f"{path}: holds no samples")
    for s in species:
        if s not in ds.data_vars or ds[s].dims != CANONICAL_DIMS:
            raise MldiffError(f"{path}: expected variable {s!r} over {CANONICAL_DIMS}")
        if not np.isfinite(ds[s].values).all():
            raise MldiffError(f"{path}: variable {s!r} contains NaN or inf values")
    if ds.sizes["y"] != n or ds.sizes["x"] != n:
        raise MldiffError(f"{path}: grid {ds.sizes['y']}x{ds.sizes['x']} != level {n}")
    if not np.isin(ds["split"].values, (0, 1, 2)).all():
        raise MldiffError(f"{path}: split codes must be 0, 1, 2 ({' '.join(SPLITS)})")
    if not (ds["norm_std"].values > 0).all():
        raise MldiffError(f"{path}: norm_std must be positive")
    return ds


def _stats(
    stats: xr.Dataset | tuple[Sequence[float], Sequence[float]], like: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean, std)`` shaped ``(channel, 1, 1)`` on ``like``'s device and dtype."""
    if isinstance(stats, xr.Dataset):
        stats = (stats["norm_mean"].values, stats["norm_std"].values)
    return tuple(
        torch.as_tensor(np.asarray(v, dtype=np.float64), device=like.device)
        .to(like.dtype)
        .reshape(-1, 1, 1)
        for v in stats
    )


def normalize(ds: xr.Dataset, split: str | None = None) -> torch.Tensor:
    """``(u_c - mean_c) / std_c`` stacked as a float32 tensor ``(sample, channel, n, n)``.

    Channels in the order of ``ds.attrs["species"]``; ``split`` ("train", "validation",
    "test") keeps only those samples.
    """
    if split is not None and split not in SPLITS:
        raise MldiffError(f"split: expected one of {SPLITS}, got {split!r}")
    if split is not None:
        ds = ds.isel(sample=np.flatnonzero(ds["split"].values == SPLITS.index(split)))
    x = torch.from_numpy(
        np.stack([ds[s].values for s in str(ds.attrs["species"]).split()], axis=1)
    ).float()
    mean, std = _stats(ds, x)
    return (x - mean) / std


def denormalize(
    x: torch.Tensor, stats: xr.Dataset | tuple[Sequence[float], Sequence[float]]
) -> torch.Tensor:
    """Inverse of :func:`normalize` on ``(..., channel, n, n)``: ``x · std_c + mean_c``.

    ``stats`` is a level Dataset or a ``(mean, std)`` pair of per-channel sequences.
    """
    mean, std = _stats(stats, x)
    return x * std + mean
