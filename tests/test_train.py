"""Training: resume is bit-exact, outputs are complete, an FNO learns a Gaussian's exact score."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
import torch

from helpers import DATA_SCALE, gaussian_store, params_for
from mldiff import config
from mldiff.datasets import normalize, open_level
from mldiff.diffusion import GaussianScore, build_prior
from mldiff.errors import MldiffError
from mldiff.train import load_checkpoint, load_model, train_run


def test_resume_after_interruption_is_bit_exact(tmp_path):
    paths = gaussian_store(tmp_path, samples=24)
    params = params_for((8, 16), [[8, 6], [16, 6]])
    straight = train_run(params, "run", paths, tmp_path / "a" / "model.pt",
                         tmp_path / "a" / "ckpt.pt", progress=False)

    ckpt = tmp_path / "b" / "ckpt.pt"
    assert train_run(params, "run", paths, tmp_path / "b" / "model.pt", ckpt,
                     progress=False, stop_after=7) == {}
    assert ckpt.exists() and not (tmp_path / "b" / "model.pt").exists()
    assert json.loads(load_checkpoint(ckpt)["state"])["step"] == 7
    resumed = train_run(params, "run", paths, tmp_path / "b" / "model.pt", ckpt,
                        resume=True, progress=False)

    a = torch.load(tmp_path / "a" / "model.pt", weights_only=True)["ema"]
    b = torch.load(tmp_path / "b" / "model.pt", weights_only=True)["ema"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert straight["final_validation_loss"] == resumed["final_validation_loss"]
    assert (tmp_path / "a" / "loss.csv").read_text() == (tmp_path / "b" / "loss.csv").read_text()
    assert not ckpt.exists(), "a finished run removes its checkpoint"


def test_outputs_account_for_every_level_and_the_compute(tmp_path):
    paths = gaussian_store(tmp_path, samples=24)
    params = params_for((8, 16), [[8, 4], [16, 3]])
    summary = train_run(params, "run", paths, tmp_path / "m" / "model.pt",
                        tmp_path / "m" / "ckpt.pt", progress=False)
    assert summary["steps"] == 7 and summary["samples_seen"] == 7 * 8
    assert summary["estimated_flops"] > 0 and summary["wall_time_s"] > 0
    assert set(summary["final_validation_loss"]) == {"8", "16"}
    assert set(summary["elbo_bits_per_dim"]) == {"8", "16"}
    assert all(np.isfinite(v) for v in summary["elbo_bits_per_dim"].values())
    with open(tmp_path / "m" / "validation.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [4, 5, 7]  # every 5, at the level switch, at the end
    assert all(float(r["val_loss_8"]) > 0 and float(r["val_loss_16"]) > 0 for r in rows)
    with open(tmp_path / "m" / "loss.csv") as f:
        levels = [int(r["level"]) for r in csv.DictReader(f)]
    assert levels == [8] * 4 + [16] * 3


def test_resume_ignores_a_checkpoint_from_other_params(tmp_path):
    paths = gaussian_store(tmp_path, samples=24)
    ckpt = tmp_path / "ckpt.pt"
    train_run(params_for((8, 16), [[8, 6]]), "run", paths, tmp_path / "model.pt", ckpt,
              progress=False, stop_after=3)
    other = params_for((8, 16), [[8, 6]], lr=5e-4)
    summary = train_run(other, "run", paths, tmp_path / "model.pt", ckpt, resume=True,
                        progress=False)
    assert summary["steps"] == 6 and summary["samples_seen"] == 6 * 8


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", None])
def test_bad_model_files_give_one_line(tmp_path, content):
    path = tmp_path / "model.pt"
    if content is None:
        import pickle

        path.write_bytes(pickle.dumps({"format": 1, "obj": object()}))
    else:
        path.write_bytes(content)
    with pytest.raises(MldiffError, match="model.pt: not a loadable mldiff checkpoint") as info:
        load_model(path, torch.device("cpu"))
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_fno_reaches_the_analytic_dsm_minimum_on_gaussian_data(tmp_path):
    """For x ~ N(m, C) with C = c·Q the optimal noise predictor is known in closed form."""
    paths = gaussian_store(tmp_path, levels=(16,), samples=512)
    params = params_for((16,), [[16, 600]], lr=3e-3, batch_size=32, ema_decay=0.95,
                        validate_every=600, warmup_steps=20)
    train_run(params, "run", paths, tmp_path / "model.pt", tmp_path / "c.pt", progress=False)
    net, process, info = load_model(tmp_path / "model.pt", torch.device("cpu"))

    # The store normalizes by (mean, std) of its training split: x_norm ~ N(-mean/std, C/std²).
    mean, std = info["stats"]["mean"][0], info["stats"]["std"][0]
    exact = GaussianScore(
        process, build_prior("matern", gamma=1.5, scale=DATA_SCALE / std**2), mean=-mean / std
    )
    g = torch.Generator().manual_seed(1)
    law = build_prior("matern", gamma=1.5, scale=DATA_SCALE)
    x0 = ((law.sample((2048, 1), 16, "neumann", g, torch.float32)) - mean) / std
    t = process.sample_time(len(x0), g)
    state = g.get_state()
    with torch.no_grad():
        learned = process.loss(net, x0, t, g).mean().item()
        g.set_state(state)
        optimal = process.loss(exact, x0, t, g).mean().item()
    assert optimal <= learned <= 1.05 * optimal, (learned, optimal)
    assert np.isfinite(open_level(paths[16])["u"].values).all()


def test_expected_flops_count_each_stage_at_its_grid():
    from mldiff.diffusion import build_process
    from mldiff.models import build_model, estimate_flops
    from mldiff.train import expected_flops

    prior = build_prior("matern", gamma=1.5)
    net = build_model("fno", 1, 1, width=8, modes=4, layers=2, boundary="neumann")
    vp = build_process("vp", prior, "neumann", t_min=0.01)
    dv = build_process("dimvarying", prior, "neumann", t_min=0.01, factors=[2],
                       switch_times=[0.505])
    fine, coarse = estimate_flops(net, 16), estimate_flops(net, 8)
    assert expected_flops(net, vp, 16) == fine
    assert expected_flops(net, dv, 16) == pytest.approx(0.5 * (fine + coarse), rel=2e-3)


@pytest.mark.parametrize("network", ["shared", "per_stage"])
def test_dimvarying_trains_and_samples_on_fewer_grid_points(tmp_path, network):
    from mldiff.sample import generate

    paths = gaussian_store(tmp_path, samples=24)
    options = {"factors": [2], "switch_times": [0.5], "network": network}
    points = {}
    for process in ("vp", "dimvarying"):
        raw = params_for((8, 16), [[16, 4]]).model_dump(mode="json")
        raw["networks"]["fno"]["params"]["modes"] = 4
        raw["diffusion"] = {"process": process, "options": options if process != "vp" else {}}
        params = config.validate(raw)
        out = tmp_path / process / "model.pt"
        summary = train_run(params, "run", paths, out, tmp_path / process / "c.pt",
                            progress=False)
        assert set(summary["final_validation_loss"]) == {"8", "16"}
        ds = generate(out, 16, sampler="em", steps=10, n_samples=4, batch_size=4, seed=0,
                      device="cpu", progress=False)
        assert np.isfinite(ds["u"].values).all()
        points[process] = int(ds.attrs["network_points"])
    assert points["dimvarying"] < 0.7 * points["vp"]


def test_auto_switch_times_are_chosen_from_the_training_data_and_kept_for_sampling(tmp_path):
    from mldiff.diffusion import switch_times_from_data
    from mldiff.sample import generate

    paths = gaussian_store(tmp_path, samples=24)
    raw = params_for((8, 16), [[16, 2]]).model_dump(mode="json")
    raw["networks"]["fno"]["params"]["modes"] = 4
    raw["diffusion"] = {"process": "dimvarying",
                        "options": {"factors": [2], "switch_times": "auto"}}
    out = tmp_path / "model.pt"
    train_run(config.validate(raw), "run", paths, out, tmp_path / "c.pt", progress=False)
    level = open_level(paths[16])
    expected = switch_times_from_data(normalize(level, "train"),
                                      build_prior("matern", gamma=1.5, length=2.0), "neumann",
                                      [2])
    assert 0 < expected[0] < 1
    ds = generate(out, 16, sampler="em", steps=10, n_samples=2, batch_size=2, seed=0,
                  device="cpu", progress=False)
    assert json.loads(ds.attrs["process"])["options"]["switch_times"] == expected


@pytest.mark.parametrize("process", ["cld", "malda"])
def test_multivariate_processes_train_sample_and_report_an_elbo(tmp_path, process):
    from mldiff.sample import generate

    paths = gaussian_store(tmp_path, samples=24)
    raw = params_for((8, 16), [[16, 4]]).model_dump(mode="json")
    raw["diffusion"] = {"process": process}
    params = config.validate(raw)
    out = tmp_path / "model.pt"
    summary = train_run(params, "run", paths, out, tmp_path / "c.pt", progress=False)
    assert set(summary["elbo_bits_per_dim"]) == {"8", "16"}
    ds = generate(out, 16, sampler="em", steps=10, n_samples=4, batch_size=4, seed=0,
                  device="cpu", progress=False)
    assert set(ds.data_vars) == {"u"} and np.isfinite(ds["u"].values).all()


def test_a_diverging_loss_stops_with_the_step_and_keeps_the_last_checkpoint(tmp_path):
    paths = gaussian_store(tmp_path, samples=24)
    params = params_for((8, 16), [[8, 40]], lr=1e9, warmup_steps=0, grad_clip=1e12,
                        checkpoint_every=1)
    ckpt = tmp_path / "c.pt"
    with pytest.raises(MldiffError, match=r"loss is (nan|inf) at step \d+ .*last good checkpoint"):
        train_run(params, "run", paths, tmp_path / "model.pt", ckpt, progress=False)
    assert not (tmp_path / "model.pt").exists()
    saved = load_checkpoint(ckpt)
    assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())


def test_ctrl_c_checkpoints_and_resume_is_bit_identical(tmp_path, capsys):
    """A real SIGINT during `mldiff train` (in-process): one line, exit 2, a checkpoint at the
    interrupt and no model; `--resume` then ends with the uninterrupted run's bytes."""
    import os
    import signal
    import threading

    import yaml

    from helpers import run_cli

    gaussian_store(tmp_path, samples=24)
    params = tmp_path / "p.yaml"
    params.write_text(yaml.safe_dump(params_for((8, 16), [[8, 20], [16, 40]], validate_every=1000,
                                                checkpoint_every=1000).model_dump(mode="json")))

    def train(name, *extra):
        out = tmp_path / name / "model.pt"
        return out, run_cli(capsys, ["train", "--params", params, "--run", "run", "--store",
                                     tmp_path, "--out", out, *extra])

    straight, (code, _) = train("straight")
    assert code == 0
    checkpoint = tmp_path / "cut" / "checkpoint.pt"
    history = tmp_path / "straight" / "loss.csv"

    def press_ctrl_c():  # once training is under way: the first level's checkpoint is written
        while not checkpoint.exists():
            threading.Event().wait(0.001)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=press_ctrl_c, daemon=True).start()
    out, (code, errors) = train("cut")
    assert code == 2 and len(errors) == 1 and "SIGINT at step" in errors[0], errors
    step = json.loads(load_checkpoint(checkpoint)["state"])["step"]
    assert 20 <= step < 60 and not out.exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

    assert train("cut", "--resume")[1][0] == 0
    a = torch.load(straight, weights_only=True)["ema"]
    b = torch.load(out, weights_only=True)["ema"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert history.read_text() == out.with_name("loss.csv").read_text()
    assert not checkpoint.exists()


def test_the_fitted_prior_is_fitted_at_the_finest_level_and_kept_in_the_model_file(tmp_path):
    from mldiff.diffusion import Fitted
    from mldiff.sample import generate

    paths = gaussian_store(tmp_path, samples=24)
    raw = params_for((8, 16), [[8, 2], [16, 2]]).model_dump(mode="json")
    raw["priors"] = {"fitted": {"name": "fitted", "params": {"margin": 0.5}}}
    raw["train"]["runs"]["run"]["prior"] = "fitted"
    out = tmp_path / "model.pt"
    train_run(config.validate(raw), "run", paths, out, tmp_path / "c.pt", progress=False)
    _, process, info = load_model(out, torch.device("cpu"))
    expected = Fitted.fit(normalize(open_level(paths[16]), "train"), "neumann", margin=0.5)
    assert info["spec"]["prior"]["params"] == json.loads(json.dumps(expected.params()))
    torch.testing.assert_close(process.prior.eigenvalues(64, "neumann"),
                               expected.eigenvalues(64, "neumann"))
    ds = generate(out, 32, sampler="em", steps=5, n_samples=2, batch_size=2, seed=0,
                  device="cpu", progress=False)
    assert json.loads(ds.attrs["prior"])["params"]["knots"] == expected.knots


def test_progress_draws_each_step_at_most_once(tmp_path, capsys):
    """The progress bar in a log file: one line per drawn step (the loss shown with it), not
    a second redraw for the loss."""
    paths = gaussian_store(tmp_path, samples=24)
    params = params_for((8, 16), [[8, 4], [16, 3]])
    train_run(params, "run", paths, tmp_path / "m" / "model.pt", tmp_path / "m" / "ckpt.pt")
    drawn = re.findall(r"\| (\d+)/7 ", capsys.readouterr().err)[:-1]  # close() redraws 7/7
    assert drawn and len(drawn) == len(set(drawn)), drawn
