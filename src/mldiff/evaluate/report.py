"""One self-contained HTML report of an evaluation (inline CSS, PNGs embedded as base64, no
external links): first the generalization matrix with the verdicts and the sample sizes, then
the setup, the comparison rule, every cell and reference row, the training cost and the figures
with their captions.

It reads only what :func:`mldiff.evaluate.matrix.evaluate` wrote: ``matrix.csv``,
``generalization.csv``, ``evaluation.json`` (with the training summaries of the runs'
``train.json``) and ``figures/`` with ``figures/captions.json``. The page's layout and prose
are the Jinja2 template ``templates/report.html.j2``; this module builds the tables, lists and
figures it places, and the header states the date, mldiff's version, the git revision and which
preset the params are.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
import markupsafe

from mldiff import __version__, io
from mldiff.config import Params
from mldiff.diffusion import PRIORS
from mldiff.errors import MldiffError

Cell = str | Sequence[str]
TEMPLATE = "report.html.j2"  # in templates/ beside this file: the page's layout and prose


def read_matrix(path: Path) -> list[dict[str, Any]]:
    """Rows of ``matrix.csv``; numbers parsed (int, else float), empty cells None."""
    try:
        with open(path, newline="") as f:
            return [{k: _parse(v) for k, v in row.items()} for row in csv.DictReader(f)]
    except OSError:
        raise MldiffError(f"{path}: evaluation matrix not found; run `mldiff evaluate`") from None


def _parse(text: str) -> Any:
    if text in ("", "True", "False"):
        return None if text == "" else text == "True"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        raise MldiffError(f"{path}: missing or not JSON; run `mldiff evaluate`") from None


def _fmt(value: Any) -> str:
    """3 significant digits; counts (integral values below 10⁷) in full; None as a dash."""
    if value is None:
        return "–"
    if isinstance(value, float) and not (value.is_integer() and abs(value) < 1e7):
        return f"{value:.3g}"
    return str(int(value)) if isinstance(value, float) else str(value)


def _get(row: Mapping[str, Any], key: str) -> Any:
    """``row[key]``, or channel 0's ``key_c0`` for several species."""
    return row.get(key, row.get(f"{key}_c0"))


def _interval(row: Mapping[str, Any], key: str) -> str:
    value, low, high = (_get(row, k) for k in (key, f"{key}_low", f"{key}_high"))
    text = _fmt(value)
    return text if low is None else f"{text} [{_fmt(low)}, {_fmt(high)}]"


