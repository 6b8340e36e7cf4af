"""simulate_dataset: layout, seeds, batch invariance, blow-up, bad input, step-error estimate."""

import numpy as np
import pytest
import torch

from mldiff import io, spectral
from mldiff.datasets import restrict
from mldiff.errors import MldiffError
from mldiff.pde import (
    TIGHT,
    estimate_step_error,
    get_system,
    resolve_dt0,
    simulate_dataset,
    solve,
)

FAST = {"progress": False, "device": "cpu"}


def test_dataset_layout_coordinates_and_attributes():
    ds = simulate_dataset(
        "gray_scott",
        {"preset": "maze"},
        16,
        [0.0, 5.0, 10.0],
        3,
        7,
        dtype="float32",
        dt_max=1.0,
        dt0=1.0,
        batch_size=2,
        **FAST,
    )
    assert list(ds.data_vars) == ["A", "B"]
    for name in ("A", "B"):
        assert ds[name].dims == ("sample", "time", "y", "x")
        assert ds[name].dtype == np.float32
        assert ds[name].attrs["units"] == "1" and ds[name].attrs["long_name"]
    assert ds.sample.values.tolist() == [0, 1, 2]
    assert ds.time.values.tolist() == [0.0, 5.0, 10.0]
    assert ds.time.attrs == {"units": "1", "long_name": "nondimensional time", "axis": "T"}
    centres = spectral.cell_centres(16).numpy()
    for axis in ("y", "x"):
        np.testing.assert_array_equal(ds[axis].values, centres)
        assert ds[axis].attrs == {"units": "1", "long_name": axis, "axis": axis.upper()}
    attrs = ds.attrs
    assert attrs["pde"] == "gray_scott" and attrs["pde_preset"] == "maze"
    assert (attrs["pde_f"], attrs["pde_k"], attrs["pde_delta_A"]) == (0.029, 0.057, 2e-5)
    assert attrs["boundary"] == "periodic" and attrs["laplacian"] == "spectral"
    assert attrs["seed"] == 7 and "seed + i" in attrs["seed_convention"]
    assert "dt_max=1" in attrs["solver_steps"] and "ETDRK4" in attrs["solver"]
    assert {"mldiff_version", "git_revision", "torch_version", "params"} <= set(attrs)


def test_netcdf_round_trip(tmp_path):
    ds = simulate_dataset("fitzhugh_nagumo", None, 8, [0.0, 0.5], 2, 0, **FAST)
    path = tmp_path / "fhn.nc"
    io.write_netcdf(ds, path)
    back = io.open_dataset(path, variables=("u", "v"), dims=("sample", "time", "y", "x"))
    for name in ("u", "v", "time", "x", "y", "sample"):
        np.testing.assert_array_equal(back[name].values, ds[name].values)
    assert back.attrs["pde_Du"] == 1e-3 and back.attrs["seed"] == 0
    assert back.time.attrs["axis"] == "T"


def test_time_zero_is_the_seeded_initial_condition():
    seed, n = 11, 12
    ds = simulate_dataset("fitzhugh_nagumo", None, n, [0.0, 0.2], 3, seed, **FAST)
    for i in range(3):
        rng = np.random.default_rng(seed + i)
        u0 = rng.standard_normal(n * n).reshape(n, n)
        v0 = rng.standard_normal(n * n).reshape(n, n)
        assert np.array_equal(ds.u.values[i, 0], u0) and np.array_equal(ds.v.values[i, 0], v0)


def test_initial_grid_holds_the_draw_piecewise_constant_and_indices_select_samples():
    coarse = simulate_dataset("fitzhugh_nagumo", None, 8, [0.0, 0.3], 4, 5, **FAST)
    fine = simulate_dataset("fitzhugh_nagumo", None, 32, [0.0], [3, 1], 5, initial_grid=8,
                            **FAST)
    assert fine.sample.values.tolist() == [3, 1] and fine.attrs["initial_grid"] == 8
    blocks = fine.u.values[:, 0].reshape(2, 8, 4, 8, 4)
    assert np.array_equal(blocks, np.broadcast_to(blocks[:, :, :1, :, :1], blocks.shape))
    assert np.array_equal(blocks[:, :, 0, :, 0], coarse.u.values[[3, 1], 0])
    picked = simulate_dataset("fitzhugh_nagumo", None, 8, [0.0, 0.3], [3, 1], 5, **FAST)
    np.testing.assert_array_equal(picked.v.values, coarse.v.values[[3, 1]])


