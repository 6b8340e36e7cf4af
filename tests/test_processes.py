"""VP SDE with a covariance operator: marginals, the DSM optimum, reverse drifts, validation."""

import math

import pytest
import torch

from mldiff import spectral
from mldiff.diffusion import VPSDE, GaussianScore, build_prior, build_process
from mldiff.errors import MldiffError

BOUNDARIES = ("periodic", "neumann")


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_marginal_moments_match_euler_maruyama_of_the_forward_sde(boundary):
    # Simulate dX = −½βX dt + √β Q^{1/2} dW from a fixed X_0; compare with α X_0 and σ² λ_k.
    prior = build_prior("matern", gamma=1.5)
    process, n, draws, steps = VPSDE(prior, boundary), 16, 256, 400
    centres = spectral.cell_centres(n)
    x0 = (1.5 + torch.cos(math.pi * centres)[:, None] * torch.sin(math.pi * centres)).expand(
        draws, 1, n, n
    )
    gen, x, h = _gen(1), x0.clone(), 1.0 / steps
    checkpoints = {steps // 4: 0.25, steps // 2: 0.5, steps: 1.0}
    lam = prior.eigenvalues(n, boundary)
    for i in range(steps):
        t = torch.full((draws,), i * h, dtype=torch.float64)
        z = torch.randn(x.shape, generator=gen, dtype=torch.float64)
        x = x + h * process.drift(x, t) + math.sqrt(h) * process.diffusion_apply(z, t)
        if i + 1 in checkpoints:
            alpha, sigma = process.alpha_sigma(torch.tensor(checkpoints[i + 1]))
            spread = float(sigma) * math.sqrt(prior.trace(n, boundary) / draws)
            assert float((x.mean(0) - alpha * x0[0]).abs().max()) < 5 * spread
            coef = spectral.forward(x - x.mean(0), boundary) / n
            ratio = coef.abs().square().mean(0)[0] / (sigma**2 * lam)
            assert float(ratio.mean()) == pytest.approx(1.0, abs=0.03)


def test_alpha_sigma_closed_form_and_variance_preservation():
    process = VPSDE(build_prior("matern"), "periodic", beta_min=0.1, beta_max=20.0)
    t = torch.linspace(1e-4, 1.0, 50, dtype=torch.float64)
    alpha, sigma = process.alpha_sigma(t)
    # d log α / dt = −½ β(t), α(0) = 1
    grid = torch.linspace(0.0, 1.0, 20001, dtype=torch.float64)
    log_alpha = -0.5 * torch.cumulative_trapezoid(process.beta(grid), grid)
    assert float(log_alpha[-1]) == pytest.approx(float(alpha[-1].log()), rel=1e-8)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(t))
    assert float(process.alpha_sigma(torch.tensor(1e-3, dtype=torch.float64))[1]) == (
        pytest.approx(math.sqrt(1 - math.exp(-2 * (0.25e-6 * 19.9 + 0.5e-3 * 0.1))), rel=1e-9)
    )


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_dsm_loss_at_exact_score_equals_analytic_minimum(boundary):
    # min E‖η − ε‖² = E‖η − E[η|x_t]‖²; a detuned 1.2 ε* costs 0.04 E‖ε*‖² = 0.04 (tr Q − min)
    # more on the same draws of (x0, η).
    prior, data = build_prior("matern"), build_prior("matern", gamma=2.0, tau=5.0, scale=20.0)
    process, n, draws, gen = VPSDE(prior, boundary), 16, 1500, _gen(2)
    exact = GaussianScore(process, data, mean=0.3)
    for t_value in (0.005, 0.1, 0.5, 0.95):
        t = torch.full((draws,), t_value, dtype=torch.float64)
        x0 = 0.3 + data.sample((draws, 1), n, boundary, gen, torch.float64)
        state = gen.get_state()
        losses = process.loss(exact, x0, t, gen)
        minimum = float(exact.minimum_loss(t[:1], n)[0])
        tolerance = 4 * float(losses.std()) / math.sqrt(draws)
        assert float(losses.mean()) == pytest.approx(minimum, abs=tolerance)
        gen.set_state(state)
        excess = process.loss(lambda x, s: 1.2 * exact(x, s), x0, t, gen) - losses
        expected = 0.04 * (prior.trace(n, boundary) - minimum)
        tolerance = 4 * float(excess.std()) / math.sqrt(draws)
        assert float(excess.mean()) == pytest.approx(expected, abs=tolerance)


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_data_law_equal_to_prior_is_stationary(boundary):
    # Data N(0, Q): p_t = N(0, Q) for all t, ε* = σ x, the probability flow is at rest and the
    # reverse SDE drift is +½βx.
    prior = build_prior("laplacian", gamma=1.5)
    process = VPSDE(prior, boundary)
    exact = GaussianScore(process, prior)
    x = prior.sample((3, 2), 16, boundary, _gen(3), torch.float64)
    t = torch.tensor([0.01, 0.3, 0.9], dtype=torch.float64)
    out = exact(x, t)
    beta = process.beta(t).reshape(-1, 1, 1, 1)
    torch.testing.assert_close(out, process.alpha_sigma(t)[1].reshape(-1, 1, 1, 1) * x)
    torch.testing.assert_close(
        process.probability_flow_drift(x, t, out), torch.zeros_like(x), atol=1e-12, rtol=0
    )
    torch.testing.assert_close(process.reverse_drift(x, t, out), 0.5 * beta * x)


