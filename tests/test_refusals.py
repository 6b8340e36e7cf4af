"""Round two of bad input, one table per class of failure: outputs that would destroy inputs,
input that used to be accepted silently, input that used to end in a traceback. Every case
exits 2 with one line naming the file or the dotted key, and leaves its folder unchanged."""

from __future__ import annotations

import hashlib
import shutil

import pytest
import yaml

from helpers import run_cli
from mldiff import cli, config
from test_bad_input import merged


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A valid small study: params, raw data, store levels, a trained model, samples and
    evaluation results."""
    root = tmp_path_factory.mktemp("tree")
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump(merged({"evaluate": {"n_boot": 4},
                                             "reference": {"resolutions": []}})))
    steps = [
        ["simulate", "--params", params, "--out", root / "raw.nc"],
        *[["store", "--params", params, "--input", root / "raw.nc", "--level", n,
           "--out", root / "store" / f"level_{n}.nc"] for n in (8, 16)],
        ["train", "--params", params, "--run", "r", "--store", root / "store",
         "--out", root / "models" / "r" / "model.pt"],
        ["sample", "--params", params, "--model", root / "models" / "r" / "model.pt",
         "--resolution", 16, "--out", root / "samples" / "r" / "n16.nc"],
        ["evaluate", "--params", params, "--store", root / "store", "--samples",
         root / "samples", "--models", root / "models", "--out", root / "results"],
    ]
    for argv in steps:
        assert cli.main([str(a) for a in argv]) == 0, argv
    return root


def snapshot(folder):
    """Every file (hidden ones included) under ``folder`` with the SHA-256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(capsys, folder, argv, *expected):
    """Run ``mldiff argv``: exit 2, exactly one error line holding each of ``expected`` and
    nothing after it (no continuation lines), no exception escaping (no traceback), ``folder``
    byte for byte unchanged (no output, no temporary)."""
    before = snapshot(folder)
    code = cli.main([str(a) for a in argv])
    lines = capsys.readouterr().err.splitlines()
    errors = [line for line in lines if line.startswith("mldiff: error:")]
    assert code == 2 and len(errors) == 1 and lines[-1] == errors[0], (code, lines[-5:])
    assert all(e in errors[0] for e in expected), (errors, expected)
    assert snapshot(folder) == before


@pytest.fixture
def work(tree, tmp_path):
    """A private copy of the valid study to break."""
    dest = tmp_path / "w"
    shutil.copytree(tree, dest)
    return dest


def _train(d, out, checkpoint=None):
    argv = ["train", "--params", d / "params.yaml", "--run", "r", "--store", d / "store",
            "--out", out]
    return argv + (["--checkpoint", checkpoint] if checkpoint else [])


def _evaluate(d, out, **flags):
    args = {"store": d / "store", "samples": d / "samples", "models": d / "models", **flags}
    return ["evaluate", "--params", d / "params.yaml",
            *[a for k, v in args.items() for a in (f"--{k}", v)], "--out", out]


# (id, argv from the study folder d, expected text): an output that is, holds or lies in an input
DATA_LOSS = [
    ("train --out is --checkpoint", lambda d: _train(d, d / "m.pt", d / "m.pt"),
     "--checkpoint"),
    ("train --out is a store level", lambda d: _train(d, d / "store" / "level_8.nc"),
     "--out"),
    ("train --checkpoint is a store level",
     lambda d: _train(d, d / "m" / "model.pt", d / "store" / "level_16.nc"), "level_16.nc"),
    ("train --out is the params file", lambda d: _train(d, d / "params.yaml"), "--params"),
    ("train --out named like its summary", lambda d: _train(d, d / "m" / "train.json"),
     "train.json"),
    ("train --checkpoint where loss.csv goes",
     lambda d: _train(d, d / "m" / "model.pt", d / "m" / "loss.csv"), "loss.csv"),
    ("store --out is --input", lambda d: ["store", "--params", d / "params.yaml", "--input",
                                         d / "raw.nc", "--level", 8, "--out", d / "raw.nc"],
     "--input"),
    ("store --out is --params", lambda d: ["store", "--params", d / "params.yaml", "--input",
                                          d / "raw.nc", "--level", 8,
                                          "--out", d / "params.yaml"], "--params"),
    ("simulate --out is --params",
     lambda d: ["simulate", "--params", d / "params.yaml", "--out", d / "params.yaml"],
     "--params"),
    ("sample --out is --model",
     lambda d: ["sample", "--params", d / "params.yaml", "--model", d / "models/r/model.pt",
                "--resolution", 16, "--out", d / "models/r/model.pt"], "--model"),
    ("evaluate --out is --samples", lambda d: _evaluate(d, d / "samples"), "--samples"),
    ("evaluate --out inside --store", lambda d: _evaluate(d, d / "store" / "results"),
     "--store"),
    ("evaluate --out holds --models", lambda d: _evaluate(d, d), "--out"),
    ("report --out is --params",
     lambda d: ["report", "--params", d / "params.yaml", "--results", d / "samples",
                "--out", d / "params.yaml"], "--params"),
    ("preset --out is the preset",
     lambda d: ["preset", "tiny", "--out", config.PRESETS_DIR / "tiny.yaml"], "preset"),
]


