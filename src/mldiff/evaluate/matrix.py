"""The generalization matrix: every run's samples at every resolution against held-out data.

Cells. A run's samples at resolution ``b`` (``<samples>/<run>/n<b>.nc``) are compared with the
*test* split at ``g = min(b, F)``, ``F`` the finest grid with data (the ``compared_at``
column): the data grid at ``g``, or, when ``g`` is none, the next finer one restricted to ``g``
(block averages and spectral truncations compose, so this is the field the store would hold at
``g``). Data grids are the store levels and the references simulated directly on finer grids
(``reference.resolutions``, :mod:`mldiff.datasets.reference`; column ``reference_data``:
``store`` or ``simulated``). Above ``F`` there are no data: the samples are restricted to ``F``
with the store's value-preserving ``store.method`` (as the store makes its levels) and compared
there, while their power spectrum is still taken at ``b``.

Units. Fields are compared normalized, ``(u_c − mean_c) / std_c`` with the store's training
statistics (O(1) scales, one channel per species). Distances use the unit-area L² norm of
:mod:`mldiff.evaluate.metrics`, so values at different resolutions are comparable.

Band. ``sliced_w2`` and ``spectrum_log_error`` see the modes ``|m⃗| ≤ K`` (shells ``1 … K``),
``K`` the last shell the coarsest compared grid resolves, the same in every cell, so a row
measures the same scales at every resolution; ``spectrum_log_error_full`` uses every shell the
two spectra share (it grows with the grid).

Reference rows, on the same grids under the same rule:

* ``heldout_vs_train``: training fields against test fields (the floor: sampling noise; at a
  simulated grid both are simulated there);
* ``prior_<name>``: draws of ``N(0, Q)`` of each prior a run uses, i.e. an untrained model
  (the ceiling; in physical units ``mean + std · draw``; a ``fitted`` prior fitted as training
  fits it, at the finest training level of the runs using it);
* ``naive_upsampling_from_<a>``: training fields at each run's finest level ``a``, prolonged
  spectrally to every ``b > a`` (what a model must beat to claim super-resolution).

Reference sets hold ``sample.n_samples`` fields (fewer if the split is smaller), taken from the
training split by a seeded permutation. Every comparison gets a fresh ``torch.Generator``
seeded with ``seed`` (common random numbers: the same projections and bootstrap resamples in
every cell), so the outputs are deterministic.
"""

from __future__ import annotations

import csv
import io as textio
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from mldiff import io
from mldiff.config import RESERVED_RUN_NAMES, Params
from mldiff.datasets import denormalize, normalize, open_level, prolong, restrict
from mldiff.datasets.source import CANONICAL_DIMS
from mldiff.diffusion import build_prior, fit_prior_spec
from mldiff.errors import MldiffError
from mldiff.evaluate.metrics import compare, fine_scale_test, two_sample_test
from mldiff.evaluate.sanity import sanity
from mldiff.evaluate.spectra import Spectrum, power_spectrum, spectrum_log_error

log = logging.getLogger(__name__)

REFERENCE, HELDOUT, FLOOR = RESERVED_RUN_NAMES  # params refuse runs named like these rows
COLUMNS = (
    "model", "kind", "network", "prior", "schedule", "train_level", "resolution",
    "compared_at", "consistent_at", "reference_data", "resampled_from", "n_samples",
    "n_reference", "process", "sampling_s_per_sample", "network_points_per_sample",
)
# metrics.json holds DVC's headline numbers (matrix.csv has every metric of every cell):
# these per model and resolution (channel 0's for several species; variance_ratio is already the
# species farthest from 1), whether mldiff.evaluate.sanity flagged the samples, the final
# validation loss at the model's training level, and the held-out floor's energy distance.
HEADLINE = ("energy_distance", "spectrum_log_error", "variance_ratio")
CURVE_COLUMNS = (
    "model", "kind", "resolution", "compared_at", "energy_distance", "energy_distance_low",
    "energy_distance_high", "spectrum_log_error",
)
SPECTRUM_COLUMNS = ("model", "resolution", "species", "wavenumber", "energy")
VALIDATION_COLUMNS = ("model", "level", "step", "elapsed_s", "loss")
GENERALIZATION_COLUMNS = (
    "row", "family", "train_level", "resolution", "energy_distance", "energy_distance_low",
    "energy_distance_high", "consistent", "consistent_p", "fine_scales", "fine_energy_ratio",
    "fine_p",
)


