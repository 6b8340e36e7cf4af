"""ETDRK4 solver: exact linear decay, mean conservation, 4th order, agreement with scipy."""

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy.integrate import solve_ivp

from mldiff import spectral
from mldiff.pde import (
    ETDRK4,
    FitzHughNagumo,
    ReactionDiffusionSystem,
    clear_coefficient_cache,
    coefficient_cache_info,
    etdrk4,
    etdrk4_coefficients,
    solve,
    step_schedule,
)


class PureDiffusion(ReactionDiffusionSystem):
    """u_t = D Δu (no reaction); not registered."""

    species = ("u",)
    diffusivity_params = ("D",)
    boundary = "neumann"
    defaults = {"D": 0.05}

    def reaction(self, u: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (torch.zeros_like(u),)


def grid(n: int, length: float = 2.0, origin: float = -1.0) -> tuple[torch.Tensor, torch.Tensor]:
    x = spectral.cell_centres(n, length, origin)
    return torch.meshgrid(x, x, indexing="ij")


def test_coefficients_match_closed_forms_and_limits():
    z = torch.tensor([[0.0, -0.5, -3.0, -40.0, -2e3]], dtype=torch.float64)
    h = 0.1
    k = etdrk4_coefficients(z / h, h)
    ez = torch.exp(z)
    far = z[0, 1:]
    closed = {
        "q": h * (torch.exp(z / 2) - 1) / z,
        "f1": h * (-4 - z + ez * (4 - 3 * z + z**2)) / z**3,
        "f2": h * (2 + z + ez * (z - 2)) / z**3,
        "f3": h * (-4 - 3 * z - z**2 + ez * (4 - z)) / z**3,
    }
    for name, exact in closed.items():
        got = getattr(k, name)
        assert torch.allclose(got[0, 1:], exact[0, 1:], rtol=1e-12, atol=0), name
    # z → 0: Q → h/2 and f1, f2, f3 → h/6 (ETDRK4 reduces to classical RK4)
    assert k.q[0, 0].item() == pytest.approx(h / 2, rel=1e-13)
    for name in ("f1", "f2", "f3"):
        assert getattr(k, name)[0, 0].item() == pytest.approx(h / 6, rel=1e-13)
    assert torch.equal(k.e[0, 1:], torch.exp(far))


def test_coefficients_are_cached_across_solvers_and_calls(monkeypatch):
    """A second solve (a new solver, a new batch) computes no coefficient and gives the same
    bits as an uncached one; another operator, dtype or step misses."""
    system = FitzHughNagumo()
    u0 = torch.randn(3, 2, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def run(u: torch.Tensor) -> torch.Tensor:
        return solve(system, u, [0.3, 1.0], laplacian="finite_volume")

    clear_coefficient_cache()
    first = run(u0)
    misses = coefficient_cache_info()["misses"]
    assert 0 < misses == coefficient_cache_info()["entries"]
    hits = coefficient_cache_info()["hits"]
    for u in (u0, u0[1:2]):  # the same batch again, then one of its samples alone
        again = run(u)
        assert torch.equal(again, first[1:2] if len(u) == 1 else first)
    info = coefficient_cache_info()
    assert info["misses"] == misses and info["hits"] > hits
    clear_coefficient_cache()
    assert torch.equal(run(u0), first) and coefficient_cache_info()["misses"] == misses
    # the cached value is the uncached computation, cast; other keys miss
    linear = -torch.rand(2, 16, 16, dtype=torch.float64)
    solver = ETDRK4(linear, lambda u: u, "neumann")
    k = solver.coefficients(0.05)
    assert torch.equal(k.f2, etdrk4_coefficients(linear, 0.05).f2)
    before = coefficient_cache_info()["misses"]
    assert solver.coefficients(0.05) is k
    ETDRK4(2 * linear, lambda u: u, "neumann").coefficients(0.05)
    ETDRK4(linear, lambda u: u, "neumann", dtype=torch.float32).coefficients(0.05)
    solver.coefficients(0.1)
    assert coefficient_cache_info()["misses"] == before + 3
    # bounded in bytes: least recently used entries go first, the newest always stays
    monkeypatch.setattr(etdrk4, "CACHE_BYTES", 1)
    solver.coefficients(0.2)
    assert coefficient_cache_info()["entries"] == 1
    assert solver.coefficients(0.2) is solver.coefficients(0.2)


def test_step_schedule_ramps_doubles_and_lands_on_save_times():
    times = [0.0, 0.05, 0.3, 1.0, 2.0]
    schedule = step_schedule(times, dt_max=0.2, dt0=0.01, ramp_steps=2)
    assert schedule[0] == []
    # doubling after every 2 full steps; the last step of an interval is cut to land on it
    assert schedule[1] == pytest.approx([0.01, 0.01, 0.02, 0.01], rel=1e-12)
    assert schedule[2] == pytest.approx([0.02, 0.04, 0.04, 0.08, 0.07], rel=1e-12)
    for (a, b), steps in zip(zip(times, times[1:], strict=False), schedule[1:], strict=True):
        assert math.isclose(sum(steps), b - a, rel_tol=1e-12)
    assert schedule[-1] == pytest.approx([0.2] * 5, rel=1e-12)
    assert max(h for steps in schedule for h in steps) <= 0.2 * (1 + 1e-12)


def test_neumann_cosine_decays_exactly():
    n, d, t = 32, 0.05, [0.3, 1.7]
    y, x = grid(n)
    my, mx = 3, 5
    u0 = torch.cos(math.pi * my * (y + 1) / 2) * torch.cos(math.pi * mx * (x + 1) / 2)
    out = solve(PureDiffusion({"D": d}), u0[None, None], t, dt_max=0.25, dt0=0.05)
    k2 = (math.pi / 2) ** 2 * (my**2 + mx**2)
    for i, ti in enumerate(t):
        exact = math.exp(-d * k2 * ti) * u0
        torch.testing.assert_close(out[0, i, 0], exact, rtol=0, atol=1e-13)


def test_periodic_fourier_mode_decays_exactly():
    n, d, t = 32, 0.02, [0.5, 2.0]
    y, x = grid(n)
    my, mx = 2, -7
    u0 = torch.cos(math.pi * (my * y + mx * x) + 0.3)
    system = PureDiffusion({"D": d})
    out = solve(system, u0[None, None], t, boundary="periodic", dt_max=0.3, dt0=0.1)
    k2 = math.pi**2 * (my**2 + mx**2)
    for i, ti in enumerate(t):
        torch.testing.assert_close(out[0, i, 0], math.exp(-d * k2 * ti) * u0, rtol=0, atol=1e-13)


@pytest.mark.parametrize("laplacian", ["spectral", "finite_volume"])
def test_neumann_diffusion_conserves_mean(laplacian):
    g = torch.Generator().manual_seed(1)
    u0 = torch.randn(3, 1, 24, 24, generator=g, dtype=torch.float64) + 0.7
    out = solve(PureDiffusion(), u0, [0.5, 3.0], laplacian=laplacian)
    means = out.mean(dim=(-1, -2))
    torch.testing.assert_close(
        means, u0.mean(dim=(-1, -2))[:, None].expand_as(means), atol=1e-14, rtol=0
    )
    assert out[:, -1].std() < 0.1 * u0.std()  # it did diffuse


def test_fitzhugh_nagumo_is_fourth_order_in_dt():
    n = 16
    y, x = grid(n)
    u0 = torch.stack(
        [
            0.8 * torch.cos(math.pi * (x + 1) / 2) * torch.cos(math.pi * (y + 1)),
            0.3 * torch.sin(math.pi * x / 2),
        ]
    )[None]
    system = FitzHughNagumo({"Du": 0.01, "Dv": 0.03})
    t = [2.0]

    def run(dt):
        return solve(system, u0, t, dt_max=dt, dt0=dt)[0, 0, 0]

    reference = run(2.0 / 256)
    dts = np.array([0.5, 0.25, 0.125, 0.0625])
    errors = np.array([float((run(dt) - reference).norm() / reference.norm()) for dt in dts])
    slope = np.polyfit(np.log(dts), np.log(errors), 1)[0]
    assert 3.5 < slope < 4.5, (slope, errors)


def mirror_laplacian(n: int, h: float) -> sp.csr_matrix:
    """5-point cell-centred Laplacian with mirror ghost cells (no flux), row-major (y, x)."""
    main = -2.0 * np.ones(n)
    main[[0, -1]] = -1.0
    one_d = sp.diags([np.ones(n - 1), main, np.ones(n - 1)], [-1, 0, 1]) / h**2
    eye = sp.identity(n)
    return (sp.kron(eye, one_d) + sp.kron(one_d, eye)).tocsr()


def test_finite_volume_neumann_matches_scipy_solve_ivp():
    """The semi-discrete PDEBench system, integrated by scipy to 1e-10, agrees to 1e-8."""
    n, t_end = 16, 0.5
    system = FitzHughNagumo()
    u0 = system.initial_condition(n, seed=3)
    lap = mirror_laplacian(n, 2.0 / n)
    du, dv, k = system.params["Du"], system.params["Dv"], system.params["k"]

    def rhs(_t, y):
        u, v = y[: n * n], y[n * n :]
        return np.concatenate([du * (lap @ u) + u - u**3 - k - v, dv * (lap @ v) + u - v])

    ref = solve_ivp(rhs, (0, t_end), u0.reshape(-1), method="DOP853", rtol=1e-10, atol=1e-10)
    expected = ref.y[:, -1].reshape(2, n, n)
    got = solve(
        system,
        torch.from_numpy(u0)[None],
        [t_end],
        laplacian="finite_volume",
        dt_max=1e-3,
        dt0=1e-4,
        ramp_steps=4,
    )[0, 0].numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-8)


def test_float32_agrees_with_float64():
    system = FitzHughNagumo()
    u0 = torch.from_numpy(system.initial_condition(32, seed=0))[None]
    double = solve(system, u0, [1.0])
    single = solve(system, u0.float(), [1.0])
    assert single.dtype == torch.float32
    assert float((single.double() - double).norm() / double.norm()) < 1e-5
