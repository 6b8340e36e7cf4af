"""End to end on the tiny preset: Snakemake and DVC build the same files from the same params."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import yaml

from helpers import ENV, assert_same_netcdf, data_files, run

pytestmark = pytest.mark.slow

def dvc_json(args: list[str], cwd) -> dict:
    """``dvc <args> --json``'s standard output, parsed."""
    proc = subprocess.run(["dvc", *args, "--json"], cwd=cwd, env=ENV, capture_output=True,
                          text=True, check=True)
    return json.loads(proc.stdout)


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

    # Everything generated lives under data/ (besides the tools' own .snakemake/ and dvc.lock).
    for root in (project, twin):
        status = run(["git", "status", "--porcelain", "--untracked-files=all"], root)
        stray = [line[3:] for line in status.splitlines()
                 if not line[3:].startswith(("data/", ".snakemake/", ".dvc/"))
                 and line[3:] not in ("dvc.lock", "params.yaml")]
        assert stray == [], stray

    # What a scientist opens: the report, `dvc metrics show`, `dvc plots show`.
    params = yaml.safe_load((project / "params.yaml").read_text())
    runs, resolutions = params["train"]["runs"], params["sample"]["resolutions"]
    page = (project / "data/results/report.html").read_text()
    cells = set(re.findall(r'data-model="([^"]+)" data-resolution="(\d+)"', page))
    assert {(r, str(b)) for r in runs for b in resolutions} <= cells
    assert {("heldout_vs_train", str(b)) for b in resolutions} <= cells
    for b in params["reference"]["resolutions"]:  # the tiny preset simulates 64 directly
        assert f"At {b}x{b} the test split and training samples were <b>simulated directly" in page
    metrics = dvc_json(["metrics", "show"], twin)[""]["data"]
    matrix = metrics["data/results/metrics.json"]["data"]
    assert all(matrix[r][f"n{b}"]["energy_distance"] is not None
               for r in runs for b in resolutions)
    plots = dvc_json(["plots", "show"], twin)["data"]
    for name in ("data/results/spectra.csv", "data/results/metric_vs_resolution.csv",
                 *(f"data/models/{r}/loss.csv" for r in runs)):
        assert plots[name][0]["content"]["data"]["values"], name

    # Nothing to do the second time, for either tool.
    assert dvc_stages_run(run(["dvc", "repro"], twin)) == []
    assert "Nothing to be done" in run(["snakemake", "--cores", "2"], project)


def test_changing_a_parameter_reruns_exactly_the_dependent_steps(project, tmp_path):
    twin = tmp_path / "twin"
    run(["cp", "-a", str(project), str(twin)], tmp_path)
    run(["snakemake", "--cores", "2"], project)
    run(["dvc", "repro"], twin)
    for root in (project, twin):
        params = yaml.safe_load((root / "params.yaml").read_text())
        params["sample"]["steps"] += 1
        (root / "params.yaml").write_text(yaml.safe_dump(params))
    n_samples = len(params["train"]["runs"]) * len(params["sample"]["resolutions"])

    plan = run(["snakemake", "--cores", "2", "--dry-run", "--quiet", "rules"], project)
    planned = {line.split()[0]: int(line.split()[1]) for line in plan.splitlines()
               if len(line.split()) == 2 and line.split()[1].isdigit()}
    assert planned.get("sample") == n_samples, plan
    assert not {"simulate", "store", "reference", "train"} & set(planned)

    stages = dvc_stages_run(run(["dvc", "repro"], twin))
    assert len([s for s in stages if s.startswith("sample@")]) == n_samples
    assert not [s for s in stages if s.split("@")[0] in {"simulate", "store", "reference", "train"}]