@dataclass(frozen=True)
class Store:
    """Normalized fields ``(N, C, n, n)`` by split and grid, and the geometry.

    Grids are the store levels and the simulated references (:mod:`mldiff.datasets.reference`,
    listed in ``simulated`` with their attrs ``reference_law`` and ``relative_l2_to_store``);
    references hold the train and test splits only.
    """

    fields: dict[str, dict[int, torch.Tensor]]
    boundary: str
    length: float
    species: tuple[str, ...]
    method: str
    stats: tuple[tuple[float, ...], tuple[float, ...]]
    simulated: dict[int, dict[str, Any]]

    @classmethod
    def load(cls, params: Params, store_dir: Path, reference_dir: Path | None = None) -> Store:
        """The train and test splits of ``store_dir/level_<n>.nc`` for every ``store.levels``
        and of ``reference_dir/n<n>.nc`` for every ``reference.resolutions``."""
        paths = {n: Path(store_dir) / f"level_{n}.nc" for n in params.store.levels}
        if params.reference.resolutions and reference_dir is None:
            raise MldiffError("reference.resolutions: set, but no reference folder was given "
                              "(mldiff evaluate --reference)")
        simulated = {n: Path(reference_dir or "") / f"n{n}.nc"
                     for n in params.reference.resolutions}
        fields: dict[str, dict[int, torch.Tensor]] = {"train": {}, "test": {}}
        geometry, laws = None, {}
        for n, path in {**paths, **simulated}.items():
            ds = open_level(path)
            method = params.store.method if n in paths else "none"
            if ds.attrs["coarsening"] != method or int(ds.attrs["level"]) != n:
                raise MldiffError(f"{path}: level {ds.attrs['level']} coarsened by "
                                  f"{ds.attrs['coarsening']!r}, expected level {n} by {method!r} "
                                  "(store.method; none for a reference); rebuild it")
            here = (
                str(ds.attrs["boundary"]), float(ds.attrs["length"]),
                tuple(str(ds.attrs["species"]).split()),
                (tuple(map(float, ds["norm_mean"].values)),
                 tuple(map(float, ds["norm_std"].values))),
            )
            if geometry is not None and here != geometry:
                raise MldiffError(f"{path}: geometry or statistics differ from the store levels")
            geometry = here
            if n in simulated:
                laws[n] = {"reference_law": io.attr(ds.attrs, path, "reference_law"),
                           "relative_l2_to_store":
                               io.attr(ds.attrs, path, "relative_l2_to_store", float)}
            for split in fields:
                fields[split][n] = normalize(ds, split)
                if len(fields[split][n]) < 2:
                    raise MldiffError(
                        f"{path}: the {split} split holds {len(fields[split][n])} samples; "
                        f"evaluation needs at least 2 (store.split.{split})"
                    )
        boundary, length, species, stats = geometry
        return cls(fields, boundary, length, species, params.store.method, stats, laws)

    @property
    def finest(self) -> int:
        """The finest grid with data: the finest store level or simulated reference."""
        return max(self.fields["test"])

    def grid(self, n: int) -> int:
        """Where fields on an ``n × n`` grid are compared: ``min(n, finest)``."""
        return min(n, self.finest)

    def source(self, n: int) -> int:
        """The data grid that :meth:`at` restricts to ``grid(n)``: the next finer one."""
        return min(m for m in self.fields["test"] if m >= self.grid(n))

    def label(self, n: int) -> str:
        """Where the data at ``grid(n)`` come from: ``store`` or ``simulated``."""
        return "simulated" if self.source(n) in self.simulated else "store"

    def at(self, split: str, n: int) -> torch.Tensor:
        """The split on grid ``grid(n)``: its data grid, or the next finer one restricted by
        ``store.method``."""
        g, level = self.grid(n), self.source(n)
        return restrict(self.fields[split][level], level // g, self.method, self.boundary)

    def to_grid(self, x: torch.Tensor) -> torch.Tensor:
        """``x (N, C, n, n)`` restricted to ``grid(n)`` by ``store.method`` (value-preserving)."""
        n = x.shape[-1]
        return restrict(x, n // self.grid(n), self.method, self.boundary)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Physical ``(N, C, n, n)`` → ``(x − mean_c) / std_c``."""
        mean, std = (torch.tensor(v, dtype=x.dtype).reshape(-1, 1, 1) for v in self.stats)
        return (x - mean) / std

    def physical(self, x: torch.Tensor) -> np.ndarray:
        """Normalized ``(N, C, n, n)`` → physical units of species 0, ``(N, n, n)``."""
        return denormalize(x, self.stats)[:, 0].numpy()


def resolved_shells(n: int, boundary: str) -> int:
    """Shells ``0 … r-1`` an ``n × n`` grid holds as full circles (``n/2`` FFT, ``n`` DCT)."""
    return n // 2 if boundary == "periodic" else n


def schedule_label(schedule: Sequence[Sequence[int]]) -> str:
    """``[[16, 200], [32, 100]]`` → ``"16:200+32:100"``."""
    return "+".join(f"{level}:{steps}" for level, steps in schedule)


class Matrix:
    """Rows of the generalization matrix, with the spectra and the fields shown in figures.

    :meth:`add` compares a set of fields with the store's test split under the rule of this
    module and records the row; the test split and its spectrum are prepared once per grid.
    """

    def __init__(
        self, store: Store, resolutions: Sequence[int], seed: int, n_boot: int, shown: int,
        n_permutations: int = 999,
    ) -> None:
        self.store, self.seed, self.n_boot, self.n_shown = store, seed, n_boot, shown
        self.n_permutations = n_permutations
        grids = sorted({store.grid(b) for b in resolutions})
        self.band = resolved_shells(grids[0], store.boundary) - 1
        if self.band < 1:
            raise MldiffError(f"sample.resolutions: a {grids[0]}x{grids[0]} grid resolves no "
                              "wavenumber shell to compare")
        self.test = {g: store.at("test", g) for g in grids}  # grown by :meth:`parts`
        self.test_spectra = {g: self.spectrum(x) for g, x in self.test.items()}
        self.rows: list[dict[str, Any]] = []
        self.spectra: list[dict[str, Any]] = []
        self.shown: dict[int, list[tuple[str, np.ndarray]]] = {}
        for b in resolutions:
            g = store.grid(b)
            self.spectra += _spectrum_records(HELDOUT, b, self.test_spectra[g], store.species)
            what = "simulated reference" if store.label(b) == "simulated" else "held-out test"
            self.show(b, f"{what} ({g}x{g})", self.test[g])

    def spectrum(self, x: torch.Tensor) -> Spectrum:
        return power_spectrum(x, self.store.length, self.store.boundary)

    def show(self, b: int, label: str, x: torch.Tensor) -> None:
        """Keep the first fields of ``x`` for the sample grid at resolution ``b`` (if finite)."""
        first = x[: self.n_shown]
        if bool(torch.isfinite(first).all()):
            self.shown.setdefault(b, []).append((label, self.store.physical(first)))

    def colour_scale(self, b: int) -> tuple[float, float]:
        """1st and 99th percentile of the held-out fields (species 0, physical) at ``grid(b)``."""
        values = self.store.physical(self.test[self.store.grid(b)])
        low, high = np.percentile(values, [1, 99])
        return float(low), float(high)

    def compare(self, x: torch.Tensor) -> tuple[dict[str, float], Spectrum | None]:
        """Metrics of ``x (N, C, b, b)`` against the test split at ``grid(b)`` and the
        spectrum of ``x`` at ``b``; ``({}, None)`` when ``x`` holds NaN or inf."""
        if not bool(torch.isfinite(x).all()):
            return {}, None
        g = self.store.grid(x.shape[-1])
        metrics = compare(
            self.store.to_grid(x), self.test[g], self.store.length,
            torch.Generator().manual_seed(self.seed), self.n_boot, self.store.boundary, self.band,
            n_permutations=self.n_permutations,
        )
        spectrum = self.spectrum(x)
        reference = self.test_spectra[g]
        metrics["spectrum_log_error"] = spectrum_log_error(spectrum, reference, self.band)
        metrics["spectrum_log_error_full"] = spectrum_log_error(spectrum, reference)
        return metrics, spectrum

    def parts(self, x: torch.Tensor, a: int) -> dict[str, float]:
        """The two verdict parts for finite samples ``x (N, C, b, b)`` of a model trained up to
        ``a``.

        *Consistent*: ``x`` restricted (``store.method``) to ``c = min(a, grid(b))`` against
        the test split at ``c`` (:func:`~mldiff.evaluate.metrics.two_sample_test`, keys
        ``consistent_*``). *Fine scales*, when ``grid(b) > a``: the energy of ``x`` restricted
        to ``grid(b)`` in the modes above the ``a × a`` Nyquist against the test split's
        (:func:`~mldiff.evaluate.metrics.fine_scale_test`; ``fine_wavenumber`` = π a / L, the
        Nyquist wavenumber of ``a``).
        """
        store, b = self.store, x.shape[-1]
        g = store.grid(b)
        c = min(a, g)
        if c not in self.test:
            self.test[c] = store.at("test", c)
        law = two_sample_test(restrict(x, b // c, store.method, store.boundary), self.test[c],
                              self.n_permutations, torch.Generator().manual_seed(self.seed))
        out: dict[str, float] = {"consistent_at": c}
        out |= {f"consistent_{k}": law[k]
                for k in ("energy_distance", "energy_distance_p", "mmd2", "mmd2_p")}
        if g > a:
            out |= fine_scale_test(store.to_grid(x), self.test[g], a, store.boundary)
            out["fine_wavenumber"] = math.pi * a / store.length
        return out

    def add(
        self, row: dict[str, Any], x: torch.Tensor, where: str = "", resolution: int = 0
    ) -> None:
        """Compare ``x`` and record ``row`` with its grid, sizes and metrics, as the cell of
        ``resolution`` (default: the grid of ``x``; the floor row of a resolution above the
        finest level holds fields at that level). Rows with a ``train_level`` also get the
        two verdict parts (:meth:`parts`)."""
        b = resolution or x.shape[-1]
        g = self.store.grid(b)
        try:
            metrics, spectrum = self.compare(x)
            if spectrum is not None and row.get("train_level"):
                metrics |= self.parts(x, int(row["train_level"]))
        except MldiffError as exc:
            raise MldiffError(f"{where or row['model']}: {exc}") from None
        if spectrum is None:
            log.warning("%s at n=%d: non-finite values; its metrics are left empty",
                        row["model"], b)
        else:
            self.spectra += _spectrum_records(row["model"], b, spectrum, self.store.species)
        self.rows.append({**row, "resolution": b, "compared_at": g,
                          "reference_data": self.store.label(b), "n_samples": len(x),
                          "n_reference": len(self.test[g]), **metrics,
                          **sanity(x, self.test[g], self.store.species)})


def load_samples(path: Path, run: str, n: int, store: Store) -> tuple[torch.Tensor, dict]:
    """Normalized samples ``(N, C, n, n)`` of ``run`` at ``n`` and facts about them: the forward
    process, ``resampled_from`` and the sampling cost per sample (wall time, grid points the
    network evaluated: what dimensionality-varying diffusion saves)."""
    ds = io.open_dataset(path, variables=tuple(store.species), dims=CANONICAL_DIMS)
    if ds.sizes["sample"] < 2:
        raise MldiffError(f"{path}: holds {ds.sizes['sample']} samples; metrics need at least 2")
    expected = {"run": run, "resolution": n, "boundary": store.boundary}
    for key, value in expected.items():
        if str(ds.attrs.get(key)) != str(value):
            raise MldiffError(f"{path}: attribute {key!r} is {ds.attrs.get(key)!r}, "
                              f"expected {value!r}")
    if (ds.sizes["y"], ds.sizes["x"]) != (n, n):
        raise MldiffError(f"{path}: grid {ds.sizes['y']}x{ds.sizes['x']}, expected {n}x{n}")
    x = np.stack([ds[s].values for s in store.species], axis=1).astype(np.float32)
    count = len(x)
    info = {
        "resampled_from": io.attr(ds.attrs, path, "resampled_from", int, 0),
        "process": str(io.attr(ds.attrs, path, "process", "json", {}).get("process", "")),
        "sampling_s_per_sample": io.attr(ds.attrs, path, "sampling_time_s", float, np.nan) / count,
        "network_points_per_sample":
            io.attr(ds.attrs, path, "network_points", float, np.nan) / count,
    }
    return store.normalize(torch.from_numpy(x)), info


def _subset(x: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """``min(count, N)`` fields of ``x`` chosen by a permutation seeded with ``seed``."""
    index = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    return x[index[:count]]


def _spectrum_records(model: str, n: int, s: Spectrum, species: Sequence[str]) -> list[dict]:
    """Rows of ``spectra.csv``: shells ``1 … resolved-1`` of each channel."""
    return [
        {"model": model, "resolution": n, "species": name,
         "wavenumber": float(s.wavenumber[m]), "energy": float(s.energy[c, m])}
        for c, name in enumerate(species)
        for m in range(1, s.resolved)
    ]


def _finite(value: Any) -> float | None:
    return float(value) if value is not None and math.isfinite(float(value)) else None


def _value(row: Mapping[str, Any], key: str) -> float | None:
    value = row.get(key)
    return _finite(value) if isinstance(value, int | float) else None


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values: ``p̃_(i) = max_{j ≤ i} min(1, (m − j + 1) p_(j))``
    over the ascending ``p_(1) ≤ … ≤ p_(m)``; rejecting ``p̃ ≤ α`` controls the family-wise
    error at ``α`` under any dependence."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    out, running = [0.0] * len(pvalues), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        out[i] = running
    return out


def verdicts(rows: Sequence[Mapping[str, Any]], alpha: float = 0.05) -> dict[str, dict[str, Any]]:
    """Each model's verdict in two parts at every resolution ``b`` it was sampled at.

    *Consistent* at ``b``: restricted to ``min(a, b)`` (``a`` the finest training level), the
    samples' law matches the test data there: neither the energy-distance nor the MMD
    permutation test rejects. *Fine scales* at ``b`` (when data exist above ``a``): the energy
    above the ``a × a`` Nyquist matches the data's (:meth:`Matrix.parts`). Multiple testing:
    the p-values of one model (2 per resolution and 1 per fine-scale cell) form one family,
    Holm-adjusted (:func:`holm`), and a part holds iff its adjusted p-values exceed ``alpha``.
    ``rows`` are those of ``matrix.csv``. Returns per model ``{"train_level",
    "resolution_bound", "n_samples", "checks": {"n<b>": {...}}, "sentence"}``; a part is None
    where there is nothing to judge (non-finite samples, no finer data).
    """
    out: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(r["model"] for r in rows if r["kind"] == "model"):
        mine = sorted((r for r in rows if r["model"] == name), key=lambda r: int(r["resolution"]))
        a = int(mine[0]["train_level"])
        keys = [(int(r["resolution"]), k) for r in mine
                for k in ("consistent_energy_distance_p", "consistent_mmd2_p", "fine_p")
                if _value(r, k) is not None]
        table = {(int(r["resolution"]), k): _value(r, k) for r in mine for k in r}
        adjusted = dict(zip(keys, holm([table[k] for k in keys]), strict=True))
        checks = {f"n{int(r['resolution'])}": _parts(r, adjusted, alpha) for r in mine}
        bound = any(int(r.get("resampled_from") or 0) for r in mine)
        count = max((int(r.get("n_samples") or 0) for r in mine), default=0)
        out[name] = {"train_level": a, "resolution_bound": bound, "n_samples": count,
                     "checks": checks, "sentence": _sentence(name, a, count, checks, alpha, bound)}
    return out


def _parts(
    row: Mapping[str, Any], adjusted: Mapping[tuple[int, str], float], alpha: float
) -> dict[str, Any]:
    """One resolution of :func:`verdicts`: adjusted p-values and the two parts."""
    b = int(row["resolution"])
    p = {k: adjusted.get((b, k)) for k in
         ("consistent_energy_distance_p", "consistent_mmd2_p", "fine_p")}
    law = [p["consistent_energy_distance_p"], p["consistent_mmd2_p"]]
    consistent = None if None in law else min(law) > alpha
    fine = None if p["fine_p"] is None else p["fine_p"] > alpha
    judged = [v for v in (consistent, fine) if v is not None]
    return {
        "resolution": b, "consistent_at": row.get("consistent_at"),
        "consistent": consistent, "consistent_p": None if None in law else min(law),
        "fine_scales": fine, "fine_p": p["fine_p"],
        "fine_energy_ratio": _value(row, "fine_energy_ratio"),
        "fine_tolerance": _value(row, "fine_tolerance"),
        "fine_wavenumber": _value(row, "fine_wavenumber"),
        "holds": all(judged) if judged else None,
    }


def _grids(checks: Sequence[Mapping[str, Any]]) -> str:
    return ", ".join(f"{c['resolution']}²" for c in checks)


def _sentence(
    name: str, a: int, count: int, checks: Mapping[str, Mapping[str, Any]], alpha: float,
    bound: bool,
) -> str:
    """The verdict in quotable words: the law on the training grid, then the fine scales."""
    cells = list(checks.values())
    held = [c for c in cells if c["consistent"]]
    failed = [c for c in cells if c["consistent"] is False]
    parts = []
    if held:
        where = (f"up to {held[-1]['resolution']}²" if not failed and len(held) == len(cells)
                 else f"at {_grids(held)}")
        parts.append(f"holds in law {where} on the {a}² grid "
                     f"(p ≥ {min(c['consistent_p'] for c in held):.2g})")
    if failed:
        parts.append("does not hold in law at " + ", ".join(
            f"{c['resolution']}² (p = {c['consistent_p']:.2g})" for c in failed))
    fine = [c for c in cells if c["fine_scales"] is not None]
    for c in fine:
        ratio, tol = c["fine_energy_ratio"], c["fine_tolerance"]
        verb = "fine scales match" if c["fine_scales"] else "fine scales off"
        parts.append(f"{verb} at {c['resolution']}²: {ratio:.2g}× the data's energy above "
                     f"k = {c['fine_wavenumber']:.3g} (tolerance ×/÷ {tol:.3g}, "
                     f"p = {c['fine_p']:.2g})")
    if not fine:
        parts.append("fine scales not judged (no data above its training grid)")
    if not held and not failed:
        parts = ["no verdict: no finite samples"]
    text = (f"Trained at {a}², {count} samples per cell: " + "; ".join(parts)
            + f" (Holm-adjusted p-values, family-wise level {alpha:g}).")
    if bound:
        text += (f" Resolution-bound network: its samples off {a}² are {a}² samples resampled "
                 "spectrally, i.e. naive super-resolution.")
    return f"{name}: {text}"


def generalization(
    rows: Sequence[Mapping[str, Any]], verdict: Mapping[str, Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """The train level × sample resolution matrix, long format (``generalization.csv``).

    One record per cell of every model, ordered by family (``network/prior``) then training
    level (multilevel runs after the single-level ones of their level), with its energy distance
    [95% interval] and the verdict parts (Holm-adjusted p-values); then the floor
    (``heldout_vs_train``) and naive-upsampling rows beside them (family ``reference``; their
    ``fine_*`` values are unadjusted).
    """
    def order(r: Mapping[str, Any]) -> tuple:
        multi = "+" in str(r.get("schedule") or "")
        return (f"{r.get('network')}/{r.get('prior')}", int(r["train_level"]), multi, r["model"])

    models = sorted((r for r in rows if r["kind"] == "model"), key=order)
    references = [r for r in rows if r["model"] == FLOOR or r["model"].startswith("naive_")]
    out = []
    for r in [*models, *references]:
        model = r["kind"] == "model"
        check = verdict[r["model"]]["checks"][f"n{r['resolution']}"] if model else {}
        out.append({
            "row": r["model"], "resolution": r["resolution"],
            "family": f"{r['network']}/{r['prior']}" if model else "reference",
            "train_level": r.get("train_level"),
            **{k: r.get(k) for k in ("energy_distance", "energy_distance_low",
                                     "energy_distance_high")},
            "consistent": check.get("consistent"), "consistent_p": check.get("consistent_p"),
            "fine_scales": check.get("fine_scales"),
            "fine_energy_ratio": r.get("fine_energy_ratio"),
            "fine_p": check.get("fine_p") if model else r.get("fine_p"),
        })
    return out


def _metric_keys(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    return list(dict.fromkeys(k for r in rows for k in r if k not in COLUMNS))


def metrics_json(
    rows: Sequence[Mapping[str, Any]], training: Mapping[str, Mapping[str, float]]
) -> dict[str, Any]:
    """DVC's compact metrics: ``{run: {metric: {"n<b>": float|None}, "final_validation_loss":
    float|None}, FLOOR: {"energy_distance": {...}}}`` for the :data:`HEADLINE` metrics (channel
    0's ``<metric>_c0`` when there is no joint value); non-finite values become None."""
    out: dict[str, Any] = {}
    for r in rows:
        if r["kind"] == "model":
            keys = HEADLINE
        elif r["model"] == FLOOR:
            keys = HEADLINE[:1]
        else:
            continue
        entry = out.setdefault(r["model"], {})
        cell = f"n{r['resolution']}"
        for key in keys:
            entry.setdefault(key, {})[cell] = _value(r, key if key in r else f"{key}_c0")
        if r["kind"] == "model":
            if "sanity" in r:  # the flag of mldiff.evaluate.sanity (its sentence: matrix.csv)
                entry.setdefault("samples_flagged", {})[cell] = bool(r["sanity"])
            entry["final_validation_loss"] = _value(
                training.get(r["model"], {}), f"final_validation_loss_{r['train_level']}")
    return out


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return repr(value) if isinstance(value, float) else str(value)


def write_csv(path: Path, records: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    """``records`` as CSV with ``columns`` (missing and non-finite values empty), atomically."""
    buf = textio.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([_text(r.get(c)) for c in columns] for r in records)
    io.write_text(path, buf.getvalue())


def read_training(run_dir: Path) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """``train.json`` as flat floats, and ``validation.csv`` in long form: one record
    ``{"model", "level", "step", "elapsed_s", "loss"}`` per validated level and step (the run
    is the folder's name; blank cells skipped)."""
    run_dir = Path(run_dir)
    path = run_dir / "train.json"
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise MldiffError(f"{path}: not a readable train.json ({type(exc).__name__})") from None
    if not isinstance(summary, dict):
        raise MldiffError(f"{path}: expected a JSON object")
    flat = {k: io.attr(summary, path, k, float) for k in
            ("steps", "samples_seen", "estimated_flops", "wall_time_s", "parameters")
            if k in summary}
    losses = summary.get("final_validation_loss", {})
    if not isinstance(losses, dict):
        raise MldiffError(f"{path}: final_validation_loss: expected a JSON object")
    for n in losses:
        flat[f"final_validation_loss_{n}"] = io.attr(losses, path, n, float)
    path = path.with_name("validation.csv")
    try:
        with open(path, newline="") as f:
            table = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise MldiffError(f"{path}: not a readable validation curve ({type(exc).__name__})"
                          ) from None
    records = []
    for r in table:
        for column, value in r.items():
            if not (column and column.startswith("val_loss_") and value):
                continue
            try:
                records.append({"model": run_dir.name,
                                "level": int(column.removeprefix("val_loss_")),
                                "step": int(r["step"]), "elapsed_s": float(r["elapsed_s"]),
                                "loss": float(value)})
            except (KeyError, TypeError, ValueError) as exc:
                raise MldiffError(f"{path}: column step, elapsed_s or {column} holds a value "
                                  f"that is not a number ({exc})") from None
    return flat, records


def validation_curve(records: Sequence[Mapping[str, Any]], levels: Sequence[int]) -> dict:
    """The validation loss against wall time at the first of ``levels`` that ``records``
    (of :func:`read_training`) hold: ``{"level", "elapsed_s", "loss"}`` (arrays; empty and
    level None when they hold none)."""
    for level in levels:
        points = [(r["elapsed_s"], r["loss"]) for r in records if r["level"] == level]
        if points:
            elapsed, loss = np.array(points).T
            return {"level": level, "elapsed_s": elapsed, "loss": loss}
    return {"level": None, "elapsed_s": np.zeros(0), "loss": np.zeros(0)}


def _model_rows(matrix: Matrix, params: Params, samples_dir: Path, bar: tqdm) -> None:
    """One row per run × resolution from ``<samples_dir>/<run>/n<b>.nc``."""
    for run, spec in params.train.runs.items():
        meta = {"model": run, "kind": "model", "network": spec.network, "prior": spec.prior,
                "schedule": schedule_label(spec.schedule), "train_level": spec.schedule[-1][0]}
        for b in sorted(params.sample.resolutions):
            path = Path(samples_dir) / run / f"n{b}.nc"
            x, info = load_samples(path, run, b, matrix.store)
            matrix.add({**meta, **info}, x, str(path))
            matrix.show(b, run, x)
            bar.update()


def _reference_rows(matrix: Matrix, params: Params, seed: int, bar: tqdm) -> None:
    """The floor, prior and naive-upsampling rows (see the module docstring)."""
    store, runs = matrix.store, params.train.runs
    resolutions, count = sorted(params.sample.resolutions), params.sample.n_samples
    base = {"kind": "reference", "resampled_from": 0}
    for b in resolutions:
        x = _subset(store.at("train", b), count, seed)
        matrix.add({**base, "model": FLOOR}, x, resolution=b)
        bar.update()
    for name in sorted({spec.prior for spec in runs.values()}):
        level = max(s.schedule[-1][0] for s in runs.values() if s.prior == name)
        spec = fit_prior_spec(params.priors[name].model_dump(mode="json"),
                              store.at("train", level), store.boundary, store.length)
        prior = build_prior(spec["name"], length=store.length, **spec["params"])
        for b in resolutions:
            draws = prior.sample((count, len(store.species)), b, store.boundary,
                                 torch.Generator().manual_seed(seed), torch.float32)
            matrix.add({**base, "model": f"prior_{name}", "prior": name}, draws)
            bar.update()
    for a in sorted({spec.schedule[-1][0] for spec in runs.values()}):
        train = _subset(store.at("train", a), count, seed)
        for b in (b for b in resolutions if b > a):
            x = prolong(train, b // a, "spectral", store.boundary)
            matrix.add({**base, "model": f"naive_upsampling_from_{a}", "train_level": a}, x)
            matrix.show(b, f"naive from {a}", x)
            bar.update()


def _cell_count(params: Params) -> int:
    runs, resolutions = params.train.runs.values(), params.sample.resolutions
    levels = {spec.schedule[-1][0] for spec in runs}
    per_resolution = len(runs) + 1 + len({spec.prior for spec in runs})
    return per_resolution * len(resolutions) + sum(b > a for a in levels for b in resolutions)


def evaluate(
    params: Params,
    store_dir: Path,
    samples_dir: Path,
    models_dir: Path,
    out_dir: Path,
    *,
    reference_dir: Path | None = None,
    n_boot: int | None = None,
    seed: int | None = None,
    samples_shown: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Build the generalization matrix and write it into ``out_dir``.

    ``n_boot``, ``seed`` and ``samples_shown`` default to ``params.evaluate``; the
    permutation count and the verdicts' ``alpha`` come from there.

    Reads the store levels, the simulated references ``<reference_dir>/n<b>.nc`` of
    ``reference.resolutions``, every ``<samples_dir>/<run>/n<b>.nc`` of ``train.runs`` ×
    ``sample.resolutions`` and each run's ``train.json``/``validation.csv`` in
    ``<models_dir>/<run>/`` (not ``model.pt``). Writes ``metrics.json`` (headline numbers),
    ``matrix.csv``, the long-format ``spectra.csv``, ``metric_vs_resolution.csv`` and
    ``validation.csv`` (every run's validation losses), ``evaluation.json`` (settings,
    :func:`verdicts` and the runs' training summaries) and ``figures/*.png`` with
    ``figures/captions.json``. Returns
    ``{"rows", "metrics", "verdicts", "settings"}``.
    """
    from mldiff.evaluate import figures  # matplotlib only when drawing

    cfg = params.evaluate
    n_boot = cfg.n_boot if n_boot is None else n_boot
    seed = cfg.seed if seed is None else seed
    samples_shown = cfg.samples_shown if samples_shown is None else samples_shown
    runs = params.train.runs
    store = Store.load(params, store_dir, reference_dir)
    groups = {run: f"{spec.network} / {spec.prior}" for run, spec in runs.items()}
    top = {}  # finest training level of each network/prior group: the curves' common level
    for run, spec in runs.items():
        top[groups[run]] = max(top.get(groups[run], 0), spec.schedule[-1][0])
    training, curves, validation = {}, {}, []
    for run, spec in runs.items():
        training[run], records = read_training(Path(models_dir) / run)
        validation += records
        curve = validation_curve(records, (top[groups[run]], spec.schedule[-1][0]))
        curves[run] = {**curve, "group": groups[run],
                       "label": f"{run} ({schedule_label(spec.schedule)})"}
    resolutions = sorted(params.sample.resolutions)
    matrix = Matrix(store, resolutions, seed, n_boot, samples_shown, cfg.n_permutations)
    with tqdm(total=_cell_count(params), desc="evaluate", disable=not progress) as bar:
        _model_rows(matrix, params, samples_dir, bar)
        _reference_rows(matrix, params, seed, bar)
    rows = matrix.rows
    settings = {"n_boot": n_boot, "seed": seed, "n_permutations": cfg.n_permutations,
                "alpha": cfg.alpha, "band": matrix.band,
                "finest_level": store.finest, "finest_store_level": params.store.levels[-1],
                "simulated_references": {str(n): law for n, law in store.simulated.items()},
                "method": store.method, "units": "normalized",
                "reference_size": params.sample.n_samples}
    verdict = verdicts(rows, cfg.alpha)
    metrics = metrics_json(rows, training)

    out_dir = Path(out_dir)
    io.write_json(out_dir / "metrics.json", metrics)
    write_csv(out_dir / "matrix.csv", rows, [*COLUMNS, *_metric_keys(rows)])
    write_csv(out_dir / "spectra.csv", matrix.spectra, SPECTRUM_COLUMNS)
    write_csv(out_dir / "metric_vs_resolution.csv", rows, CURVE_COLUMNS)
    write_csv(out_dir / "validation.csv", validation, VALIDATION_COLUMNS)
    io.write_json(out_dir / "evaluation.json",
                  {"settings": settings, "verdicts": verdict, "training": training})
    cells = generalization(rows, verdict)
    write_csv(out_dir / "generalization.csv", cells, GENERALIZATION_COLUMNS)
    fig_dir = out_dir / "figures"
    models, species = list(runs), store.species[0]
    captions = [
        (f"samples_n{b}.png", figures.sample_grid(
            fig_dir / f"samples_n{b}.png", b, store.grid(b), matrix.shown[b],
            matrix.colour_scale(b), species, store.label(b) == "simulated"))
        for b in resolutions
    ]
    captions += [
        ("spectra.png", figures.spectra(fig_dir / "spectra.png", matrix.spectra, resolutions,
                                        models, species)),
        ("generalization.png", figures.heatmap(fig_dir / "generalization.png", cells,
                                               resolutions)),
        ("metric_vs_resolution.png", figures.metric_curves(
            fig_dir / "metric_vs_resolution.png", rows, models, matrix.band)),
        ("training_cost.png", figures.training_cost(fig_dir / "training_cost.png", curves)),
    ]
    io.write_json(fig_dir / "captions.json",
                  [{"file": name, "caption": text} for name, text in captions])
    return {"rows": rows, "metrics": metrics, "verdicts": verdict, "settings": settings}