def test_minimum_loss_is_trace_at_small_t_and_vanishes_at_large_t():
    # As σ → 0 the noise η is buried under the data (nothing to learn beyond E η = 0); as α → 0
    # x_t ≈ σ η reveals it.
    prior, data = build_prior("matern"), build_prior("matern", gamma=2.0)
    exact = GaussianScore(VPSDE(prior, "neumann"), data)
    t = torch.tensor([1e-6, 1.0], dtype=torch.float64)
    small_t, large_t = exact.minimum_loss(t, 32).tolist()
    assert small_t == pytest.approx(prior.trace(32, "neumann"), rel=1e-3)
    assert large_t < 1e-3 * prior.trace(32, "neumann")


def test_time_sampling_and_time_grid():
    process = VPSDE(build_prior("matern"), "periodic", t_min=0.01)
    t = process.sample_time(4096, _gen(4))
    assert t.shape == (4096,) and t.dtype == torch.float32
    assert float(t.min()) >= 0.01 and float(t.max()) <= 1.0
    assert float(t.mean()) == pytest.approx(0.505, abs=0.015)
    grid = process.time_grid(5)
    assert grid.tolist() == pytest.approx([1.0, 0.802, 0.604, 0.406, 0.208, 0.01])


def test_interface_defaults_for_fixed_grid_process():
    process = build_process("vp", build_prior("white"), "neumann", beta_max=10.0)
    x = torch.randn(2, 3, 8, 8, generator=_gen(5))
    assert process.state_channels(3) == 3 and process.grid_size(0.7, 64) == 64
    assert process.initial_state(x, _gen()) is x and process.output(x) is x
    assert process.resize(x, 0.6, 0.5, _gen()) is x
    x_t, target = process.perturb(x, torch.full((2,), 0.5), _gen(6))
    assert x_t.shape == target.shape == x.shape and x_t.dtype == torch.float32
    prior_draw = process.prior_sample(5, 3, 16, _gen(7), torch.float64)
    assert prior_draw.shape == (5, 3, 16, 16) and prior_draw.dtype == torch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_loss_runs_on_device():
    process = VPSDE(build_prior("matern"), "neumann")
    gen = torch.Generator("cuda").manual_seed(0)
    x0 = torch.randn(4, 1, 16, 16, device="cuda", generator=gen)
    exact = GaussianScore(process, build_prior("matern", gamma=2.0)).cuda()
    assert process.loss(exact, x0, process.sample_time(4, gen), gen).is_cuda


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: VPSDE(build_prior("matern"), "dirichlet"), "boundary: expected"),
        (lambda: VPSDE("matern", "periodic"), "prior: expected a Prior"),
        (lambda: VPSDE(build_prior("matern"), "periodic", t_min=0.0), "t_min: expected"),
        (lambda: VPSDE(build_prior("matern"), "periodic", t_min=1.0), "t_min: expected"),
        (lambda: VPSDE(build_prior("matern"), "periodic", beta_min=-1), "beta_min: expected"),
        (lambda: VPSDE(build_prior("matern"), "periodic", beta_max=0.05), "beta_max: expected"),
        (lambda: build_process("ve", build_prior("matern"), "periodic"), "process: expected"),
        (
            lambda: build_process("vp", build_prior("matern"), "periodic", beta=3.0),
            r"unknown parameter\(s\) \['beta'\]",
        ),
        (
            lambda: GaussianScore(VPSDE(build_prior("matern"), "periodic"), [1.0]),
            "GaussianScore: expected",
        ),
    ],
)
def test_bad_input_raises_one_line_error(call, message):
    with pytest.raises(MldiffError, match=message) as info:
        call()
    assert "\n" not in str(info.value)
