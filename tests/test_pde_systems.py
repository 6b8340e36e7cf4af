"""Reaction–diffusion systems: registry, parameters, presets, initial conditions, patterns."""

import numpy as np
import pytest
import torch

from mldiff.errors import MldiffError
from mldiff.pde import (
    SYSTEMS,
    GrayScott,
    ReactionDiffusionSystem,
    get_system,
    register_system,
    simulate_dataset,
)


def test_fitzhugh_nagumo_initial_condition_is_numpy_default_rng_draws():
    n, seed = 8, 42
    ic = get_system("fitzhugh_nagumo").initial_condition(n, seed)
    rng = np.random.default_rng(seed)
    u0 = rng.standard_normal(n * n).reshape(n, n)
    v0 = rng.standard_normal(n * n).reshape(n, n)
    assert ic.shape == (2, n, n) and ic.dtype == np.float64
    assert np.array_equal(ic[0], u0) and np.array_equal(ic[1], v0)


def test_reaction_rates_follow_the_equations():
    u, v = torch.tensor([[0.3, -1.2]]), torch.tensor([[0.5, 0.1]])
    du, dv = get_system("fitzhugh_nagumo", {"k": 0.1}).reaction(u, v)
    torch.testing.assert_close(du, u - u**3 - 0.1 - v)
    torch.testing.assert_close(dv, u - v)
    gs = get_system("gray_scott", {"preset": "worms"})
    f, k = 0.058, 0.065
    da, db = gs.reaction(u, v)
    torch.testing.assert_close(da, -u * v**2 + f * (1 - u))
    torch.testing.assert_close(db, u * v**2 - (f + k) * v)


def test_parameters_defaults_overrides_and_presets():
    fhn = get_system("fitzhugh_nagumo", {"Du": 2e-3})
    assert fhn.params == {"Du": 2e-3, "Dv": 5e-3, "k": 5e-3}
    assert fhn.diffusivities == (2e-3, 5e-3)
    assert get_system("gray_scott").preset == "gliders"
    for name, (f, k) in {"bubbles": (0.098, 0.057), "spots": (0.03, 0.062)}.items():
        gs = get_system("gray_scott", {"preset": name})
        assert (gs.params["f"], gs.params["k"], gs.preset) == (f, k, name)
    explicit = get_system("gray_scott", {"f": 0.02, "k": 0.05})
    assert (explicit.params["f"], explicit.params["k"], explicit.preset) == (0.02, 0.05, None)
    assert explicit.diffusivities == (2e-5, 1e-5)


@pytest.mark.parametrize(
    ("name", "parameters", "message"),
    [
        ("no_such_pde", None, "expected one of"),
        ("fitzhugh_nagumo", {"Dw": 1.0}, "unknown name"),
        ("fitzhugh_nagumo", {"k": "big"}, "must be a number"),
        ("fitzhugh_nagumo", {"Du": -1.0}, ">= 0"),
        ("fitzhugh_nagumo", {"k": float("nan")}, "finite"),
        ("gray_scott", {"preset": "stripes"}, "preset must be one of"),
        ("gray_scott", {"preset": "maze", "f": 0.03}, "not both"),
    ],
)
def test_bad_names_and_values_raise(name, parameters, message):
    with pytest.raises(MldiffError, match=message):
        get_system(name, parameters)


def test_register_system_adds_a_one_class_system():
    @register_system("test_brusselator")
    class Brusselator(ReactionDiffusionSystem):
        species = ("u", "v")
        diffusivity_params = ("Du", "Dv")
        boundary = "periodic"
        defaults = {"Du": 2e-3, "Dv": 1e-2, "a": 1.0, "b": 3.0}

        def reaction(self, u, v):
            a, b = self.params["a"], self.params["b"]
            u2v = u * u * v
            return a - (b + 1.0) * u + u2v, b * u - u2v

    try:
        assert get_system("test_brusselator", {"b": 3.2}).params["b"] == 3.2
        ds = simulate_dataset("test_brusselator", {"b": 2.0}, 8, [0.1], 2, 0, progress=False)
        assert set(ds.data_vars) == {"u", "v"} and ds.attrs["pde"] == "test_brusselator"
        with pytest.raises(MldiffError, match="already taken"):
            register_system("test_brusselator")(Brusselator)
    finally:
        SYSTEMS.pop("test_brusselator")


def test_gray_scott_initial_condition_is_seeded_patches():
    gs = GrayScott()
    ic = gs.initial_condition(64, seed=5)
    assert np.array_equal(ic, gs.initial_condition(64, seed=5))
    assert not np.array_equal(ic, gs.initial_condition(64, seed=6))
    inside = ic[1] > 0
    assert 0 < inside.mean() < 0.6
    assert np.all(ic[0][inside] == 0.5) and np.all(ic[1][inside] == 0.5)
    assert np.all(ic[0][~inside] == 1.0) and np.all(ic[1][~inside] == 0.0)
    # patches live in physical coordinates: the covered area barely depends on n
    fine = gs.initial_condition(256, seed=5)[1] > 0
    assert abs(fine.mean() - inside.mean()) < 0.05


def test_gray_scott_forms_patterns_from_seeds():
    """Spirals preset on a small periodic box: the B-rich pattern spreads from the seeds."""
    ds = simulate_dataset(
        "gray_scott",
        {"preset": "spirals"},
        32,
        [0.0, 400.0],
        2,
        0,
        length=1.0,
        origin=0.0,
        dt_max=2.0,
        dt0=1.0,
        ramp_steps=1,
        progress=False,
    )
    covered = (ds.B > 0.1).mean(("y", "x")).values  # (sample, time)
    assert np.all(covered[:, 1] > 2 * covered[:, 0]), covered
    assert np.all(ds.B.isel(time=1).var(("y", "x")).values > 1e-3)
