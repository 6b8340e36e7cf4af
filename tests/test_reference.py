"""Reference data simulated on grids finer than the store: the store's own functions, refined.

A FitzHugh–Nagumo store (16 trajectories on 16x16 cells, levels 8 and 16) is built with the
CLI; `mldiff reference` re-simulates its test split and first training samples at 32 and 64.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from helpers import run_cli
from mldiff import io
from mldiff.datasets import SPLITS, open_level, restrict
from mldiff.datasets.reference import reference_samples

PARAMS = {
    "pde": {"n": 16, "times": [0.5, 1.0], "n_samples": 16, "batch_size": 8, "device": "cpu"},
    "store": {"levels": [8, 16], "time": 1.0,
              "split": {"train": 0.5, "validation": 0.25, "test": 0.25}},
    "reference": {"resolutions": [32, 64], "train_samples": 3},
    "train": {"runs": {"r": {"network": "fno", "prior": "matern", "schedule": [[8, 2]]}}},
}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """params.yaml, the store, and the references at 32 and 64, all written by the CLI."""
    from mldiff import cli

    root = tmp_path_factory.mktemp("reference")
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    argv = ["--params", root / "params.yaml"]
    steps = [["simulate", *argv, "--out", root / "raw.nc"]]
    steps += [["store", *argv, "--input", root / "raw.nc", "--level", n,
               "--out", root / "store" / f"level_{n}.nc"] for n in (8, 16)]
    steps += [["reference", *argv, "--store", root / "store", "--resolution", n,
               "--out", root / "reference" / f"n{n}.nc"] for n in (32, 64)]
    for step in steps:
        assert cli.main([str(a) for a in step]) == 0, step
    return root


def test_reference_holds_the_test_split_and_first_training_samples(study):
    level = open_level(study / "store" / "level_16.nc")
    codes = dict(zip(level.sample.values.tolist(), level.split.values.tolist(), strict=True))
    test = [i for i, c in codes.items() if c == SPLITS.index("test")]
    train = [i for i, c in codes.items() if c == SPLITS.index("train")][:3]
    assert reference_samples(level, 3).tolist() == sorted(test + train)
    for n in (32, 64):
        ref = open_level(study / "reference" / f"n{n}.nc")
        assert ref.sample.values.tolist() == sorted(test + train)
        assert [codes[i] for i in ref.sample.values] == ref.split.values.tolist()
        assert (ref.attrs["level"], ref.sizes["x"], ref.attrs["initial_grid"]) == (n, n, 16)
        assert ref.attrs["coarsening"] == "none"
        assert "held piecewise constant" in ref.attrs["reference_law"]
        for stat in ("norm_mean", "norm_std"):
            np.testing.assert_array_equal(ref[stat].values, level[stat].values)


def test_reference_refines_the_stored_functions(study):
    """Restricted to the store's grid, each reference field is its stored field up to the
    discretization error (the attr), far closer than another sample of the law would be."""
    level = open_level(study / "store" / "level_16.nc")
    errors = {}
    for n in (32, 64):
        ref = open_level(study / "reference" / f"n{n}.nc")
        stored = level.u.sel(sample=ref.sample.values).values
        coarse = restrict(torch.from_numpy(ref.u.values.astype(np.float64)), n // 16,
                          "average", "neumann").numpy()
        errors[n] = np.linalg.norm(coarse - stored) / np.linalg.norm(stored)
        assert ref.attrs["relative_l2_to_store"] == pytest.approx(errors[n], rel=1e-5)
        other = np.linalg.norm(coarse - np.roll(stored, 1, axis=0)) / np.linalg.norm(stored)
        assert errors[n] < 0.5 < other, (errors[n], other)
    assert errors[32] < errors[64]  # 64 is nearer the continuum, so farther from 16 cells


def test_reference_is_deterministic_and_records_provenance(study, tmp_path):
    from mldiff import cli

    out = tmp_path / "n32.nc"
    assert cli.main(["reference", "--params", str(study / "params.yaml"), "--store",
                     str(study / "store"), "--resolution", "32", "--out", str(out)]) == 0
    again, first = io.open_dataset(out), io.open_dataset(study / "reference" / "n32.nc")
    np.testing.assert_array_equal(again.u.values, first.u.values)
    assert yaml.safe_load(again.attrs["params"])["reference"] == PARAMS["reference"]
    assert "git_revision" in again.attrs


@pytest.mark.parametrize(
    ("change", "resolution", "expected"),
    [
        ({}, 128, "--resolution 128: not in reference.resolutions [32, 64]"),
        ({"seed": 7}, 32, "level_16.nc: attribute 'source_seed' is 0 but params give 7"),
        ({"store": {**PARAMS["store"], "time": 0.5}}, 32,
         "attribute 'time_value' is 1.0 but params give 0.5"),
    ],
)
def test_bad_reference_requests_are_named_and_write_nothing(
    study, tmp_path, capsys, change, resolution, expected
):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({**PARAMS, **change}))
    out = tmp_path / "ref.nc"
    code, errors = run_cli(capsys, ["reference", "--params", params, "--store", study / "store",
                                    "--resolution", resolution, "--out", out])
    assert code == 2 and len(errors) == 1 and expected in errors[0], errors
    assert list(tmp_path.iterdir()) == [params]