@pytest.mark.parametrize(("make", "expected"), [c[1:] for c in DATA_LOSS],
                         ids=[c[0] for c in DATA_LOSS])
def test_outputs_never_overwrite_inputs(work, capsys, make, expected):
    before = snapshot(config.PRESETS_DIR)
    refused(capsys, work, make(work), expected)
    assert snapshot(config.PRESETS_DIR) == before


def _text(text):
    return lambda path: path.write_text(text)


ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 10)}]\n" for a, b in zip("abcdef", "bcdefg", strict=True))

# (id, writes the params file, expected text): params files that used to run the default study,
# keep a value they should refuse, or end in a traceback
PARAMS_FILES = [
    ("empty file", _text(""), "expected a YAML mapping of sections, got an empty file"),
    ("only a comment", _text("# nothing\n"), "got an empty file"),
    ("a list", _text("[]\n"), "expected a YAML mapping of sections, got list"),
    ("false", _text("false\n"), "got bool"),
    ("zero", _text("0\n"), "got int"),
    ("duplicate key", _text("seed: 1\nseed: 2\n"), "duplicate key 'seed'"),
    ("duplicate nested key", _text("pde:\n  n: 16\n  n: 32\n"), "duplicate key 'n'"),
    ("not UTF-8", lambda p: p.write_bytes(b"seed: \xff\xfe\n"), "not UTF-8"),
    ("deep nesting", _text("pde:\n  parameters: " + "[" * 400 + "]" * 400 + "\n"),
     "nested deeper than"),
    ("deep mapping", _text("a:\n" + "".join("  " * k + f"k{k}:\n" for k in range(1, 30))),
     "nested deeper than"),
    ("alias bomb", _text(ALIAS_BOMB), "aliases are expanded"),
    ("recursive alias", _text("a: &a [*a]\n"), "nested deeper than"),
    ("templated (yte)", _text("__use_yte__: true\nseed: 1\n"), "__use_yte__: templated"),
    ("python tag", _text("seed: !!python/object/apply:os.system [echo]\n"), "not valid YAML"),
    ("binary value", _text("seed: !!binary aGVsbG8=\n"), "seed: expected plain data"),
    ("a set", _text("store:\n  species: !!set {u}\n"), "store.species: expected plain data"),
    ("integer key", _text("pde:\n  1: 2\n"), "pde: keys must be strings"),
]


@pytest.mark.parametrize(("write", "expected"), [c[1:] for c in PARAMS_FILES],
                         ids=[c[0] for c in PARAMS_FILES])
def test_bad_params_files_are_refused(tmp_path, capsys, write, expected):
    path = tmp_path / "params.yaml"
    write(path)
    refused(capsys, tmp_path, ["simulate", "--params", path, "--out", tmp_path / "raw.nc"],
            f"{path}: ", expected)


