"""Cross-resolution evaluation end to end on a synthetic study built without training.

The store holds Gaussian random fields (levels 8 and 16 cut from a 32x32 source); the
"samples" are fresh fields of the same law (what a sampler with the exact score draws), a
shifted copy, prior noise of another spectrum slope, and a resolution-bound model's 8x8 fields
resampled (naive upsampling); the training summaries are fabricated. Resolutions 8, 16, 32: 32 is
above the finest store level, so the restriction rule applies there.
"""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
import torch
import xarray as xr

from mldiff import config, io
from mldiff.datasets import build_level, canonical_dataset, normalize, open_level, prolong, restrict
from mldiff.datasets.reference import reference_samples
from mldiff.datasets.store import assemble_level
from mldiff.diffusion import build_prior
from mldiff.errors import MldiffError
from mldiff.evaluate import evaluate, verdicts, write_report
from mldiff.evaluate.matrix import holm, metrics_json, write_csv
from mldiff.evaluate.metrics import energy_distance
from mldiff.evaluate.report import read_matrix

SOURCE = 32
LEVELS = [8, 16]
RESOLUTIONS = [8, 16, 32]
MEAN, SCALE = 0.5, 3.0  # data: MEAN + N(0, SCALE · Q_matern)
RUNS = {
    "faithful": {"network": "fno", "prior": "matern", "schedule": [[8, 10]]},
    "shifted": {"network": "fno", "prior": "matern", "schedule": [[8, 10]]},
    "multilevel": {"network": "fno", "prior": "matern", "schedule": [[8, 6], [16, 4]]},
    "unet": {"network": "unet", "prior": "matern", "schedule": [[8, 10]]},
    "noise": {"network": "fno", "prior": "matern", "schedule": [[8, 10]]},
}
N_BOOT = 20
N_SOURCE, N_SAMPLES = 100, 40  # 40 test fields


def draws(count: int, seed: int, gamma: float = 1.2, scale: float = SCALE,
          mean: float = MEAN) -> np.ndarray:
    """``(count, SOURCE, SOURCE)`` fields of the data law ``mean + N(0, scale · Q_gamma)``
    (neumann); ``gamma=1.5, scale=1, mean=0``: pure noise of the runs' prior."""
    prior = build_prior("matern", gamma=gamma, scale=scale)
    x = prior.sample((count,), SOURCE, "neumann", torch.Generator().manual_seed(seed),
                     torch.float64)
    return (mean + x).numpy()


