"""End to end on the tiny preset: Snakemake and DVC build the same files from the same params,
share them (dvc push/pull, snakemake --report) and rerun exactly what a change touches."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import zipfile

import pytest
import yaml

from helpers import ENV, assert_same_netcdf, data_files, run

pytestmark = pytest.mark.slow

OUTPUTS = ("raw", "store", "models", "samples", "results")  # what DVC restores on pull

def dvc_json(args: list[str], cwd) -> dict:
    """``dvc <args> --json``'s standard output, parsed."""
    proc = subprocess.run(["dvc", *args, "--json"], cwd=cwd, env=ENV, capture_output=True,
                          text=True, check=True)
    return json.loads(proc.stdout)


def dvc_stages_run(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")]


def snakemake_plan(root) -> dict[str, int]:
    """Jobs per rule that ``snakemake --dry-run`` plans (``all`` left out)."""
    plan = run(["snakemake", "--cores", "2", "--dry-run", "--quiet", "rules"], root)
    return {line.split()[0]: int(line.split()[1]) for line in plan.splitlines()
            if len(line.split()) == 2 and line.split()[1].isdigit()
            and line.split()[0] not in ("all", "total")}


def dvc_plan(root) -> list[str]:
    """Stages ``dvc repro --dry`` would run, without the ``@item`` suffix, with counts."""
    stages = dvc_stages_run(run(["dvc", "repro", "--dry"], root))
    return sorted(s.split("@")[0] for s in stages)


def edit_params(roots, edit) -> None:
    for root in roots:
        params = yaml.safe_load((root / "params.yaml").read_text())
        edit(params)
        (root / "params.yaml").write_text(yaml.safe_dump(params))


def commit(root, message: str) -> None:
    run(["git", "add", "-A"], root)
    run(["git", "-c", "user.name=test", "-c", "user.email=test@example.org", "commit", "-qm",
         message], root)


def found(tree, key: str):
    """Every value of ``key`` anywhere in the JSON ``tree``."""
    if isinstance(tree, dict):
        if key in tree:
            yield tree[key]
        tree = list(tree.values())
    if isinstance(tree, list):
        for item in tree:
            yield from found(item, key)


def numbers(tree) -> list:
    if isinstance(tree, dict):
        return [x for v in tree.values() for x in numbers(v)]
    return [tree] if isinstance(tree, int | float) and not isinstance(tree, bool) else []


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
    assert all(matrix[r]["energy_distance"][f"n{b}"] is not None
               for r in runs for b in resolutions)
    plots = dvc_json(["plots", "show"], twin)["data"]
    for name in ("data/results/spectra.csv", "data/results/metric_vs_resolution.csv",
                 "data/results/validation.csv", "data/results/generalization.csv",
                 *(f"data/models/{r}/loss.csv" for r in runs)):
        assert plots[name][0]["content"]["data"]["values"], name
    for name in ("data/results/spectra.csv", "data/results/metric_vs_resolution.csv"):
        content = plots[name][0]["content"]  # one line per model (workflow/plots/ templates)
        encoding = content.get("encoding") or content["spec"]["encoding"]
        assert encoding["color"]["field"] == "model"
        assert set(runs) <= {v["model"] for v in content["data"]["values"]}

    # Nothing to do the second time, for either tool.
    assert dvc_stages_run(run(["dvc", "repro"], twin)) == []
    assert "Nothing to be done" in run(["snakemake", "--cores", "2"], project)

    # Snakemake's own report carries the figures and mldiff's HTML report as results.
    run(["snakemake", "--report", str(tmp_path / "report.zip")], project)
    names = zipfile.ZipFile(tmp_path / "report.zip").namelist()
    for figure in ("spectra.png", "metric_vs_resolution.png", "training_cost.png",
                   *(f"samples_n{b}.png" for b in resolutions)):
        assert any(n.endswith(f"/{figure}") for n in names), figure
    assert any(n.endswith("/report.html") for n in names)

    # A collaborator's round trip: push, lose every output and the cache, pull: up to date.
    commit(twin, "results")
    run(["dvc", "push"], twin)
    for name in OUTPUTS:
        shutil.rmtree(twin / "data" / name)
    shutil.rmtree(twin / ".dvc" / "cache")
    run(["dvc", "pull"], twin)
    assert dvc_json(["status"], twin) == {}
    assert dvc_stages_run(run(["dvc", "repro"], twin)) == []
    assert (twin / "data/results/metrics.json").is_file()


def test_changes_rerun_exactly_the_dependent_steps(project, tmp_path):
    """Params, one run's settings (a DVC experiment), a user module, package code: both tools
    plan the same reruns, and the experiment's metrics and plots diff against HEAD."""
    (project / "systems" / "extra.py").write_text("# a user module (pde.imports)\n")
    edit_params([project], lambda p: p["pde"].update(imports=["systems.extra"]))
    commit(project, "with a user module")
    twin = tmp_path / "twin"
    run(["cp", "-a", str(project), str(twin)], tmp_path)
    run(["snakemake", "--cores", "2"], project)
    run(["dvc", "repro"], twin)
    commit(twin, "results")
    params = yaml.safe_load((project / "params.yaml").read_text())
    runs, resolutions = list(params["train"]["runs"]), params["sample"]["resolutions"]
    n_samples = len(runs) * len(resolutions)
    both = (project, twin)

    # The sampler's settings: every sample, nothing upstream.
    edit_params(both, lambda p: p["sample"].update(steps=p["sample"]["steps"] + 1))
    assert snakemake_plan(project) == {"sample": n_samples, "evaluate": 1, "report": 1}
    assert dvc_plan(twin) == sorted(["sample"] * n_samples + ["evaluate", "report"])
    run(["git", "checkout", "params.yaml"], project)
    run(["git", "checkout", "params.yaml"], twin)

    # One run's schedule: that run's training and samples only.
    first = runs[0]
    schedule = params["train"]["runs"][first]["schedule"]
    changed = [[schedule[-1][0], schedule[-1][1] + 1]]
    edit_params([project], lambda p: p["train"]["runs"][first].update(schedule=changed))
    one_run = {"train": 1, "sample": len(resolutions), "evaluate": 1, "report": 1}
    assert snakemake_plan(project) == one_run
    run(["git", "checkout", "params.yaml"], project)
    out = run(["dvc", "exp", "run", "-S", f"train.runs.{first}.schedule={json.dumps(changed)}"],
              twin)
    stages = dvc_stages_run(out)
    assert sorted(stages) == sorted([f"train@{first}", "evaluate", "report",
                                     *(f"sample@{first}-{b}" for b in resolutions)]), stages

    # The experiment in DVC's views: finite numbers, a diff against HEAD, plots of both.
    exps = dvc_json(["exp", "show"], twin)
    metrics = list(found(exps, "data/results/metrics.json"))  # workspace, HEAD, experiment
    assert len(metrics) >= 3 and all(numbers(m["data"]) for m in metrics)
    assert all(math.isfinite(x) for m in metrics for x in numbers(m["data"]))
    diff = dvc_json(["metrics", "diff", "--all"], twin)["data/results/metrics.json"]
    key = f"{first}.energy_distance.n{resolutions[0]}"
    assert math.isfinite(diff[key]["old"]) and math.isfinite(diff[key]["new"])
    per_run = 4 * len(resolutions) + 1  # compact: 4 headline metrics per cell, 1 per run
    assert len(diff) <= per_run * len(runs) + len(resolutions)
    run(["dvc", "plots", "diff", "HEAD", "-o", str(tmp_path / "plots")], twin)
    page = (tmp_path / "plots" / "index.html").read_text()
    assert "metric_vs_resolution.csv" in page and '"rev": "HEAD"' in page

    # Package code: the report's module reruns the report only (both tools).
    for root in both:
        with open(root / "src/mldiff/evaluate/report.py", "a") as f:
            f.write("# edited\n")
    assert snakemake_plan(project) == {"report": 1}
    assert dvc_plan(twin) == ["report"]

    # A user module named in pde.imports: the simulation and the simulated references.
    for root in both:
        with open(root / "systems" / "extra.py", "a") as f:
            f.write("# edited\n")
    assert {"simulate", "reference"} <= set(snakemake_plan(project))
    assert {"simulate", "reference"} <= set(dvc_plan(twin))