# (id, YAML text merged into the small study, expected dotted key and text)
PARAMS_VALUES = [
    ("yes for an integer", "sample: {steps: yes}", "sample.steps: Input should be a valid integer"),
    ("true for an integer", "sample: {steps: true}", "sample.steps: Input should be a valid"),
    ("on for a boolean", "train: {bf16: on}", "train.bf16: Input should be a valid boolean"),
    ("quoted number", "pde: {n: '16'}", "pde.n: Input should be a valid integer"),
    ("sexagesimal", "seed: 1:30", "seed: Input should be a valid integer, got '1:30'"),
    ("date", "seed: 2024-01-01", "seed: Input should be a valid integer"),
    ("float for an integer", "pde: {n_samples: 8.5}", "pde.n_samples: Input should be a valid"),
    ("nan origin", "pde: {origin: .nan}", "pde.origin: expected a finite number"),
    ("inf length", "pde: {length: .inf}", "pde.length: expected a finite number"),
    ("inf tolerance", "evaluate: {tolerance: .inf}", "evaluate.tolerance: expected a finite"),
    ("nan in a list", "pde: {times: [0.5, .nan]}", "pde.times.1: expected a finite number"),
    ("nan pde parameter", "pde: {parameters: {Du: .nan}}", "pde.parameters.Du: expected a"),
    ("inf in process options", "diffusion: {options: {x: -.inf}}", "diffusion.options.x:"),
    ("seed beyond 64 bits", "seed: 18446744073709551616", "seed: expected an integer of at most"),
    ("count beyond 64 bits", "pde: {n_samples: 99999999999999999999999}", "pde.n_samples:"),
    ("count too large to allocate", "sample: {n_samples: 100000000}",
     "sample.n_samples: Input should be less than or equal to 10000000"),
    ("one sample", "sample: {n_samples: 1}", "sample.n_samples: Input should be greater"),
    ("reserved run name", "train: {runs: {reference: {network: fno, prior: matern, "
     "schedule: [[8, 2]]}}}", "train.runs: run names ['reference'] are reserved"),
    ("reserved run prefix", "train: {runs: {prior_matern: {network: fno, prior: matern, "
     "schedule: [[8, 2]]}}}", "train.runs: run names ['prior_matern'] are reserved"),
    ("run name of 300 characters", "train: {runs: {" + "r" * 300 + ": {network: fno, "
     "prior: matern, schedule: [[8, 2]]}}}", "train.runs: run names must be 1 to 64"),
    ("negative network width", "networks: {fno: {arch: fno, params: {width: -1, modes: 4}}}",
     "networks.fno: params.width: expected an integer from 1 to 4096, got -1"),
    ("fractional Fourier modes", "networks: {fno: {arch: fno, params: {width: 4, modes: 2.5}}}",
     "networks.fno: params.modes: expected an integer"),
    ("absurd depth", "networks: {fno: {arch: fno, params: {width: 4, modes: 4, layers: 99999}}}",
     "networks.fno: params.layers: expected an integer from 1 to 4096"),
    ("unknown solver name", "pde: {solver: loose}",
     "pde.solver: expected the name 'tight' or a mapping of ['dt_max', 'dt0', 'ramp_steps']"),
    ("species the system lacks", "store: {species: [w]}", "store.species: ['w'] are not species"),
    ("too few test samples", "store: {split: {train: 0.8, validation: 0.1, test: 0.1}}",
     "pde.n_samples: 8 samples split by store.split"),
    ("no test split", "store: {split: {train: 0.75, validation: 0.25, test: 0.0}}",
     "pde.n_samples: 8 samples split by store.split [0.75, 0.25, 0.0] give"),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in PARAMS_VALUES],
                         ids=[c[0] for c in PARAMS_VALUES])
def test_bad_params_values_are_refused(tmp_path, capsys, text, expected):
    path = tmp_path / "params.yaml"
    path.write_text(_splice(merged({}), text))
    refused(capsys, tmp_path, ["simulate", "--params", path, "--out", tmp_path / "raw.nc"],
            f"{path}: {expected}")


def _splice(base, text):
    """The study's YAML with the sections ``text`` touches written from ``text`` verbatim
    (merged by hand, so that the raw spelling — ``yes``, ``.nan``, a huge integer — reaches
    the loader)."""
    raw = yaml.compose(text)
    lines = []
    for key_node, value_node in raw.value:
        key = key_node.value
        if isinstance(value_node, yaml.MappingNode) and isinstance(base.get(key), dict):
            inner = {k.value: text[v.start_mark.index:v.end_mark.index]
                     for k, v in value_node.value}
            kept = {k: v for k, v in base[key].items() if k not in inner and
                    not (key == "train" and k == "runs" and "runs" in inner)}
            body = yaml.safe_dump(kept, default_flow_style=True, width=10**6).strip()[1:-1]
            extra = ", ".join(f"{k}: {v}" for k, v in inner.items())
            lines.append(f"{key}: {{{body}{', ' if body else ''}{extra}}}")
        else:
            lines.append(f"{key}: {text[value_node.start_mark.index:value_node.end_mark.index]}")
        base = {k: v for k, v in base.items() if k != key}
    return yaml.safe_dump(base) + "\n".join(lines) + "\n"