def at(x: np.ndarray, n: int) -> np.ndarray:
    """Source fields at level ``n`` the way the store makes them (cell averages)."""
    return restrict(x, x.shape[-1] // n, "average", "neumann")


def write_samples(path, run: str, fields: np.ndarray, resampled_from: int = 0) -> None:
    """A sample file in the layout of :func:`mldiff.sample.generate`."""
    n = fields.shape[-1]
    ds = canonical_dataset({"u": fields.astype(np.float32)}, length=2.0, origin=-1.0,
                           boundary="neumann")
    ds.attrs.update(run=run, resolution=n, resampled_from=resampled_from, species="u",
                    schedule=json.dumps(RUNS[run]["schedule"]), sampler="em", steps=10)
    io.write_netcdf(ds, path)


def write_training(run_dir, run: str) -> None:
    """``train.json`` and ``validation.csv`` as :func:`mldiff.train.train_run` writes them."""
    schedule = RUNS[run]["schedule"]
    steps = sum(s for _, s in schedule)
    io.write_json(run_dir / "train.json", {
        "run": run, "schedule": schedule, "steps": steps, "samples_seen": 4 * steps,
        "estimated_flops": 1e9 * steps, "wall_time_s": 0.1 * steps, "parameters": 1234,
        "final_validation_loss": {"8": 0.5, "16": 0.6},
    })
    lines = ["step,level,elapsed_s,val_loss_8,val_loss_16"]
    fine = "" if run == "unet" else "{:.6g}"  # a unet validates at its own level only
    lines += [f"{s},{schedule[0][0]},{0.1 * s:.4f},{1 / s:.6g}," + fine.format(2 / s)
              for s in (5, steps)]
    io.write_text(run_dir / "validation.csv", "\n".join(lines) + "\n")


def make_study(root):
    """Params, store, samples and training summaries of the synthetic study under ``root``."""
    params = config.validate({
        "pde": {"n": SOURCE, "times": [1.0]},
        "store": {"levels": LEVELS, "time": 1.0,
                  "split": {"train": 0.5, "validation": 0.1, "test": 0.4}},
        "priors": {"matern": {"name": "matern", "params": {"gamma": 1.5}}},
        "networks": {"fno": {"arch": "fno", "params": {"width": 8, "modes": 4, "layers": 2}},
                     "unet": {"arch": "unet", "params": {"width": 8, "depth": 2}}},
        "train": {"runs": RUNS},
        "sample": {"resolutions": RESOLUTIONS, "n_samples": N_SAMPLES},
        "evaluate": {"n_permutations": 199},
        "reference": {"resolutions": []},
    })
    source = canonical_dataset({"u": draws(N_SOURCE, 0)}, length=2.0, origin=-1.0,
                               boundary="neumann")
    for n in LEVELS:
        io.write_netcdf(build_level(source, n, split=(0.5, 0.1, 0.4), seed=0),
                        root / "store" / f"level_{n}.nc")
    fresh = {"faithful": draws(N_SAMPLES, 1), "shifted": draws(N_SAMPLES, 1) + 2.0,
             "multilevel": draws(N_SAMPLES, 2), "unet": draws(N_SAMPLES, 3),
             "noise": draws(N_SAMPLES, 4, gamma=1.5, scale=1.0, mean=0.0)}
    for run, x in fresh.items():
        for b in RESOLUTIONS:
            path = root / "samples" / run / f"n{b}.nc"
            if run == "unet":  # resolution-bound: its 8x8 fields resampled spectrally
                coarse = at(x, 8)
                fields = coarse if b == 8 else prolong(coarse, b // 8, "spectral", "neumann")
                write_samples(path, run, fields, 0 if b == 8 else 8)
            else:
                write_samples(path, run, at(x, b))
        write_training(root / "models" / run, run)
    return params


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The study evaluated once, and its report written."""
    root = tmp_path_factory.mktemp("study")
    params = make_study(root)
    out = root / "results"
    result = evaluate(params, root / "store", root / "samples", root / "models", out,
                      n_boot=N_BOOT, seed=3, samples_shown=2, progress=False)
    write_report(params, out, root / "report.html")
    return root, params, result


def _leaves(tree):
    if isinstance(tree, dict):
        for value in tree.values():
            yield from _leaves(value)
    else:
        yield tree


def test_outputs_cover_every_model_and_resolution(study):
    root, _, _ = study
    out = root / "results"
    metrics = json.loads((out / "metrics.json").read_text())
    assert all(v is None or isinstance(v, int | float) for v in _leaves(metrics))
    assert metrics["faithful"]["samples_flagged"]["n16"] is False
    assert 0.5 < metrics["faithful"]["variance_ratio"]["n16"] < 2
    assert set(metrics) == {*RUNS, "heldout_vs_train"}  # compact: DVC's headline numbers
    cells = {f"n{b}" for b in RESOLUTIONS}
    for run in RUNS:
        assert set(metrics[run]["energy_distance"]) == set(metrics[run]["spectrum_log_error"])
        assert set(metrics[run]["energy_distance"]) == cells
        level = RUNS[run]["schedule"][-1][0]
        assert metrics[run]["final_validation_loss"] == {8: 0.5, 16: 0.6}[level]
    assert set(metrics["heldout_vs_train"]) == {"energy_distance"}
    training = json.loads((out / "evaluation.json").read_text())["training"]
    for run in RUNS:
        assert training[run]["steps"] == sum(s for _, s in RUNS[run]["schedule"])
    with open(out / "validation.csv") as f:  # long format: one series per run and level
        series = {(r["model"], r["level"]) for r in csv.DictReader(f)}
    assert series == {(run, level) for run in RUNS for level in ("8", "16")} - {("unet", "16")}
    rows = read_matrix(out / "matrix.csv")
    cells = {(r["model"], r["resolution"]) for r in rows}
    assert {(run, b) for run in RUNS for b in RESOLUTIONS} <= cells
    assert {("heldout_vs_train", b) for b in RESOLUTIONS} <= cells
    assert {("prior_matern", b) for b in RESOLUTIONS} <= cells
    naive = {(m, b) for m, b in cells if m.startswith("naive")}
    assert naive == {("naive_upsampling_from_8", 16), ("naive_upsampling_from_8", 32),
                     ("naive_upsampling_from_16", 32)}
    assert all(r["compared_at"] == min(r["resolution"], 16) for r in rows)
    spectra = (out / "spectra.csv").read_text().splitlines()
    assert spectra[0] == "model,resolution,species,wavenumber,energy"
    assert any(line.startswith("faithful,32,u,") for line in spectra)
    curve = (out / "metric_vs_resolution.csv").read_text().splitlines()
    assert len(curve) == 1 + len(rows)
    figures = json.loads((out / "figures" / "captions.json").read_text())
    assert [f["file"] for f in figures] == [
        "samples_n8.png", "samples_n16.png", "samples_n32.png", "spectra.png",
        "generalization.png", "metric_vs_resolution.png", "training_cost.png"]
    for f in figures:
        assert (out / "figures" / f["file"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_samples_of_the_data_law_score_better_than_shifted_ones(study):
    _, _, result = study
    rows = {(r["model"], r["resolution"]): r for r in result["rows"]}
    for b in RESOLUTIONS:
        good, bad = rows[("faithful", b)], rows[("shifted", b)]
        assert good["energy_distance_high"] < bad["energy_distance_low"]
        assert good["energy_distance"] < 0.2 * bad["energy_distance"]


def test_above_the_finest_level_samples_are_restricted_and_compared_there(study):
    root, _, result = study
    rows = {(r["model"], r["resolution"]): r for r in result["rows"]}
    level = open_level(root / "store" / "level_16.nc")
    stats = level["norm_mean"].values.item(), level["norm_std"].values.item()
    samples = xr.open_dataset(root / "samples" / "faithful" / "n32.nc")["u"].values
    x = torch.from_numpy((samples[:, None] - stats[0]) / stats[1])
    expected = energy_distance(restrict(x, 2, "average", "neumann"), normalize(level, "test"))
    assert rows[("faithful", 32)]["compared_at"] == 16
    assert rows[("faithful", 32)]["energy_distance"] == pytest.approx(expected, rel=1e-5)


def write_reference(root, train_samples: int = 6) -> None:
    """A reference at 32 (the source grid) in the layout of `mldiff reference`: the store's
    test split and first training samples, its codes and statistics (the exact functions
    the store coarsened, as a perfectly converged simulation would give)."""
    level = open_level(root / "store" / "level_16.nc")
    keep = reference_samples(level, train_samples)
    source = canonical_dataset({"u": draws(N_SOURCE, 0)}, length=2.0, origin=-1.0,
                               boundary="neumann").sel(sample=keep)
    stats = (level.norm_mean.values, level.norm_std.values)
    attrs = {"coarsening": "none", "reference_law": "the source fields themselves",
             "relative_l2_to_store": 0.0}
    ds = assemble_level(source, {"u": source.u.values}, level.split.sel(sample=keep).values,
                        stats, "copied from the store", attrs)
    io.write_netcdf(ds, root / "reference" / "n32.nc")


def test_a_simulated_reference_replaces_the_restriction_above_the_store(study, tmp_path):
    root, params, _ = study
    write_reference(root)
    params = config.validate({**params.model_dump(mode="json"),
                              "reference": {"resolutions": [32], "train_samples": 6}})
    result = evaluate(params, root / "store", root / "samples", root / "models", tmp_path / "r",
                      reference_dir=root / "reference", n_boot=N_BOOT, seed=3,
                      samples_shown=2, progress=False)
    rows = {(r["model"], r["resolution"]): r for r in result["rows"]}
    assert {(r["resolution"], r["compared_at"], r["reference_data"]) for r in result["rows"]} \
        == {(8, 8, "store"), (16, 16, "store"), (32, 32, "simulated")}
    reference = open_level(root / "reference" / "n32.nc")
    samples = xr.open_dataset(root / "samples" / "faithful" / "n32.nc")["u"].values
    stats = reference.norm_mean.values.item(), reference.norm_std.values.item()
    x = torch.from_numpy((samples[:, None] - stats[0]) / stats[1])
    expected = energy_distance(x, normalize(reference, "test"))
    assert rows[("faithful", 32)]["energy_distance"] == pytest.approx(expected, rel=1e-5)
    assert rows[("heldout_vs_train", 32)]["n_samples"] == 6  # the reference's training samples
    assert rows[("shifted", 32)]["energy_distance"] > 5 * rows[("faithful", 32)]["energy_distance"]
    settings = json.loads((tmp_path / "r" / "evaluation.json").read_text())["settings"]
    assert settings["simulated_references"]["32"]["reference_law"] == "the source fields themselves"
    assert (settings["finest_level"], settings["finest_store_level"]) == (32, 16)
    write_report(params, tmp_path / "r", tmp_path / "report.html")
    assert "At 32x32 the test split and training samples were <b>simulated directly" in (
        tmp_path / "report.html").read_text()
    with pytest.raises(MldiffError, match="no reference folder was given"):
        evaluate(params, root / "store", root / "samples", root / "models", tmp_path / "o",
                 n_boot=0, progress=False)
    with pytest.raises(MldiffError, match=r"empty[/\\]n32\.nc: file not found"):
        evaluate(params, root / "store", root / "samples", root / "models", tmp_path / "o",
                 reference_dir=tmp_path / "empty", n_boot=0, progress=False)


def test_verdicts_judge_the_runs_and_label_the_resolution_bound_one(study):
    _, _, result = study
    v = result["verdicts"]
    assert set(v) == set(RUNS)
    assert v["unet"]["resolution_bound"] and "Resolution-bound" in v["unet"]["sentence"]
    assert not v["faithful"]["resolution_bound"]
    assert v["faithful"]["n_samples"] == N_SAMPLES
    assert list(v["faithful"]["checks"]) == ["n8", "n16", "n32"]
    assert v["multilevel"]["checks"]["n32"]["fine_scales"] is None  # no data above 16
    assert "fine scales not judged" in v["multilevel"]["sentence"]


def test_the_exact_law_passes_both_parts_at_every_resolution(study):
    v = study[2]["verdicts"]["faithful"]
    assert [c["consistent"] for c in v["checks"].values()] == [True, True, True]
    assert [c["fine_scales"] for c in v["checks"].values()] == [None, True, True]
    assert "holds in law up to 32² on the 8² grid" in v["sentence"]
    assert "fine scales match at 16²" in v["sentence"]


def test_naive_upsampling_fails_the_fine_scales_by_construction(study):
    _, _, result = study
    v = result["verdicts"]["unet"]["checks"]
    for b in (16, 32):
        # zero up to float32 round-off of the stored samples
        assert v[f"n{b}"]["fine_scales"] is False and v[f"n{b}"]["fine_energy_ratio"] < 1e-10
    assert v["n8"]["consistent"]  # its 8x8 fields are of the data law
    rows = {(r["model"], r["resolution"]): r for r in result["rows"]}
    assert rows[("naive_upsampling_from_8", 16)]["fine_energy_ratio"] < 1e-10
    assert rows[("naive_upsampling_from_8", 16)]["fine_p"] < 1e-10


def test_noise_and_a_shift_fail_the_law(study):
    v = study[2]["verdicts"]
    for name in ("noise", "shifted"):
        assert [c["consistent"] for c in v[name]["checks"].values()] == [False] * 3, name
    assert [c["fine_scales"] for c in v["noise"]["checks"].values()] == [None, False, False]
    assert "does not hold in law at 8² (p = " in v["noise"]["sentence"]


def test_report_is_self_contained_and_holds_every_cell(study):
    root, _, _ = study
    page = (root / "report.html").read_text()
    found = set(re.findall(r'data-model="([^"]+)" data-resolution="(\d+)"', page))
    assert {(run, str(b)) for run in RUNS for b in RESOLUTIONS} <= found
    assert ("naive_upsampling_from_8", "32") in found
    assert page.count('src="data:image/png;base64,') == 7
    assert not re.search(r'(src|href)="(?!data:)', page), "no external resources"
    assert "restricted to 16x16" in page
    # only the prior-noise run (variance 0.2x the data's) is flagged by the sanity check
    assert "noise at n = 8: samples collapse" in page and "faithful at n = 8:" not in page
    for run in RUNS:
        assert run in page
    facts = re.search(r"Generated (\d{4}-\d\d-\d\d \d\d:\d\d UTC) by mldiff [\d.]+ at git "
                      r"revision\s+<code>([^<]+)</code> from custom params", page)
    assert facts, "date, version, revision and preset stated"
    widths = [len(re.findall(r"<th>", t)) for t in re.findall(r"<thead>.*?</thead>", page)]
    assert max(widths) <= 9, widths  # every table fits a 1280-px window (no 16 columns)


def test_report_names_the_preset():
    from mldiff.evaluate.report import _preset_text

    assert _preset_text(config.Params()) == "the default params"
    raw = config.deep_merge(config.Params().model_dump(mode="json"),
                            config.read_yaml(config.PRESETS_DIR / "tiny.yaml"), depth=2)
    assert _preset_text(config.validate(raw)) == "the params of preset 'tiny'"


def test_evaluation_is_deterministic(study, tmp_path):
    root, params, _ = study
    again = tmp_path / "again"
    evaluate(params, root / "store", root / "samples", root / "models", again,
             n_boot=N_BOOT, seed=3, samples_shown=2, progress=False)
    for name in ("metrics.json", "matrix.csv", "spectra.csv", "evaluation.json"):
        assert (again / name).read_bytes() == (root / "results" / name).read_bytes(), name


def test_missing_samples_are_named(study, tmp_path):
    root, params, _ = study
    with pytest.raises(MldiffError, match=r"empty[/\\]faithful[/\\]n8\.nc: file not found"):
        evaluate(params, root / "store", tmp_path / "empty", root / "models", tmp_path / "o",
                 n_boot=N_BOOT, progress=False)


def _row(model, b, e, high=None, kind="model", a=8, resampled=0):
    return {"model": model, "kind": kind, "train_level": a, "resolution": b,
            "resampled_from": resampled, "energy_distance": e,
            "energy_distance_high": e if high is None else high}


def test_holm_adjusts_step_down():
    assert holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert holm([0.3, 0.2]) == pytest.approx([0.4, 0.4])  # monotone in the sorted order


def test_verdict_family_is_the_models_p_values():
    """Five p-values: a raw 0.02 survives alone but not with Holm over the model's family."""
    def row(b, pe, pm, fine=None):
        r = {**_row("m", b, 0.0), "consistent_energy_distance_p": pe, "consistent_mmd2_p": pm,
             "n_samples": 100}
        return r | ({} if fine is None else {"fine_p": fine, "fine_energy_ratio": 8.0,
                                             "fine_tolerance": 1.2, "fine_wavenumber": 12.6})
    v = verdicts([row(8, 0.5, 0.6), row(16, 0.02, 0.7, fine=0.001)], alpha=0.05)["m"]
    assert v["checks"]["n16"]["consistent_p"] == pytest.approx(0.02 * 4)
    assert v["checks"]["n16"]["consistent"] and v["checks"]["n16"]["fine_scales"] is False
    assert v["checks"]["n16"]["fine_p"] == pytest.approx(0.005)
    assert "fine scales off at 16²: 8× the data's energy above k = 12.6" in v["sentence"]
    assert "holds in law up to 16² on the 8² grid (p ≥ 0.08)" in v["sentence"]


def test_non_finite_and_missing_metrics_become_null(tmp_path):
    rows = [
        {**_row("m", 8, float("nan")), "mmd2": 0.25},
        {"model": "m", "kind": "model", "train_level": 8, "resolution": 16},  # NaN samples
        {**_row("heldout_vs_train", 8, 0.01, kind="reference"), "mmd2": float("inf")},
    ]
    metrics = metrics_json(rows, {"m": {"final_validation_loss_8": float("inf")}})
    assert metrics == {
        "m": {"energy_distance": {"n8": None, "n16": None},
              "spectrum_log_error": {"n8": None, "n16": None},
              "variance_ratio": {"n8": None, "n16": None}, "final_validation_loss": None},
        "heldout_vs_train": {"energy_distance": {"n8": 0.01}},
    }
    write_csv(tmp_path / "m.csv", rows, ["model", "resolution", "energy_distance", "mmd2"])
    assert (tmp_path / "m.csv").read_text().splitlines() == [
        "model,resolution,energy_distance,mmd2", "m,8,,0.25", "m,16,,",
        "heldout_vs_train,8,0.01,"]


def test_coinciding_model_curves_stay_distinguishable():
    from mldiff.evaluate.figures import _style

    models = ["fno_a", "fno_b", "unet"]
    styles = [_style(m, models, models) for m in models]
    assert len({s["marker"] for s in styles}) == 3 and len({s["color"] for s in styles}) == 3
    widths = [s["linewidth"] for s in styles]  # an earlier curve shows as a rim under a later
    assert widths == sorted(widths, reverse=True) and widths[0] > widths[-1]
    assert all(s["markerfacecolor"] == "none" for s in styles)
