"""Data-parallel training equals single-process training; preempted runs resume exactly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from helpers import gaussian_store, params_for

pytestmark = pytest.mark.slow

ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def write(params, path: Path) -> Path:
    path.write_text(yaml.safe_dump(params.model_dump(mode="json")))
    return path


def train_cmd(params_file: Path, store: Path, out: Path) -> list[str]:
    return ["mldiff", "--threads", "1", "train", "--params", str(params_file), "--run", "run",
            "--store", str(store), "--out", str(out), "--resume"]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["ema"]


def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path):
    gaussian_store(tmp_path, samples=32)
    single = write(params_for((8, 16), [[8, 6], [16, 4]]), tmp_path / "one.yaml")
    double = write(params_for((8, 16), [[8, 6], [16, 4]], processes=2), tmp_path / "two.yaml")
    for name, params in (("one", single), ("two", double)):
        proc = subprocess.run(train_cmd(params, tmp_path, tmp_path / name / "model.pt"),
                              env=ENV, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = weights(tmp_path / "one" / "model.pt"), weights(tmp_path / "two" / "model.pt")
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)
    summary = yaml.safe_load((tmp_path / "two" / "train.json").read_text())
    assert summary["processes"] == 2 and summary["samples_seen"] == 10 * 8


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL],
                         ids=["SIGTERM", "SIGINT", "SIGKILL"])
def test_killed_training_resumes_to_the_uninterrupted_model(tmp_path, sig):
    gaussian_store(tmp_path, samples=32)
    params = write(params_for((8, 16), [[8, 150], [16, 150]], checkpoint_every=20,
                              validate_every=100), tmp_path / "p.yaml")
    ref = subprocess.run(train_cmd(params, tmp_path, tmp_path / "ref" / "model.pt"), env=ENV,
                         capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-3000:]

    out = tmp_path / "job" / "model.pt"
    checkpoint = out.with_name("checkpoint.pt")
    job = subprocess.Popen(train_cmd(params, tmp_path, out), env=ENV, stderr=subprocess.PIPE,
                           text=True)
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job.poll() is None, "training ended before it could be interrupted"
    job.send_signal(sig)
    stderr = job.communicate(timeout=120)[1]
    assert job.returncode != 0 and not out.exists()
    assert checkpoint.exists()
    if sig != signal.SIGKILL:  # Ctrl-C (SIGINT) stops like SIGTERM: checkpoint, one line
        assert f"{sig.name} at step" in stderr and "--resume" in stderr
        assert "Traceback" not in stderr and job.returncode == 2

    again = subprocess.run(train_cmd(params, tmp_path, out), env=ENV, capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed run at step" in again.stderr
    a, b = weights(tmp_path / "ref" / "model.pt"), weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "ref" / "loss.csv").read_text() == out.with_name("loss.csv").read_text()