def _refinement_differences(initial_grid) -> list[float]:
    """``‖R u_2n − u_n‖ / ‖u_n‖`` for n = 16, 32, 64 (FitzHugh–Nagumo, finite volume, t = 2.5,
    a 0.5-wide box so that 16 cells resolve the pattern like 64 cells of the default box)."""
    u = {
        n: simulate_dataset(
            "fitzhugh_nagumo", None, n, [2.5], 3, 0, length=0.5, origin=0.0,
            laplacian="finite_volume", initial_grid=initial_grid(n), progress=False,
        ).u.values[:, -1]
        for n in (16, 32, 64, 128)
    }
    return [float(np.linalg.norm(restrict(u[2 * n], 2, "average", "neumann") - u[n])
                  / np.linalg.norm(u[n])) for n in (16, 32, 64)]


def test_refined_simulations_of_one_initial_function_converge_at_second_order():
    """Held piecewise constant, one initial draw is one function: the grids converge to its
    solution at the finite-volume Laplacian's order 2. White noise per cell is a new law per
    grid: the fields do not converge."""
    held = _refinement_differences(lambda n: 16)
    orders = np.log2(np.array(held[:-1]) / np.array(held[1:]))
    assert np.all((orders > 1.6) & (orders < 2.6)), (held, orders)
    per_cell = _refinement_differences(lambda n: n)
    assert min(per_cell) > 0.5 > held[0], (per_cell, held)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize(("system", "boundary"), [("fitzhugh_nagumo", None), ("gray_scott", None)])
def test_samples_are_bitwise_identical_across_batch_sizes(dtype, system, boundary):
    times = [0.1, 0.4] if system == "fitzhugh_nagumo" else [3.0, 6.0]
    runs = [
        simulate_dataset(
            system,
            None,
            16,
            times,
            5,
            3,
            batch_size=b,
            dtype=dtype,
            boundary=boundary,
            dt_max=0.1 if system == "fitzhugh_nagumo" else 1.0,
            **FAST,
        )
        for b in (1, 2, 5)
    ]
    for other in runs[1:]:
        for name in runs[0].data_vars:
            assert np.array_equal(runs[0][name].values, other[name].values)
    single = simulate_dataset(
        system,
        None,
        16,
        times,
        1,
        5,
        dtype=dtype,
        boundary=boundary,
        dt_max=0.1 if system == "fitzhugh_nagumo" else 1.0,
        **FAST,
    )
    for name in single.data_vars:  # sample 2 of seed 3 is sample 0 of seed 5
        assert np.array_equal(single[name].values[0], runs[0][name].values[2])


def test_default_first_step_is_a_fraction_of_the_cell_diffusion_time():
    fhn = get_system("fitzhugh_nagumo")  # max D = 5e-3
    assert resolve_dt0(fhn, 128, 2.0, None, 0.5) == pytest.approx(0.4 * (2 / 128) ** 2 / 5e-3)
    assert resolve_dt0(fhn, 512, 2.0, None, 0.5) == pytest.approx(0.4 * (2 / 512) ** 2 / 5e-3)
    assert resolve_dt0(fhn, 32, 2.0, None, 0.5) == 0.02  # capped at 0.02
    assert resolve_dt0(fhn, 32, 2.0, None, 0.01) == 0.01  # and at dt_max
    assert resolve_dt0(fhn, 128, 2.0, 0.01, 0.5) == 0.01
    ds = simulate_dataset("fitzhugh_nagumo", None, 256, [0.01], 1, 0, **FAST)
    assert f"dt0={0.4 * (2 / 256) ** 2 / 5e-3:g}," in ds.attrs["solver_steps"]


