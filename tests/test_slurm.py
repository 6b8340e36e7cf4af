"""Snakemake on a real SLURM cluster (one throwaway node, see slurm_cluster.py).

The slurm profile runs every rule as an sbatch job; a partition file routes the GPU rules (train,
sample) to a ``gpu`` partition with their ``--gpus=1`` request; the outputs equal a local run's.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml

from slurm_cluster import missing_binaries, slurm_cluster
from test_pipeline import data_files

pytestmark = pytest.mark.slow

MISSING = missing_binaries()
GPU_RULES = {"train", "sample"}
PARTITIONS = "partitions:\n  cpu: {}\n  gpu: {max_gpu: 2}\n"


def snakemake(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    """Start the venv's snakemake in ``cwd``; :func:`finish` waits for it."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return subprocess.Popen(["snakemake", *args], cwd=cwd, env={**env, "PATH": path},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    out = proc.communicate(timeout=timeout)[0]
    assert proc.returncode == 0, f"{proc.args} failed:\n{out[-6000:]}"
    return out


def assert_same_data(a: Path, b: Path) -> None:
    """Same variables, bit for bit (attributes hold provenance and timings, which differ)."""
    with xr.open_dataset(a) as da, xr.open_dataset(b) as db:
        assert set(da.variables) == set(db.variables), a
        for name in da.variables:
            np.testing.assert_array_equal(da[name].values, db[name].values, err_msg=f"{a}: {name}")


def rule_of(job: dict[str, str]) -> str:
    """A job's rule, from the comment the executor plugin sets: rule_NAME[_wildcards_...]."""
    return job["Comment"].removeprefix("rule_").split("_wildcards_")[0]


@pytest.mark.skipif(bool(MISSING), reason=f"SLURM is not installed (missing: {MISSING}); "
                    "`apt-get install slurm-wlm munge` (.ci/run does)")
def test_slurm_profile_submits_every_rule_and_matches_a_local_run(project, tmp_path):
    # One training run (the multilevel one, if any) keeps every rule but halves the jobs.
    params_file = project / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    runs = params["train"]["runs"]
    keep = max(runs, key=lambda name: len(runs[name]["schedule"]))
    params["train"]["runs"] = {keep: runs[keep]}
    params_file.write_text(yaml.safe_dump(params))
    twin = tmp_path / "twin"
    subprocess.run(["cp", "-a", str(project), str(twin)], check=True)
    (tmp_path / "partitions.yaml").write_text(PARTITIONS)

    # The local reference run (through profiles/default) goes on meanwhile: the SLURM run mostly
    # waits for its status polls.
    local = snakemake([], twin, dict(os.environ))
    try:
        with slurm_cluster(partitions=("cpu", "gpu"), cpus=4, gpus=2) as cluster:
            env = {**cluster.env, "SNAKEMAKE_SLURM_PARTITIONS": str(tmp_path / "partitions.yaml")}
            # The profile as a user runs it, plus what this cluster needs: no accounting
            # database (status from squeue), fast polling, no retries, and the rules' own 2
            # threads instead of the profile's GPU-node counts (as the local run: same results).
            out = finish(snakemake([
                "--workflow-profile", "profiles/slurm", "--jobs", "4", "--retries", "0",
                "--slurm-status-command", "squeue",
                "--slurm-init-seconds-before-status-checks", "2",
                "--set-threads", "train=2", "sample=2",
            ], project, env))
            jobs = cluster.jobs()
        finish(local)
    finally:
        local.kill()

    submitted = re.findall(r"has been submitted with SLURM jobid (\d+)", out)
    assert sorted(submitted, key=int) == [job["JobId"] for job in jobs]
    assert Counter(rule_of(job) for job in jobs) == {
        "simulate": 1, "store": len(params["store"]["levels"]),
        "reference": len(params["reference"]["resolutions"]), "train": 1,
        "sample": len(params["sample"]["resolutions"]), "evaluate": 1, "report": 1,
    }
    for job in jobs:
        gpu = rule_of(job) in GPU_RULES
        assert job["JobState"] == "COMPLETED", job
        assert job["Partition"] == ("gpu" if gpu else "cpu"), job
        assert (job.get("TresPerJob") == "gres:gpu:1") == gpu, job

    built_slurm, built_local = data_files(project), data_files(twin)
    assert set(built_slurm) == set(built_local)
    for rel, path in built_slurm.items():
        if path.suffix == ".nc":
            assert_same_data(path, built_local[rel])