def _table(header: Sequence[str], body: Sequence[tuple[dict[str, str], Sequence[Cell]]]) -> str:
    """An HTML table: ``body`` rows are ``(tr attributes, cells)``; a cell is text or lines."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    lines = [f"<table><thead><tr>{head}</tr></thead><tbody>"]
    for attrs, cells in body:
        attr = "".join(f' {k}="{html.escape(v, quote=True)}"' for k, v in attrs.items())
        tds = "".join(
            "<td>" + "<br>".join(html.escape(t) for t in ([c] if isinstance(c, str) else c))
            + "</td>" for c in cells
        )
        lines.append(f"<tr{attr}>{tds}</tr>")
    return "\n".join(lines) + "</tbody></table>"


def _pairs(items: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in items.items()) or "defaults"


def _setup(params: Params, settings: Mapping[str, Any]) -> str:
    """Data, store, process, priors, networks, runs, sampler and evaluation settings."""
    pde, store, sample, proc = params.pde, params.store, params.sample, params.diffusion
    if params.data.source is not None:
        src = params.data.source
        data = (f"file {src.path}, variables {', '.join(src.variables or ['all'])}, "
                f"{params.boundary} boundary")
    else:
        data = (f"{pde.system} ({_pairs(pde.parameters)}), {params.boundary} boundary, "
                f"{pde.n}x{pde.n} grid on [{pde.origin:g}, {pde.origin + pde.length:g}]², "
                f"{pde.n_samples} trajectories, snapshot t = {store.time}")
    split = store.split
    facts = [
        ("data", data),
        ("store", f"species {', '.join(store.species)}; levels {store.levels}; coarsening "
                  f"{store.method}; split train/validation/test {split.train:g}/"
                  f"{split.validation:g}/{split.test:g}"),
        ("forward process", f"{proc.process}, beta {proc.beta_min:g} to {proc.beta_max:g}, "
                            f"t_min {proc.t_min:g}"),
        ("sampler", f"{sample.sampler}, {sample.steps} steps, {sample.n_samples} samples per "
                    f"resolution, resolutions {sample.resolutions}, seed {sample.seed}"),
        ("evaluation", f"{settings['n_boot']} bootstrap resamples, seed {settings['seed']}, "
                       f"{settings['n_permutations']} permutations, level {settings['alpha']:g} "
                       f"(Holm per model), band shells 1-{settings['band']}, "
                       f"reference sets of {settings['reference_size']} fields"),
    ]
    priors = [
        ({}, [name, spec.name, _pairs(spec.params),
              "yes" if PRIORS[spec.name].is_trace_class else "no"])
        for name, spec in params.priors.items()
    ]
    networks = [({}, [name, spec.arch, _pairs(spec.params)])
                for name, spec in params.networks.items()]
    runs = [
        ({}, [name, spec.network, spec.prior,
              " then ".join(f"{s} steps at {n}" for n, s in spec.schedule),
              str(spec.schedule[-1][0])])
        for name, spec in params.train.runs.items()
    ]
    return "\n".join([
        _table(["", "setting"], [({}, list(f)) for f in facts]),
        "<h3>Priors (noise covariances Q)</h3>",
        _table(["prior", "kind", "parameters", "trace class"], priors),
        "<h3>Networks</h3>", _table(["network", "architecture", "parameters"], networks),
        "<h3>Runs</h3>",
        _table(["run", "network", "prior", "schedule", "finest training level"], runs),
    ])


def _rule(settings: Mapping[str, Any]) -> str:
    f, method, band = settings["finest_level"], settings["method"], settings["band"]
    store, simulated = settings["finest_store_level"], settings["simulated_references"]
    references = "".join(
        f"<p>At {n}x{n} the test split and training samples were <b>simulated directly</b> "
        f"(column <i>reference data</i> = simulated): {html.escape(law['reference_law'])}. "
        f"Restricted to {store}x{store} they differ from the store's fields of the same "
        f"samples by {law['relative_l2_to_store']:.3g} (relative L²): the store's own "
        "discretization error, seen from the finer grid.</p>"
        for n, law in simulated.items()
    )
    return f"""
