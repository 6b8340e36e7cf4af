"""Snakemake and DVC agree on what each step depends on: the params it reads and the code it
runs (both derived from mldiff.config.step_params and mldiff.codedeps)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT
from mldiff import codedeps, config

STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def _body(stage: str) -> dict:
    return STAGES[stage].get("do", STAGES[stage])


def _pick(tree: dict, keys: list[str]) -> dict:
    """The nested dict holding only the dotted ``keys`` of ``tree``."""
    out: dict = {}
    for key in keys:
        *parents, leaf = key.split(".")
        src, dst = tree, out
        for part in parents:
            src, dst = src[part], dst.setdefault(part, {})
        dst[leaf] = src[leaf]
    return out


def test_dvc_stages_call_their_step_and_list_its_params():
    assert set(STAGES) == set(config.STEP_PARAMS)
    params = config.Params()
    dumped = params.model_dump(mode="json")
    for name in STAGES:
        body = _body(name)
        assert body["cmd"].split()[:2] == ["mldiff", name]
        if name != "train":
            assert tuple(body["params"]) == config.STEP_PARAMS[name]
            continue
        for run, spec in dumped["train"]["runs"].items():  # foreach over train.runs
            keys = [k.replace("${key}", run).replace("${item.prior}", spec["prior"])
                    .replace("${item.network}", spec["network"]) for k in body["params"]]
            assert _pick(dumped, keys) == config.step_params(params, "train", run), run


def test_one_runs_params_leave_the_other_runs_alone():
    params = config.Params()
    runs = list(params.train.runs)
    changed = params.model_copy(deep=True)
    changed.train.runs[runs[0]].schedule[0] = (16, 7)
    assert config.step_params(changed, "train", runs[0]) != config.step_params(
        params, "train", runs[0])
    assert all(config.step_params(changed, "train", r) == config.step_params(params, "train", r)
               for r in runs[1:])


@pytest.mark.parametrize("step", codedeps.STEPS)
def test_dvc_code_deps_are_the_derived_list(step):
    listed = [d for d in _body(step)["deps"] if d.startswith("src/")]
    expected = [f"src/mldiff/{f}" for f in codedeps.step_files(step)]
    assert listed == expected, f"dvc.yaml stage {step}: run `python -m mldiff.codedeps`"
    if step in ("simulate", "reference"):  # user modules (pde.imports) live in systems/
        assert "systems" in _body(step)["deps"]


def test_code_deps_follow_what_a_step_imports():
    """Runtime check: the mldiff modules a step has loaded after running its command's imports
    include the derived list's, and the derived lists are narrower than the whole package
    where the code is unrelated (editing a sampler does not retrain; the report does not
    re-evaluate)."""
    files = {s: set(codedeps.step_files(s)) for s in codedeps.STEPS}
    assert "diffusion/samplers.py" in files["sample"] and "diffusion/samplers.py" not in files[
        "train"]
    assert "evaluate/report.py" in files["report"] and "evaluate/report.py" not in files[
        "evaluate"]
    assert {"config.py", "io.py"} <= files["store"] and "spectral.py" in files["evaluate"]
    probe = ("import sys, mldiff.cli as c, mldiff.codedeps as d\n"
             "from mldiff.evaluate import write_report\n"
             "loaded = {m for m in sys.modules if m.startswith('mldiff')}\n"
             "print(sorted(set(d.step_modules('report')) - loaded))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"  # every derived module of report is one Python really loads


def test_every_data_file_of_the_package_is_a_code_dep():
    package = ROOT / "src" / "mldiff"
    data = {p.relative_to(package).as_posix() for p in package.rglob("*")
            if p.is_file() and p.suffix not in (".py", ".pyc")}
    assert data == {f for files in codedeps.DATA_FILES.values() for f in files}
    assert "evaluate/templates/report.html.j2" in codedeps.step_files("report")


def test_sync_dvc_yaml_rewrites_only_the_code_deps(tmp_path):
    text = (ROOT / "dvc.yaml").read_text()
    stale = tmp_path / "dvc.yaml"
    stale.write_text(text.replace("      - src/mldiff/spectral.py\n", "", 1)
                     .replace("- src/mldiff/io.py\n", "- src/mldiff/io.py\n- src/mldiff/x.py\n", 1))
    assert codedeps.sync_dvc_yaml(stale)
    assert stale.read_text() == text and not codedeps.sync_dvc_yaml(stale)


def test_user_module_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "systems").mkdir()
    (tmp_path / "systems" / "brusselator.py").write_text("")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "__init__.py").write_text("")
    assert codedeps.user_module_files(["systems.brusselator", "mine", "numpy"]) == [
        "systems/brusselator.py", "mine"]


def test_unknown_step():
    with pytest.raises(ValueError, match=re.escape("unknown step 'nope'")):
        codedeps.step_files("nope")


def test_preset_keeps_the_params_files_comments(tmp_path, capsys):
    from helpers import run_cli

    out = tmp_path / "params.yaml"
    out.write_text((ROOT / "params.yaml").read_text())
    comments = [line.split("#", 1)[1] for line in out.read_text().splitlines() if "#" in line]
    assert run_cli(capsys, ["preset", "tiny", "--out", out])[0] == 0
    tiny = out.read_text()
    assert tiny.startswith("# mldiff params: preset 'tiny'")
    assert config.load_params(out).pde.n == 32
    assert all(c in tiny for c in comments)
    assert run_cli(capsys, ["preset", "default", "--out", out])[0] == 0
    assert config.load_params(out) == config.Params()
    assert out.read_text() == (ROOT / "params.yaml").read_text()


@pytest.mark.slow
def test_snakemake_conventions(project):
    """Lint-clean; every rule has its conda env (built by `--sdm conda`); a params typo
    reaches the user as mldiff's one line."""
    from helpers import ENV, run

    assert "Congratulations" in run(["snakemake", "--lint"], project)
    conda = subprocess.run(["snakemake", "--sdm", "conda", "-n"], cwd=project, env=ENV,
                           capture_output=True, text=True)
    if shutil.which("conda"):
        assert conda.returncode == 0, conda.stderr[-2000:]
    else:  # no conda here: Snakemake resolves every rule's env file, then needs the binary
        assert "Error running conda info" in conda.stdout + conda.stderr, conda.stderr[-2000:]
        containerize = subprocess.run(["snakemake", "--containerize"], cwd=project, env=ENV,
                                      capture_output=True, text=True)
        out = containerize.stdout + containerize.stderr
        assert "Hashing conda environment workflow/envs/mldiff.yaml" in out, out[-2000:]
    params = project / "params.yaml"
    params.write_text(params.read_text().replace("\npde:\n", "\npde:\n  nn: 3\n"))
    typo = subprocess.run(["snakemake", "-n"], cwd=project, env=ENV, capture_output=True,
                          text=True)
    lines = [line for line in (typo.stdout + typo.stderr).splitlines() if line.strip()
             and not line.startswith("Using workflow specific profile")]
    assert typo.returncode != 0
    assert any(line.startswith("mldiff: error: ") and "pde.nn" in line for line in lines), lines
    assert len(lines) <= 3, lines  # no schema dump, no traceback