def test_blow_up_raises_with_advice():
    with pytest.raises(MldiffError, match="reduce pde.dt_max"):
        simulate_dataset(
            "fitzhugh_nagumo", None, 16, [400.0], 1, 0, dt_max=200.0, dt0=200.0, **FAST
        )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"times": [0.5, 0.2]}, "strictly increasing"),
        ({"times": [-1.0]}, ">= 0"),
        ({"times": ["soon"]}, "list of numbers"),
        ({"dtype": "float16"}, "dtype"),
        ({"laplacian": "fd"}, "laplacian"),
        ({"boundary": "dirichlet"}, "boundary"),
        ({"n_samples": 0}, "n_samples"),
        ({"n_samples": [1, 1]}, "n_samples"),
        ({"n_samples": [-1]}, "n_samples"),
        ({"initial_grid": 3}, "initial_grid"),
        ({"initial_grid": 16}, "initial_grid"),
        ({"batch_size": 0}, "batch_size"),
        ({"seed": -1}, "seed"),
        ({"device": "gpu0"}, "device"),
        ({"dt0": 1.0, "dt_max": 0.1}, "dt0 <= dt_max"),
        ({"ramp_steps": 0}, "ramp_steps"),
        ({"n": 1}, "n >= 2"),
    ],
)
def test_bad_arguments_raise(kwargs, message):
    args = {
        "system": "fitzhugh_nagumo",
        "parameters": None,
        "n": 8,
        "times": [0.1],
        "n_samples": 1,
        "seed": 0,
        **FAST,
        **kwargs,
    }
    with pytest.raises(MldiffError, match=message):
        simulate_dataset(**args)


def test_solve_checks_the_state_shape_and_dtype():
    with pytest.raises(MldiffError, match="u0: expected shape"):
        solve(get_system("fitzhugh_nagumo"), torch.zeros(1, 3, 8, 8), [0.1])
    with pytest.raises(MldiffError, match="u0: expected dtype"):
        solve(get_system("fitzhugh_nagumo"), torch.zeros(1, 2, 8, 8, dtype=torch.int64), [0.1])


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_request_without_cuda_raises():
    with pytest.raises(MldiffError, match="CUDA is not available"):
        simulate_dataset("fitzhugh_nagumo", None, 8, [0.1], 1, 0, device="cuda", progress=False)


def test_step_error_estimate_matches_the_error_against_a_fine_reference():
    common = {"n": 32, "times": [0.5, 2.0], "device": "cpu"}
    setting = {"dt_max": 0.5, "dt0": 0.05, "ramp_steps": 2}
    estimate = estimate_step_error("fitzhugh_nagumo", None, n_samples=2, **common, **setting)
    fine = {k: v / 4 for k, v in TIGHT.items() if k != "ramp_steps"}
    reference = simulate_dataset(
        "fitzhugh_nagumo",
        None,
        common["n"],
        common["times"],
        2,
        0,
        ramp_steps=16,
        progress=False,
        device="cpu",
        **fine,
    )
    coarse = simulate_dataset(
        "fitzhugh_nagumo",
        None,
        common["n"],
        common["times"],
        2,
        0,
        progress=False,
        device="cpu",
        **setting,
    )
    for name in ("u", "v"):
        diff = np.sqrt(((coarse[name] - reference[name]) ** 2).sum(("sample", "y", "x")))
        actual = float((diff / np.sqrt((reference[name] ** 2).sum(("sample", "y", "x")))).max())
        assert 0.5 < estimate[name] / actual < 2.0, (name, estimate[name], actual)


def test_a_system_added_in_a_user_module_runs_through_the_cli(tmp_path):
    """The README's worked example: one class in a module named by pde.imports."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    import xarray as xr
    import yaml

    from mldiff import config

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = readme.split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "my_systems.py").write_text(code)
    params = {"pde": {"imports": ["my_systems"], "system": "brusselator", "n": 16,
                      "n_samples": 8, "batch_size": 8, "times": [0.5],
                      "parameters": {"b": 3.2}},
              "store": {"levels": [8, 16], "time": 0.5,
                        "split": {"train": 0.5, "validation": 0.25, "test": 0.25}},
              "networks": {"fno": {"arch": "fno", "params": {"modes": 4}}},
              "train": {"runs": {"r": {"network": "fno", "prior": "matern",
                                       "schedule": [[8, 2]]}}}}
    full = config.deep_merge(config.Params().model_dump(mode="json"), params, depth=2)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(full))
    mldiff = shutil.which("mldiff", path=str(Path(sys.executable).parent))
    proc = subprocess.run([mldiff, "simulate", "--params", "params.yaml", "--out", "raw.nc"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with xr.open_dataset(tmp_path / "raw.nc") as ds:
        assert ds.attrs["pde"] == "brusselator" and set(ds.data_vars) == {"u", "v"}
        assert float(ds.attrs["pde_b"]) == 3.2
        assert np.isfinite(ds["u"].values).all()