<p>Samples drawn at resolution <i>b</i> are compared with the held-out <b>test</b> split at
<i>g</i> = min(<i>b</i>, {f}), {f} being the finest grid with data (column <i>compared at</i>).
Store levels (up to {store}) are coarsenings of one simulation, so they share one law and are
the reference for every resolution up to {store}.</p>{references}
<p>Above {f} there is no data: <b>samples at <i>b</i> &gt; {f} are restricted to {f}x{f} by the
store's own value-preserving method ({method}) and compared there</b> (marked † below); their
power spectrum is still computed at <i>b</i> and compared with the data's over the shells both
grids resolve.</p>
<p>Fields are compared in normalized units (u − mean) / std with the store's training
statistics. Distances use the L² norm on the domain rescaled to unit area, so values at
different resolutions are comparable: energy distance (unbiased, may be slightly negative),
Gaussian MMD² (median-heuristic bandwidth), sliced Wasserstein-2 over the modes |m| ≤ {band},
and the mean |log| ratio of radially averaged power spectra over shells 1-{band} (the same band
in every cell; <i>all shells</i>: every shell both spectra resolve). Brackets are 95% percentile
bootstrap intervals ({settings['n_boot']} resamples, seeded).</p>
<p>Reference rows bracket the values: <b>heldout_vs_train</b> (training against test data:
the floor set by sampling noise), <b>prior_&lt;name&gt;</b> (draws of the prior N(0, Q), an
untrained model: the ceiling) and <b>naive_upsampling_from_&lt;a&gt;</b> (training data at
level <i>a</i> prolonged spectrally to <i>b</i>: what a model must beat to claim
super-resolution).</p>
<p>Verdict, in two parts per sample resolution <i>b</i> (<i>a</i> = the run's finest training
level). <b>Consistent</b>: the samples restricted to min(<i>a</i>, <i>b</i>) by the store's
method have the law of the test data there: permutation tests of "same law" with the energy
distance and the Gaussian MMD ({settings['n_permutations']} permutations, shared). <b>Fine
scales</b> (where data exist above <i>a</i>): the mean energy in the modes above the
<i>a</i>×<i>a</i> Nyquist (wavenumber k = π<i>a</i>/L) matches the data's; the tolerance comes
from the data alone: log of the ratio ~ N(0, CV²(1/N + 1/M)) under "same law", CV the
coefficient of variation of the data's band energy. Naive upsampling has no energy there, so it
fails by construction. A model's p-values (two per resolution, one per fine-scale cell) are
one family, Holm-adjusted; a part holds when its adjusted p-values exceed
{settings['alpha']:g}.</p>"""


def _sizes(rows: Sequence[Mapping[str, Any]], settings: Mapping[str, Any]) -> str:
    """Sample sizes and the widths of the energy distance's 95% intervals over model cells."""
    models = [r for r in rows if r["kind"] == "model"]
    counts = sorted({r["n_samples"] for r in models})
    tests = {r["compared_at"]: r["n_reference"] for r in rows}
    widths = sorted(r["energy_distance_high"] - r["energy_distance_low"] for r in models
                    if r.get("energy_distance_low") is not None)
    interval = ("" if not widths else
                f" The 95% bootstrap interval of the energy distance is {widths[0]:.2g}-"
                f"{widths[-1]:.2g} wide (median {widths[len(widths) // 2]:.2g}) over the model "
                "cells.")
    return (f"<p>{'/'.join(map(str, counts))} samples per cell against "
            + ", ".join(f"{m} test fields at {g}²" for g, m in sorted(tests.items()))
            + f".{interval} Verdicts: permutation tests ({settings['n_permutations']} "
            f"permutations), Holm-adjusted per model at family-wise level "
            f"{settings['alpha']:g}.</p>")


def _generalization(cells: Sequence[Mapping[str, Any]], resolutions: Sequence[int]) -> str:
    """Train level × sample resolution, one block of rows per family, reference rows last:
    energy distance [interval] and the verdict parts per cell."""
    marks = {True: "holds", False: "fails", None: "–"}
    table = {(c["row"], c["resolution"]): c for c in cells}
    body = []
    for row in dict.fromkeys(c["row"] for c in cells):
        first = table[next((row, b) for b in resolutions if (row, b) in table)]
        line: list[Cell] = [first["family"], row, _fmt(first.get("train_level"))]
        for b in resolutions:
            c = table.get((row, b))
            if c is None:
                line.append("")
                continue
            text = [_interval(c, "energy_distance")]
            if first["family"] != "reference":
                text.append(f"law {marks[c['consistent']]} (p {_fmt(c.get('consistent_p'))})")
            if c.get("fine_energy_ratio") is not None:
                text.append(f"fine ×{_fmt(c['fine_energy_ratio'])}"
                            + (f" {marks[c['fine_scales']]}" if c["fine_scales"] is not None
                               else ""))
            line.append(text)
        body.append(({"class": "reference" if first["family"] == "reference" else ""}, line))
    return _table(["family", "row", "train level", *[f"n = {b}" for b in resolutions]], body)


