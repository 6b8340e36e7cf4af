"""Figures of the evaluation: PNGs drawn with matplotlib's object API (``Figure`` on the Agg
canvas, no pyplot and no global backend state), written atomically.

Each function draws one figure from the records that :mod:`mldiff.evaluate.matrix` writes
(``matrix.csv`` rows, ``spectra.csv`` rows) or plain arrays, and returns its caption. A model
keeps its colour in every figure (``tab10`` over the sorted model names); reference rows are
black or grey and dashed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import SymLogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from mldiff import io

DPI = 110
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")
# Reference rows by name prefix: colour and the dash patterns of their successive members.
REFERENCE_STYLE = {
    "heldout_test": ("black", ["-"]),
    "heldout_vs_train": ("black", [(0, (5, 2))]),
    "naive_upsampling": ("0.45", [(0, (5, 2)), (0, (1.5, 1.5)), (0, (8, 2, 2, 2))]),
    "prior": ("tab:brown", [(0, (6, 2, 1, 2)), (0, (2, 3))]),
}


def _save(fig: Figure, path: Path) -> None:
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)


def _style(name: str, names: Sequence[str], models: Sequence[str]) -> dict[str, Any]:
    """Line style of a row: its model's colour (``tab10`` by position ``i`` in ``models``),
    hollow marker and width (each later model drawn thinner, so curves that coincide stay
    visible, the earlier one as a rim), or its reference kind's colour with the dash pattern
    of its position among ``names`` of that kind."""
    if name in models:
        i = models.index(name)
        return {"color": colormaps["tab10"](i % 10), "marker": MARKERS[i % len(MARKERS)],
                "markersize": 4 + 2.0 * (len(models) - 1 - i) / max(len(models) - 1, 1),
                "markerfacecolor": "none", "linewidth": 1.0 + 2.0 * (len(models) - 1 - i)
                / max(len(models) - 1, 1)}
    kind = next((k for k in REFERENCE_STYLE if name.startswith(k)), "prior")
    color, dashes = REFERENCE_STYLE[kind]
    index = [n for n in names if n.startswith(kind)].index(name)
    width = 2.0 if kind == "heldout_test" else 1.2
    return {"color": color, "linestyle": dashes[index % len(dashes)], "linewidth": width}


def sample_grid(
    path: Path,
    resolution: int,
    grid: int,
    panels: Sequence[tuple[str, np.ndarray]],
    scale: tuple[float, float],
    species: str,
    simulated: bool = False,
) -> str:
    """Rows of fields ``(k, n, n)`` (physical units), the held-out data first (on ``grid``;
    ``simulated``: a reference simulated there), on one colour scale ``(low, high)``.
    Returns the caption."""
    cols = max(len(fields) for _, fields in panels)
    fig = Figure(figsize=(1.5 * cols + 2.4, 1.45 * len(panels) + 0.5), layout="constrained")
    axes = fig.subplots(len(panels), cols, squeeze=False)
    lo, hi = scale
    for row, (label, fields) in zip(axes, panels, strict=True):
        for c, ax in enumerate(row):
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(fields):
                image = ax.imshow(fields[c], origin="lower", vmin=lo, vmax=hi, cmap="viridis")
            else:
                ax.set_axis_off()
        row[0].set_ylabel(label, fontsize=8)
    fig.colorbar(image, ax=axes, shrink=0.7, label=species)
    fig.suptitle(f"{resolution}x{resolution}", fontsize=10)
    _save(fig, path)
    where = (
        f" Held-out fields are at {grid}x{grid}, the finest grid with data: samples at "
        f"{resolution}x{resolution} are compared after restriction to it."
        if grid < resolution else ""
    )
    data = ("the test split simulated directly at this resolution (reference)" if simulated
            else "the held-out test split")
    return (f"Fields at {resolution}x{resolution}: the first {cols} of {data}, "
            f"of each model and of naive upsampling (species {species}, physical units), on one "
            f"colour scale (1st-99th percentile of all held-out values).{where}")


def spectra(
    path: Path,
    records: Sequence[Mapping[str, Any]],
    resolutions: Sequence[int],
    models: Sequence[str],
    species: str,
) -> str:
    """One log-log panel per resolution: the shell energies of the ``spectra.csv`` records of
    ``species`` for ``models``, the held-out data and naive upsampling. Returns the caption."""
    shown = [r for r in records if r["species"] == species and (
        r["model"] in models or r["model"].startswith(("heldout_test", "naive_upsampling")))]
    names = list(dict.fromkeys(r["model"] for r in shown))
    data = [r["energy"] for r in shown if r["model"] == "heldout_test"]
    fig = Figure(figsize=(3.6 * len(resolutions) + 0.6, 3.6), layout="constrained")
    axes = fig.subplots(1, len(resolutions), squeeze=False, sharey=True)[0]
    for ax, b in zip(axes, resolutions, strict=True):
        curves: dict[str, list[tuple[float, float]]] = {}
        for r in shown:
            if r["resolution"] == b:
                curves.setdefault(r["model"], []).append((r["wavenumber"], r["energy"]))
        for name, points in curves.items():
            k, e = np.array(points).T
            ax.loglog(k, e, label=name, markevery=max(1, len(k) // 8),
                      **_style(name, names, models))
        ax.set_title(f"{b}x{b}", fontsize=10)
        ax.set_xlabel("wavenumber |k|")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(True, which="major", alpha=0.3)
    if data:  # spectral upsampling leaves round-off (~1e-16) above its grid: keep it off-scale
        axes[0].set_ylim(bottom=min(data) / 100)
    axes[0].set_ylabel("shell energy (normalized units)")
    axes[-1].legend(fontsize=7, loc="lower left")
    _save(fig, path)
    return (f"Radially averaged power spectra of species {species} (shell sums of |u_k|^2 on "
            "the unit-area domain, normalized units), one panel per sample resolution: models "
            "(colours), the held-out test split the column is compared with (black; at the "
            "finest grid with data when the resolution is above it) and naive spectral upsampling "
            "of the training data (grey, dashed; it has no energy above its training grid).")


def metric_curves(
    path: Path, rows: Sequence[Mapping[str, Any]], models: Sequence[str], band: int
) -> str:
    """Energy distance (with its bootstrap band) and spectrum error against resolution for
    ``models``; reference rows dashed. The energy distance axis is symmetric-log (the unbiased
    estimate can be negative; prior rows can be orders of magnitude above), the spectrum error
    axis logarithmic. Returns the caption."""
    names = list(dict.fromkeys(r["model"] for r in rows))
    resolutions = sorted({int(r["resolution"]) for r in rows})
    fig = Figure(figsize=(10, 4), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, key, title, scale in (
        (axes[0], "energy_distance", "energy distance", {"value": "symlog", "linthresh": 1e-2}),
        (axes[1], "spectrum_log_error", f"spectrum log error (shells 1-{band})",
         {"value": "log"}),
    ):
        for name in names:
            mine = sorted((r for r in rows if r["model"] == name), key=lambda r: r["resolution"])
            x = np.array([r["resolution"] for r in mine], dtype=float)
            y = np.array([_number(r.get(key)) for r in mine])
            style = _style(name, names, models)
            ax.plot(x, y, label=name, **style)
            low = np.array([_number(r.get(f"{key}_low")) for r in mine])
            high = np.array([_number(r.get(f"{key}_high")) for r in mine])
            if name in models and np.isfinite(low).any():
                ax.fill_between(x, low, high, color=style["color"], alpha=0.15, linewidth=0)
        ax.set_xscale("log", base=2)
        ax.set_xticks(resolutions, [str(n) for n in resolutions])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_yscale(**scale)
        ax.set_xlabel("sample resolution n")
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.3)
    axes[1].legend(fontsize=7, loc="best")
    _save(fig, path)
    return ("Distance to the held-out test split against sample resolution: energy distance "
            "(unit-area L2 norm, normalized units) with its 95% bootstrap band, and the mean "
            f"|log| ratio of the power spectra over shells 1-{band}. Dashed: reference rows "
            "(held-out vs training data, the floor; naive spectral upsampling; prior noise, the "
            "ceiling). The energy distance axis is symmetric-log, linear within ±0.01.")


def training_cost(path: Path, curves: Mapping[str, Mapping[str, Any]]) -> str:
    """Validation DSM loss against training wall time, one panel per network/prior group
    (``curves[run]``: ``elapsed_s``, ``loss``, ``group``, ``level`` (of the loss), ``label``).
    Returns the caption."""
    groups = sorted({c["group"] for c in curves.values()})
    models = sorted(curves)
    fig = Figure(figsize=(4.2 * len(groups) + 0.6, 3.6), layout="constrained")
    axes = fig.subplots(1, len(groups), squeeze=False)[0]
    for ax, group in zip(axes, groups, strict=True):
        for run in models:
            c = curves[run]
            if c["group"] == group and len(c["loss"]):
                ax.plot(c["elapsed_s"], c["loss"], label=f"{c['label']} @ {c['level']}",
                        **_style(run, models, models))
        losses = np.concatenate([c["loss"] for c in curves.values() if c["group"] == group])
        if len(losses) and losses.min() > 0 and losses.max() > 10 * losses.min():
            ax.set_yscale("log")  # within a decade, log ticks are unreadable
        ax.set_xlabel("training wall time (s)")
        ax.set_title(group, fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("validation DSM loss")
    _save(fig, path)
    return ("Training cost: validation denoising score-matching loss of the EMA weights against "
            "training wall time (optimizer steps only), one panel per network/prior, so "
            "multilevel and single-level schedules of the same model sit side by side. The loss "
            "is on the validation split at the finest training level of the panel's runs (@ n), "
            "or at the run's own finest level for networks that cannot run there.")


def heatmap(path: Path, cells: Sequence[Mapping[str, Any]], resolutions: Sequence[int]) -> str:
    """The generalization matrix as a heatmap: rows of ``generalization.csv`` (models by family
    and training level, then the floor and naive upsampling) × sample resolutions, coloured by
    the energy distance (symmetric log) and marked with the verdict parts. Returns the caption."""
    rows = list(dict.fromkeys(c["row"] for c in cells))
    value = np.full((len(rows), len(resolutions)), np.nan)
    fig = Figure(figsize=(1.5 * len(resolutions) + 3.2, 0.42 * len(rows) + 1.4),
                 layout="constrained")
    ax = fig.subplots()
    marks = {True: "✓", False: "✗", None: "·"}
    for c in cells:
        i, j = rows.index(c["row"]), list(resolutions).index(c["resolution"])
        value[i, j] = _number(c.get("energy_distance"))
        text = f"{value[i, j]:.2g}" if np.isfinite(value[i, j]) else "–"
        if c["family"] != "reference":
            text += f"\nlaw {marks[c['consistent']]} fine {marks[c['fine_scales']]}"
        ax.text(j, i, text, ha="center", va="center", fontsize=7)
    finite = value[np.isfinite(value)]
    top = max(float(np.abs(finite).max()) if finite.size else 1.0, 1e-3)
    image = ax.imshow(value, cmap="RdYlGn_r", aspect="auto",
                      norm=SymLogNorm(linthresh=1e-3, vmin=-top, vmax=top))
    fig.colorbar(image, ax=ax, label="energy distance (symmetric log)")
    ax.set_xticks(range(len(resolutions)), [f"{b}²" for b in resolutions])
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_xlabel("sample resolution")
    _save(fig, path)
    return ("Generalization matrix: runs (by network/prior, then training level) and the "
            "reference rows against sample resolution, coloured by the energy distance to the "
            "held-out test data; 'law' marks the consistency part of the verdict (permutation "
            "tests on the training grid), 'fine' the fine-scale part (energy above the training "
            "Nyquist), ✓ holds, ✗ fails, · not judged (Holm-adjusted per model).")


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and value is not None else np.nan
