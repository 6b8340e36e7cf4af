"""End to end on the tiny preset: Snakemake and DVC build the same files from the same params."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


def run(cmd: list[str], cwd: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def data_files(root: Path) -> dict[str, Path]:
    """Pipeline outputs under data/ (not logs, benchmarks or the user's external data)."""
    skip = {"logs", "benchmarks", "external"}
    return {
        str(p.relative_to(root)): p
        for p in (root / "data").rglob("*")
        if p.is_file() and p.relative_to(root / "data").parts[0] not in skip
        and not p.name.startswith(".")
    }


def assert_same_netcdf(a: Path, b: Path) -> None:
    with xr.open_dataset(a) as da, xr.open_dataset(b) as db:
        assert set(da.variables) == set(db.variables), a
        for name in da.variables:
            np.testing.assert_array_equal(da[name].values, db[name].values, err_msg=str(a))
        drop = {"history"}
        assert {k: v for k, v in da.attrs.items() if k not in drop} == {
            k: v for k, v in db.attrs.items() if k not in drop
        }


def dvc_stages_run(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")]


def test_snakemake_and_dvc_build_the_same_outputs(project, tmp_path):
    twin = tmp_path / "twin"
    run(["cp", "-a", str(project), str(twin)], tmp_path)

    run(["snakemake", "--cores", "2"], project)
    run(["dvc", "repro"], twin)

    built_smk, built_dvc = data_files(project), data_files(twin)
    assert set(built_smk) == set(built_dvc)
    levels = yaml.safe_load((project / "params.yaml").read_text())["store"]["levels"]
    assert {f"data/store/level_{n}.nc" for n in levels} <= set(built_smk)
    for rel, path in built_smk.items():
        if path.suffix == ".nc":
            assert_same_netcdf(path, built_dvc[rel])

    # Nothing to do the second time, for either tool.
    assert dvc_stages_run(run(["dvc", "repro"], twin)) == []
    assert "Nothing to be done" in run(["snakemake", "--cores", "2"], project)


def test_changing_a_parameter_reruns_exactly_the_dependent_steps(project):
    run(["dvc", "repro"], project)
    run(["snakemake", "--cores", "2"], project)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["sample"]["steps"] += 1
    (project / "params.yaml").write_text(yaml.safe_dump(params))

    n_samples = len(params["train"]["runs"]) * len(params["sample"]["resolutions"])
    plan = run(["snakemake", "--cores", "2", "--dry-run", "--quiet", "rules"], project)
    planned = {line.split()[0]: int(line.split()[1]) for line in plan.splitlines()
               if len(line.split()) == 2 and line.split()[1].isdigit()}
    assert planned.get("sample") == n_samples
    assert not {"simulate", "store", "train"} & set(planned)

    stages = dvc_stages_run(run(["dvc", "repro"], project))
    assert sorted(s.split("@")[0] for s in stages if s.startswith("sample")) == ["sample"] * n_samples
    assert not [s for s in stages if s.split("@")[0] in {"simulate", "store", "train"}]