def _verdicts(verdicts: Mapping[str, Mapping[str, Any]]) -> str:
    items = []
    for v in verdicts.values():
        judged = [c["holds"] for c in v["checks"].values() if c.get("holds") is not None]
        css = "" if not judged else "holds" if all(judged) else "fails"
        items.append(f'<li class="{css}">{html.escape(v["sentence"])}</li>')
    return "<ul>" + "\n".join(items) + "</ul>"


def _sanity(rows: Sequence[Mapping[str, Any]]) -> str:
    """Every model cell whose samples blow up or collapse (``sanity`` flag of matrix.csv)."""
    flagged = [f'<li class="fails">{html.escape(str(r["model"]))} at n = {r["resolution"]}: '
               f'{html.escape(str(r["sanity"]))}</li>' for r in rows if r.get("sanity")]
    if not flagged:
        return ("<p>No sample set blows up or collapses: in every cell each species' variance "
                "is within 0.25–4× the data's.</p>")
    return "<ul>" + "\n".join(flagged) + "</ul>"


def _matrix(rows: Sequence[Mapping[str, Any]], resolutions: Sequence[int]) -> str:
    """Rows × resolutions: energy distance [interval] and band spectrum error per cell."""
    cells = {(r["model"], r["resolution"]): r for r in rows}
    body = []
    for name in dict.fromkeys(r["model"] for r in rows):
        first = next(r for r in rows if r["model"] == name)
        line: list[Cell] = [name, _fmt(first.get("train_level"))]
        for b in resolutions:
            r = cells.get((name, b))
            if r is None:
                line.append("")
                continue
            mark = " †" if r["compared_at"] != b else ""
            line.append([_interval(r, "energy_distance") + mark,
                         f"spectrum {_fmt(r.get('spectrum_log_error'))}",
                         f"variance ×{_fmt(r.get('variance_ratio'))}",
                         *([f"⚠ {r['sanity']}"] if r.get("sanity") else [])])
        body.append(({"class": first["kind"]}, line))
    return _table(["row", "train level", *[f"n = {b}" for b in resolutions]], body)


def _details(rows: Sequence[Mapping[str, Any]]) -> tuple[str, str]:
    """Every cell in two tables that each fit a 1280-px window: the distances, then the
    samples' statistics and cost; ``data-model``/``data-resolution`` on the first's rows."""
    def attrs(r: Mapping[str, Any], cell: bool) -> dict[str, str]:
        return {"class": r["kind"], **({"data-model": r["model"],
                                        "data-resolution": str(r["resolution"])} if cell else {})}

    distances = _table(
        ["row", "n", "compared at", "reference data", "energy distance", "MMD²", "sliced W₂",
         "spectrum error (band)", "spectrum error (all shells)"],
        [(attrs(r, True),
          [r["model"], str(r["resolution"]), str(r["compared_at"]), str(r["reference_data"]),
           _interval(r, "energy_distance"), _interval(r, "mmd2"), _interval(r, "sliced_w2"),
           _fmt(r.get("spectrum_log_error")), _fmt(r.get("spectrum_log_error_full"))])
         for r in rows])
    statistics = _table(
        ["row", "n", "wavelength samples / data", "variance samples / data",
         "Vendi samples / data", "samples / data", "process", "sampling s / sample",
         "network grid points / sample"],
        [(attrs(r, False),
          [r["model"], str(r["resolution"]),
           *(f"{_fmt(_get(r, f'{k}_samples'))} / {_fmt(_get(r, f'{k}_reference'))}"
             for k in ("wavelength", "variance", "vendi")),
           f"{r['n_samples']} / {r['n_reference']}", str(r.get("process") or ""),
           _fmt(r.get("sampling_s_per_sample")), _fmt(r.get("network_points_per_sample"))])
         for r in rows])
    return distances, statistics


