"""Store levels: splits, training-only normalization shared by levels, file round trip."""

import numpy as np
import pytest
import torch
import xarray as xr

from mldiff.datasets import (
    build_level,
    canonical_dataset,
    denormalize,
    normalize,
    open_level,
    split_indices,
)
from mldiff.errors import MldiffError
from mldiff.io import write_netcdf

FRACTIONS = (0.6, 0.2, 0.2)


@pytest.fixture(scope="module")
def source():
    """20 samples of u, v on a 32×32 grid; non-training samples shifted by +100 in u."""
    rng = np.random.default_rng(5)
    u, v = rng.normal(size=(2, 20, 32, 32))
    parts = split_indices(20, FRACTIONS, seed=7)
    u[parts["validation"]] += 100.0
    u[parts["test"]] += 100.0
    return canonical_dataset(
        {"u": u, "v": 3.0 + 0.5 * v},
        length=2.0,
        origin=-1.0,
        boundary="periodic",
        attrs={"source": "memory.nc", "time_index": 50, "time_value": 2.5},
    )


def build(source, n, method="average"):
    return build_level(source, n, method=method, split=FRACTIONS, seed=7, params={"n": n})


def test_splits_are_disjoint_cover_and_reproducible():
    parts = split_indices(101, (0.8, 0.1, 0.1), seed=3)
    assert [len(parts[k]) for k in ("train", "validation", "test")] == [81, 10, 10]
    joined = np.concatenate(list(parts.values()))
    np.testing.assert_array_equal(np.sort(joined), np.arange(101))  # disjoint and covering
    again = split_indices(101, (0.8, 0.1, 0.1), seed=3)
    assert all(np.array_equal(parts[k], again[k]) for k in parts)
    other = split_indices(101, (0.8, 0.1, 0.1), seed=4)
    assert not np.array_equal(parts["test"], other["test"])


@pytest.mark.parametrize(
    ("n", "fractions"), [(10, (0.5, 0.6, 0.1)), (10, (0.0, 0.5, 0.5)), (3, (0.9, 0.1, 0.0))]
)
def test_bad_split_raises(n, fractions):
    with pytest.raises(MldiffError, match="split"):
        split_indices(n, fractions, seed=0)


@pytest.mark.parametrize("method", ["average", "spectral"])
def test_levels_share_split_and_normalization(source, method):
    levels = [build(source, n, method) for n in (32, 16, 8)]
    for level in levels[1:]:
        np.testing.assert_array_equal(level["split"].values, levels[0]["split"].values)
        np.testing.assert_array_equal(level["norm_mean"].values, levels[0]["norm_mean"].values)
        np.testing.assert_array_equal(level["norm_std"].values, levels[0]["norm_std"].values)
        # the domain mean of every sample is the same function's mean at every level
        np.testing.assert_allclose(
            level["u"].values.mean((1, 2)), levels[0]["u"].values.mean((1, 2)), atol=1e-5
        )
    np.testing.assert_array_equal(levels[0]["u"].values, source["u"].values.astype(np.float32))


def test_normalization_stats_come_from_the_training_split_only(source):
    level = build(source, 8)
    train = split_indices(20, FRACTIONS, seed=7)["train"]
    u = source["u"].values[train]
    np.testing.assert_allclose(level["norm_mean"].sel(species="u"), u.mean(), rtol=1e-12)
    np.testing.assert_allclose(level["norm_std"].sel(species="u"), u.std(), rtol=1e-12)
    assert abs(level["norm_mean"].sel(species="u") - source["u"].values.mean()) > 30
    np.testing.assert_allclose(level["norm_mean"].sel(species="v"), 3.0, atol=0.05)
    # at the source level the normalized training data has mean 0 and std 1 per channel
    z = normalize(build(source, 32), split="train").double()
    torch.testing.assert_close(
        z.mean((0, 2, 3)), torch.zeros(2, dtype=torch.float64), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(z.std((0, 2, 3), correction=0), torch.ones(2, dtype=torch.float64))


def test_normalize_round_trip_and_shapes(source):
    level = build(source, 16)
    z = normalize(level)
    assert z.shape == (20, 2, 16, 16) and z.dtype == torch.float32
    assert normalize(level, split="validation").shape == (4, 2, 16, 16)
    back = denormalize(z.double(), level)
    np.testing.assert_allclose(back[:, 0].numpy(), level["u"].values, rtol=1e-6, atol=1e-4)
    pair = (level["norm_mean"].values, level["norm_std"].values)
    torch.testing.assert_close(denormalize(z, pair), denormalize(z, level))


def test_round_trip_through_netcdf(tmp_path, source):
    built = build(source, 16, "spectral")
    write_netcdf(built, tmp_path / "level_16.nc")
    level = open_level(tmp_path / "level_16.nc")
    assert level["u"].dtype == np.float32 and level["split"].dtype == np.int8
    np.testing.assert_array_equal(level["u"].values, built["u"].values)
    np.testing.assert_array_equal(level["split"].values, built["split"].values)
    assert list(level["split"].attrs["flag_values"]) == [0, 1, 2]
    assert level["split"].attrs["flag_meanings"] == "train validation test"
    assert level["x"].attrs["axis"] == "X" and "units" in level["y"].attrs
    np.testing.assert_allclose(level["x"].values, -1 + (np.arange(16) + 0.5) / 8)
    attrs = level.attrs
    assert (attrs["level"], attrs["dx"], attrs["coarsening"]) == (16, 0.125, "spectral")
    assert (attrs["source_resolution"], attrs["coarsening_factor"]) == (32, 2)
    assert attrs["boundary"] == "periodic" and attrs["species"] == "u v"
    assert attrs["time_value"] == 2.5 and attrs["split_seed"] == 7
    np.testing.assert_allclose(attrs["split_fractions"], FRACTIONS)
    assert attrs["Conventions"].startswith("CF-") and '"n": 16' in attrs["params"]
    assert "mldiff_version" in attrs and "git_revision" in attrs
    assert list(level["species"].values) == ["u", "v"]


@pytest.mark.parametrize(
    ("spoil", "needle"),
    [
        (lambda ds: ds.drop_vars("split"), "missing variable"),
        (lambda ds: ds.drop_attrs(deep=False), "not a level file"),
        (lambda ds: ds.assign(u=ds["u"].where(ds["x"] < 0.5)), "NaN"),
        (lambda ds: ds.assign(split=ds["split"] + 3), "split codes"),
        (lambda ds: ds.assign_attrs(level=32), "level 32"),
    ],
)
def test_open_level_rejects_bad_files(tmp_path, source, spoil, needle):
    path = tmp_path / "level_spoiled.nc"
    write_netcdf(spoil(build(source, 8)), path)
    with pytest.raises(MldiffError, match=needle) as err:
        open_level(path)
    assert "level_spoiled.nc" in str(err.value)


def test_build_level_rejects_bad_arguments(source):
    with pytest.raises(MldiffError, match="species"):
        build_level(source, 8, species=["w"])
    with pytest.raises(MldiffError, match="method"):
        build_level(source, 8, method="nearest")
    with pytest.raises(MldiffError, match="power-of-two"):
        build_level(source, 64)
    with pytest.raises(MldiffError, match="read_source"):
        build_level(xr.Dataset({"u": (("a", "b"), np.zeros((2, 2)))}), 2)