def _mount(folder, options):
    """Mount a tmpfs with ``options`` on ``folder``; False where that is not allowed."""
    import os
    import shutil
    import subprocess

    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                          capture_output=True).returncode == 0


@pytest.fixture
def small_disk(tmp_path, monkeypatch):
    """A folder on a real 16 KiB tmpfs (needs mount rights, e.g. root in a container); where
    mounting is not allowed, writes there fail half-way with ENOSPC instead."""
    import errno
    import os
    import subprocess

    import xarray as xr

    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = _mount(folder, "size=16k")
    if not mounted:
        def full(write):
            def partial(self, data, *args, **kwargs):
                if not str(self).startswith(str(folder)):
                    return write(self, data, *args, **kwargs)
                write(self, data[: len(data) // 2], *args, **kwargs)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
            return partial

        to_netcdf = xr.Dataset.to_netcdf

        def to_netcdf_full(self, path=None, *args, **kwargs):
            if not str(path).startswith(str(folder)):
                return to_netcdf(self, path, *args, **kwargs)
            to_netcdf(self.isel(sample=slice(0, 1)), path, *args, **kwargs)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

        monkeypatch.setattr(xr.Dataset, "to_netcdf", to_netcdf_full)
        from pathlib import Path
        monkeypatch.setattr(Path, "write_bytes", full(Path.write_bytes))
        monkeypatch.setattr(Path, "write_text", full(Path.write_text))
    yield folder
    if mounted:  # lazily: HDF5 keeps a failed file open until the process exits
        subprocess.run(["umount", "-l", str(folder)], check=True)


# (id, argv writing into folder f from study d, expected text)
FULL_DISK = [
    ("simulate", lambda d, f: ["simulate", "--params", d / "params.yaml", "--out", f / "raw.nc"],
     "raw.nc: cannot write"),
    ("store", lambda d, f: ["store", "--params", d / "params.yaml", "--input", d / "raw.nc",
                            "--level", 16, "--out", f / "level_16.nc"],
     "level_16.nc: cannot write"),
    ("train", lambda d, f: _train(d, f / "model.pt", d / "ckpt.pt"), "model.pt: cannot write"),
    ("sample", lambda d, f: ["sample", "--params", d / "params.yaml", "--model",
                             d / "models/r/model.pt", "--resolution", 64,
                             "--out", f / "n64.nc"], "n64.nc: cannot write"),
]


@pytest.mark.parametrize(("make", "expected"), [c[1:] for c in FULL_DISK],
                         ids=[c[0] for c in FULL_DISK])
def test_a_full_disk_leaves_no_output_and_no_temporary(work, small_disk, capsys, make,
                                                       expected):
    refused(capsys, small_disk, make(work, small_disk), expected)
    assert not list(small_disk.iterdir())


@pytest.fixture
def read_only(tmp_path):
    """A read-only folder: a read-only tmpfs mount (root ignores permission bits), else a
    folder without write permission for an ordinary user."""
    import os
    import subprocess

    folder = tmp_path / "ro"
    folder.mkdir()
    mounted = _mount(folder, "ro,size=16k")
    if not mounted:
        if os.geteuid() == 0:
            pytest.skip("root without mount rights cannot make a read-only folder")
        folder.chmod(0o555)
    yield folder
    if mounted:
        subprocess.run(["umount", str(folder)], check=True)
    else:
        folder.chmod(0o755)


@pytest.mark.parametrize("inside", ["", "sub/"], ids=["in it", "in a new subfolder"])
def test_a_read_only_folder_is_refused_before_anything_runs(work, read_only, capsys, inside):
    out = read_only / inside / "raw.nc"
    refused(capsys, read_only, ["simulate", "--params", work / "params.yaml", "--out", out],
            f"--out {out}: folder {read_only} is not writable")


def test_a_templated_params_file_is_refused_before_snakemake_runs_it(tmp_path):
    """`configfile:` would evaluate a YTE template (code) during `snakemake -n`; the Snakefile
    reads params.yaml with mldiff's loader, which refuses it first."""
    import subprocess

    from conftest import ROOT
    from helpers import ENV

    for name in ("Snakefile", "workflow"):
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(ROOT / name, tmp_path / name)
    (tmp_path / "params.yaml").write_text(
        '__use_yte__: true\nseed: ?__import__("pathlib").Path("pwned").touch() or 1\n')
    proc = subprocess.run(["snakemake", "-n", "--cores", "1"], cwd=tmp_path, env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "__use_yte__: templated params files are refused" in (
        proc.stdout + proc.stderr)
    assert not (tmp_path / "pwned").exists()


def _attrs(path, foreign=True, **attrs):
    """Edit global attributes of a NetCDF file in place, like a user with ncatted; ``foreign``
    also drops mldiff's checksums (a file from another tool or version)."""
    import netCDF4

    from mldiff import io

    with netCDF4.Dataset(path, "a") as nc:
        for key, value in attrs.items():
            nc.setncattr(key, value)
        for key in (io.CHECKSUM_ATTR, io.ATTRS_CHECKSUM_ATTR) if foreign else ():
            nc.delncattr(key)
    return path


def _all_test_split(path):
    import netCDF4

    _attrs(path)
    with netCDF4.Dataset(path, "a") as nc:
        nc["split"][:] = 2
    return path


def _model(d, **changes):
    """Rewrite the trained model file with ``changes`` (``ema_nan``: a NaN weight; ``legacy``:
    weights of a layer the network does not have)."""
    import torch

    path = d / "models" / "r" / "model.pt"
    obj = torch.load(path, weights_only=True)
    if changes.pop("legacy", False):  # a layer this version's network no longer has
        obj["ema"]["out_norm.weight"] = torch.ones(4)
    if changes.pop("ema_nan", False):
        key = next(k for k, v in obj["ema"].items() if v.is_floating_point())
        obj["ema"][key] = obj["ema"][key].clone().fill_(float("nan"))
    obj.update(changes)
    torch.save(obj, path)
    return path


def _samples(d, edit):
    import xarray as xr

    path = d / "samples" / "r" / "n16.nc"
    with xr.open_dataset(path) as ds:
        ds = edit(ds.load())
    ds.attrs.pop("mldiff_sha256", None)
    ds.attrs.pop("mldiff_attrs_sha256", None)
    for var in ds.variables.values():
        var.encoding = {}
    ds.to_netcdf(path)
    return path


def _other_simulation(d):
    """level_16.nc rebuilt from raw data simulated with another seed."""
    params = yaml.safe_load((d / "params.yaml").read_text())
    other = d / "other.yaml"
    other.write_text(yaml.safe_dump({**params, "seed": 1}))
    for argv in (["simulate", "--params", other, "--out", d / "raw1.nc"],
                 ["store", "--params", other, "--input", d / "raw1.nc", "--level", 16,
                  "--out", d / "store" / "level_16.nc"]):
        assert cli.main([str(a) for a in argv]) == 0
    (d / "raw1.nc").unlink()
    other.unlink()


def _then(*steps):
    """Run the corrupting ``steps`` (each takes the study folder), return the last's value."""
    def run(d):
        out = None
        for step in steps:
            out = step(d)
        return out
    return run


def _sample(d):
    return ["sample", "--params", d / "params.yaml", "--model", d / "models/r/model.pt",
            "--resolution", 16, "--out", d / "again.nc"]


def _report(d):
    return ["report", "--params", d / "params.yaml", "--results", d / "results",
            "--out", d / "report.html"]


def _write(rel, text):
    return lambda d: (d / rel).write_text(text)


# (id, corrupts the study folder d, argv from d, texts the error line must hold)
FILES = [
    ("level attribute hand-edited", lambda d: _attrs(d / "store/level_8.nc", False, level=16),
     lambda d: _train(d, d / "m.pt"), ["level_8.nc: attribute checksum mismatch"]),
    ("foreign level attribute not a number", lambda d: _attrs(d / "store/level_8.nc", level="x"),
     lambda d: _train(d, d / "m.pt"), ["level_8.nc: attribute 'level' is 'x', expected an"]),
    ("foreign level of another grid", lambda d: _attrs(d / "store/level_8.nc", level=32),
     lambda d: _train(d, d / "m.pt"), ["level_8.nc: grid 8x8 != level 32"]),
    ("foreign length inf", lambda d: _attrs(d / "store/level_16.nc", length="inf"),
     lambda d: _train(d, d / "m.pt"), ["level_16.nc: attribute 'length' is 'inf', expected a"]),
    ("foreign boundary", lambda d: _attrs(d / "store/level_8.nc", boundary="dirichlet"),
     lambda d: _train(d, d / "m.pt"), ["level_8.nc: attribute 'boundary' is 'dirichlet'"]),
    ("foreign empty species", lambda d: _attrs(d / "store/level_8.nc", species=" "),
     lambda d: _train(d, d / "m.pt"), ["level_8.nc: attribute 'species'"]),
    ("level from another simulation", _other_simulation, lambda d: _train(d, d / "m.pt"),
     ["level_16.nc: normalization statistics or splits differ from", "level_8.nc"]),
    ("level without training samples", lambda d: _all_test_split(d / "store/level_8.nc"),
     lambda d: _train(d, d / "m.pt"), ["level_8.nc: no sample has split code 0"]),
    ("model spec not JSON", lambda d: _model(d, spec="{oops"), _sample,
     ["model.pt: attribute 'spec' is '{oops', expected a JSON object"]),
    ("model geometry empty", lambda d: _model(d, geometry="{}"), _sample,
     ["model.pt: its spec, geometry or stats are not ones this mldiff builds"]),
    ("model geometry a list", lambda d: _model(d, geometry="[1, 2]"), _sample,
     ["model.pt: attribute 'geometry'"]),
    ("model stats of another species count",
     lambda d: _model(d, stats='{"mean": [0, 0], "std": [1, 1]}'), _sample,
     ["model.pt: its spec, geometry or stats", "disagree"]),
    ("model with NaN weights", lambda d: _model(d, ema_nan=True), _sample,
     ["model.pt: weights", "hold NaN or inf"]),
    ("model of another mldiff version", lambda d: _model(d, legacy=True), _sample,
     ["model.pt: weights do not match its network spec (a model of another mldiff version?"]),
    ("model of an unknown prior",
     lambda d: _model(d, spec=_model_spec(d, prior={"name": "brownian", "params": {}})),
     _sample, ["model.pt: ", "brownian"]),
    ("model network too large to build",
     lambda d: _model(d, spec=_model_spec(d, network={"arch": "fno", "params": {
         "width": 4, "modes": 10**6, "layers": 1}})), _sample,
     ["model.pt: spec.network: params.modes: expected an integer from 1 to 4096"]),
    ("samples attribute hand-edited",
     lambda d: _attrs(d / "samples/r/n16.nc", False, resampled_from=8),
     lambda d: _evaluate(d, d / "res"), ["n16.nc: attribute checksum mismatch"]),
    ("foreign resampled_from", lambda d: _attrs(d / "samples/r/n16.nc", resampled_from="x"),
     lambda d: _evaluate(d, d / "res"), ["n16.nc: attribute 'resampled_from' is 'x'"]),
    ("foreign process not JSON", lambda d: _attrs(d / "samples/r/n16.nc", process="[1]"),
     lambda d: _evaluate(d, d / "res"), ["n16.nc: attribute 'process' is '[1]', expected a JSON"]),
    ("zero samples", lambda d: _samples(d, lambda ds: ds.isel(sample=slice(0, 0))),
     lambda d: _evaluate(d, d / "res"), ["n16.nc: holds 0 samples"]),
    ("samples holding NaN", lambda d: _samples(d, lambda ds: ds.where(ds.x > 0)),
     lambda d: _evaluate(d, d / "res"), ["n16.nc: variable 'u' contains NaN"]),
    ("non-numeric validation.csv cell",
     _write("models/r/validation.csv", "step,level,elapsed_s,val_loss_8,val_loss_16\n"
                                       "1,8,0.1,abc,\n"),
     lambda d: _evaluate(d, d / "res"), ["validation.csv: column step, elapsed_s or val_loss_8"]),
    ("train.json with text for a count", _write("models/r/train.json", '{"steps": "many"}'),
     lambda d: _evaluate(d, d / "res"), ["train.json: attribute 'steps' is 'many'"]),
    ("train.json not an object", _write("models/r/train.json", "[]"),
     lambda d: _evaluate(d, d / "res"), ["train.json: expected a JSON object"]),
    ("captions naming a file elsewhere",
     _write("results/figures/captions.json", '[{"file": "../../params.yaml", "caption": "x"}]'),
     _report, ["captions.json: entry", "no paths"]),
    ("captions not a list", _write("results/figures/captions.json", '{"file": "a.png"}'),
     _report, ["captions.json: expected a list"]),
]


def _model_spec(d, **changes):
    import json

    import torch

    spec = json.loads(torch.load(d / "models/r/model.pt", weights_only=True)["spec"])
    return json.dumps({**spec, **changes})


@pytest.mark.parametrize(("corrupt", "make", "expected"), [c[1:] for c in FILES],
                         ids=[c[0] for c in FILES])
def test_files_a_step_reads_are_checked(work, capsys, corrupt, make, expected):
    corrupt(work)
    refused(capsys, work, make(work), *expected)


def _source_study(d, values, attrs=None, **block):
    """A scientist's file ``mine.nc`` (``conc`` over member, lat, lon) and params importing it."""
    import numpy as np
    import xarray as xr

    xr.Dataset({"conc": (("member", "lat", "lon"), np.asarray(values))},
               attrs=attrs or {}).to_netcdf(d / "mine.nc")
    source = {"path": str(d / "mine.nc"), "variables": ["conc"],
              "dims": {"sample": "member", "y": "lat", "x": "lon"}, **block}
    if source["variables"] is None:  # every variable over the dims, as the file has them
        del source["variables"]
    params = d / "params.yaml"
    params.write_text(yaml.safe_dump(merged({"data": {"source": source},
                                             "store": {"species": ["conc"]},
                                             "reference": {"resolutions": []}})))
    return ["simulate", "--params", params, "--out", d / "raw.nc"]


def _rename(d, old, new):
    """Rename variable ``old`` of mine.nc to ``new``; return the study's argv unchanged."""
    import xarray as xr

    with xr.open_dataset(d / "mine.nc") as ds:
        renamed = ds.load().rename({old: new})
    renamed.to_netcdf(d / "mine.nc")
    return ["simulate", "--params", d / "params.yaml", "--out", d / "raw.nc"]


def _fields(shape=(8, 16, 16), dead=(), scale=1.0):
    import numpy as np

    x = np.random.default_rng(0).normal(size=shape) * scale
    for k in dead:
        x[k] = 0.5
    return x


# (id, argv from folder d, expected text): outside data checked at import, naming the file
OUTSIDE = [
    ("no members", lambda d: _source_study(d, _fields((0, 16, 16))), "mine.nc: holds 0 samples"),
    ("one member", lambda d: _source_study(d, _fields((1, 16, 16))),
     "mine.nc: split: 1 samples are too few"),
    ("a 1x1 grid", lambda d: _source_study(d, _fields((8, 1, 1))), "expected samples of at least"),
    ("grid not a multiple of the levels", lambda d: _source_study(d, _fields((8, 24, 24))),
     "mine.nc: grid 24x24 is not a power-of-two multiple of store.levels [8, 16]"),
    ("a dead member", lambda d: _source_study(d, _fields(dead=(3,))),
     "mine.nc: 1 member(s) [3] along 'member' are constant"),
    ("denormals flushed to zero", lambda d: _source_study(d, _fields(scale=1e-300)),
     "mine.nc: 8 member(s) [0, 1, 2, 3, 4, 5, 6, 7] along 'member' are constant"),
    ("boundary contradicting the file",
     lambda d: _source_study(d, _fields(), {"boundary": "periodic"}, boundary="neumann"),
     "mine.nc: boundary 'neumann' contradicts the file's attribute boundary = 'periodic'"),
    ("store species absent from the file",
     lambda d: _source_study(d, _fields(), variables=None) and _rename(d, "conc", "c"),
     "mine.nc: store.species ['conc'] are not among its variables over the sample, y and x"),
    ("file boundary unknown", lambda d: _source_study(d, _fields(), {"boundary": "dirichlet"}),
     "mine.nc: attribute 'boundary' is 'dirichlet'"),
]


@pytest.mark.parametrize("make, expected", [c[1:] for c in OUTSIDE], ids=[c[0] for c in OUTSIDE])
def test_outside_data_is_checked_at_import(tmp_path, capsys, make, expected):
    argv = make(tmp_path)
    refused(capsys, tmp_path, argv, expected)


def test_outside_data_boundary_comes_from_the_file_and_dead_members_can_be_dropped(
        tmp_path, capsys, caplog):
    import numpy as np
    import xarray as xr

    values = _fields(dead=(2, 5)).astype(np.int64)  # integers: converted, with a log line
    argv = _source_study(tmp_path, values, {"boundary": "periodic"}, drop_constant=True,
                         variables=None)  # species: the file's variables
    code, errors = run_cli(capsys, argv)
    assert code == 0, errors
    with xr.open_dataset(tmp_path / "raw.nc") as ds:
        assert ds.attrs["boundary"] == "periodic" and ds.sizes["sample"] == 6
        kept = np.delete(values, [2, 5], axis=0).astype(np.float64)
        np.testing.assert_array_equal(ds["conc"].values, kept)
    assert config.load_params(tmp_path / "params.yaml").boundary == "periodic"
    assert "holds int64 integers; converted to float64" in caplog.text
    assert "dropped 2 constant member(s) [2, 5]" in caplog.text


def _sample_at(n):
    return lambda d: ["sample", "--params", d / "params.yaml", "--model",
                      d / "models/r/model.pt", "--resolution", n, "--out", d / "s.nc"]


def _simulate_to(rel):
    return lambda d: ["simulate", "--params", d / "params.yaml", "--out", d / rel]


# (id, argv from the study folder d, expected text): command-line values, named by their flag
ARGUMENTS = [
    ("resolution not a power of two", _sample_at(24),
     "--resolution 24: expected a power of two from 4 to 4096"),
    ("resolution 3", _sample_at(3), "--resolution 3: expected a power of two"),
    ("resolution 0", _sample_at(0), "--resolution 0: expected a power of two"),
    ("resolution 65536", _sample_at(65536), "--resolution 65536: expected a power of two"),
    ("negative resolution", _sample_at(-16), "--resolution -16: expected a power of two"),
    ("reference resolution not configured",
     lambda d: ["reference", "--params", d / "params.yaml", "--store", d / "store",
                "--resolution", 64, "--out", d / "n64.nc"],
     "--resolution 64: not in reference.resolutions []"),
    ("store level not configured",
     lambda d: ["store", "--params", d / "params.yaml", "--input", d / "raw.nc", "--level", 12,
                "--out", d / "l.nc"], "--level 12: not in store.levels [8, 16]"),
    ("unknown run", lambda d: _train(d, d / "m.pt")[:4] + ["nope"] + _train(d, d / "m.pt")[5:],
     "--run 'nope': not in train.runs ['r']"),
    ("zero threads", lambda d: ["--threads", 0, *_simulate_to("x.nc")(d)],
     "--threads 0: expected 1 to 1024"),
    ("preset path escape", lambda d: ["preset", "../../x", "--out", d / "p.yaml"],
     "preset '../../x': not one of default"),
    ("output is a directory", _simulate_to("store"), "store: is a directory; expected a file"),
    ("output under a file", _simulate_to("raw.nc/raw.nc"), "raw.nc is a file, not a folder"),
    ("results folder is a file", lambda d: _evaluate(d, d / "raw.nc"),
     "raw.nc: is a file; expected a folder"),
    ("params is a directory",
     lambda d: ["simulate", "--params", d / "store", "--out", d / "x.nc"],
     "store: is a directory, not a params file"),
    ("model is a directory",
     lambda d: [*_sample_at(16)(d)[:4], d / "models", *_sample_at(16)(d)[5:]],
     "models: checkpoint not found"),
]


@pytest.mark.parametrize(("make", "expected"), [c[1:] for c in ARGUMENTS],
                         ids=[c[0] for c in ARGUMENTS])
def test_command_line_values_are_checked_first(work, capsys, make, expected):
    refused(capsys, work, make(work), expected)


def test_every_class_has_its_table():
    tables = {"data loss": DATA_LOSS, "params files": PARAMS_FILES, "params values": PARAMS_VALUES,
              "files read": FILES, "command line": ARGUMENTS, "outside data": OUTSIDE,
              "full disk": FULL_DISK}
    assert all(len(t) >= 4 for t in tables.values())
    assert sum(map(len, tables.values())) >= 100