def _training(params: Params, training: Mapping[str, Any]) -> str:
    levels = params.store.levels
    body = []
    for run, spec in params.train.runs.items():
        t = training.get(run, {})
        wall = t.get("wall_time_s")
        body.append(({}, [
            run, "+".join(f"{n}:{s}" for n, s in spec.schedule), _fmt(t.get("steps")),
            _fmt(t.get("samples_seen")), _fmt(t.get("estimated_flops")),
            "–" if wall is None else f"{wall:.1f}", _fmt(t.get("parameters")),
            *(_fmt(t.get(f"final_validation_loss_{n}")) for n in levels),
        ]))
    return _table(["run", "schedule (level:steps)", "steps", "samples seen", "est. FLOPs",
                   "wall time (s)", "parameters", *[f"val. loss {n}" for n in levels]], body)


def _figures(figure_dir: Path, captions: Sequence[Mapping[str, str]]) -> str:
    parts = []
    where = figure_dir / "captions.json"
    if not isinstance(captions, list):
        raise MldiffError(f"{where}: expected a list of {{file, caption}}")
    for item in captions:
        name = item.get("file") if isinstance(item, dict) else None
        if not (isinstance(name, str) and re.fullmatch(r"[\w.-]+\.png", name)
                and isinstance(item.get("caption"), str)):
            raise MldiffError(f"{where}: entry {str(item)[:80]!r}: expected a PNG file name in "
                              "that folder and a caption (no paths: nothing else is embedded)")
        path = figure_dir / name
        try:
            data = base64.b64encode(path.read_bytes()).decode("ascii")
        except OSError:
            raise MldiffError(f"{path}: figure not found; run `mldiff evaluate`") from None
        parts.append(f'<figure><img alt="{html.escape(item["file"])}" '
                     f'src="data:image/png;base64,{data}">'
                     f"<figcaption>{html.escape(item['caption'])}</figcaption></figure>")
    return "\n".join(parts)


def write_report(params: Params, results_dir: Path, out: Path) -> None:
    """Write the HTML report of the evaluation in ``results_dir`` to ``out`` (atomically)."""
    results_dir = Path(results_dir)
    evaluation = _read_json(results_dir / "evaluation.json")
    captions = _read_json(results_dir / "figures" / "captions.json")
    rows = read_matrix(results_dir / "matrix.csv")
    settings = evaluation["settings"]
    resolutions = sorted({r["resolution"] for r in rows})
    models = [r for r in rows if r["kind"] == "model"]
    references = [r for r in rows if r["kind"] != "model"]
    distances, statistics = _details(rows)
    sections = {
        "sizes": _sizes(rows, settings),
        "generalization": _generalization(read_matrix(results_dir / "generalization.csv"),
                                          resolutions),
        "verdicts": _verdicts(evaluation["verdicts"]), "sanity": _sanity(models),
        "setup": _setup(params, settings), "rule": _rule(settings),
        "matrix": _matrix(models, resolutions), "references": _matrix(references, resolutions),
        "distances": distances, "statistics": statistics,
        "training": _training(params, evaluation.get("training", {})),
        "figures": _figures(results_dir / "figures", captions),
    }
    page = _template().render(
        date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), version=__version__,
        revision=io.git_revision(), preset=_preset_text(params), resolutions=resolutions,
        **{k: markupsafe.Markup(f'<div class="scroll">{v}</div>') for k, v in sections.items()})
    io.write_text(out, page + "\n")


def _template() -> jinja2.Template:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined)
    return env.get_template(TEMPLATE)


def _preset_text(params: Params) -> str:
    """Which preset ``params`` equal: "the params of preset 'tiny'", or custom params."""
    from mldiff import config

    base = Params().model_dump(mode="json")
    if params == Params():
        return "the default params"
    for path in sorted(config.PRESETS_DIR.glob("*.yaml")):
        try:
            if config.validate(config.deep_merge(base, config.read_yaml(path), depth=2)) == params:
                return f"the params of preset {path.stem!r}"
        except MldiffError:
            continue
    return "custom params (no preset's)"
