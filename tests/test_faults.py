"""Kills at random moments: re-running the pipeline completes and reproduces every output."""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from helpers import ENV, assert_same_netcdf, data_files, run

pytestmark = pytest.mark.slow

KILLS = 10


def kill_after(cmd: list[str], cwd: Path, delay: float) -> bool:
    """Start ``cmd`` in its own process group and SIGKILL the whole group after ``delay``
    seconds; True if it was still running (so the kill interrupted something)."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        proc.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return True


def assert_same_outputs(reference: Path, other: Path) -> None:
    """Every output equal: NetCDF values and attrs, model weights, loss and metric tables
    (wall-clock timings excepted)."""
    ref, got = data_files(reference), data_files(other)
    assert set(ref) == set(got)
    for rel, path in ref.items():
        if path.suffix == ".nc":
            assert_same_netcdf(path, got[rel])
        elif path.name == "model.pt":
            a = torch.load(path, weights_only=True)["ema"]
            b = torch.load(got[rel], weights_only=True)["ema"]
            assert all(torch.equal(a[k], b[k]) for k in a), rel
        elif path.name == "metrics.json":
            a, b = (json.loads(p.read_text()) for p in (path, got[rel]))
            assert _drop_timings(a) == _drop_timings(b)
        elif path.name == "loss.csv":
            assert path.read_text() == got[rel].read_text(), rel
        elif path.name == "matrix.csv":
            assert _table(path) == _table(got[rel]), rel


def _table(path: Path) -> list[dict[str, str]]:
    """Rows of a results CSV without its wall-clock columns."""
    with open(path) as f:
        return [{k: v for k, v in row.items() if "sampling_s" not in k}
                for row in csv.DictReader(f)]


def _drop_timings(tree):
    if isinstance(tree, dict):
        return {k: _drop_timings(v) for k, v in tree.items() if "time" not in k}
    return tree


def test_snakemake_survives_sigkill_at_random_moments(project, tmp_path):
    reference = tmp_path / "reference"
    run(["cp", "-a", str(project), str(reference)], tmp_path)
    tic = time.monotonic()
    run(["snakemake", "--cores", "2"], reference)
    duration = time.monotonic() - tic

    rng = random.Random(20261123)
    interrupted = 0
    for _ in range(KILLS):
        delay = rng.uniform(0.5, duration / 3)
        interrupted += kill_after(["snakemake", "--cores", "2", "--rerun-incomplete"],
                                  project, delay)
        run(["snakemake", "--unlock"], project)
    assert interrupted >= KILLS // 2
    run(["snakemake", "--cores", "2", "--rerun-incomplete"], project)
    assert_same_outputs(reference, project)
    assert not list((project / "data").rglob(".*.tmp")), "temporary files left behind"


def test_dvc_repro_survives_sigkill(project, tmp_path):
    reference = tmp_path / "reference"
    run(["cp", "-a", str(project), str(reference)], tmp_path)
    run(["dvc", "repro"], reference)

    rng = random.Random(7)
    for _ in range(3):
        kill_after(["dvc", "repro"], project, rng.uniform(3, 20))
    run(["dvc", "repro"], project)
    assert_same_outputs(reference, project)
    assert "up to date" in run(["dvc", "status"], project)
