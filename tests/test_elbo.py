"""ELBO of linear (VP and multivariate) processes: exactness on Gaussian data, learning, units."""

import math

import pytest
import torch

from mldiff import spectral
from mldiff.diffusion import (
    VPSDE,
    JointGaussianScore,
    as_linear,
    build_prior,
    build_process,
    elbo,
    elbo_report,
    gaussian_log_likelihood,
)
from mldiff.errors import MldiffError
from mldiff.models import build_model

PRIOR = {"name": "matern", "gamma": 1.5}
DATA = {"name": "matern", "gamma": 2.0, "tau": 5.0, "scale": 4.0}


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _prior(spec):
    return build_prior(spec["name"], **{k: v for k, v in spec.items() if k != "name"})


def expected_gap(process, data, n, boundary):
    """``E_data[log p(x0) − ELBO(x0)]`` for the exact score, per sample (one channel):
    ``KL(p_T ‖ π)`` plus the decoder gap ``½ log(1 + 1/(ρ |L⁻¹ M e₁|²))`` at ``t_min``, summed
    over modes with whitened data variance ``ρ_k = c_k / λ_k``."""
    process = as_linear(process)
    ends = process.transition(torch.tensor([process.t_min, process.t_max]))
    rho = data.eigenvalues(n, boundary) / process.prior.eigenvalues(n, boundary)
    m, cov = ends.mean[1].detach(), ends.cov[1].detach()
    p_t = rho[..., None, None] * m[:, None] * m[None, :] + cov
    kl = 0.5 * (p_t.diagonal(dim1=-2, dim2=-1).sum(-1) - process.K - torch.logdet(p_t))
    u = torch.linalg.solve_triangular(ends.chol[0], ends.mean[0][:, None], upper=False)
    decoder = 0.5 * torch.log1p(1 / (rho * float(u.detach().square().sum())))
    return float((spectral.mode_weights(n, boundary) * (kl + decoder)).sum())


@pytest.mark.parametrize(
    ("name", "beta_max"),
    [("vp", 20.0), ("cld", 20.0), ("vp", 1.0), ("cld", 1.0), ("alda", 1.0), ("malda", 1.0),
     ("learned", 1.0)],
)
def test_elbo_of_the_exact_score_is_the_loglik_minus_the_analytic_gaps(name, beta_max):
    # For the exact score the bound is tight up to KL(p_T ‖ π) and the decoder gap at t_min:
    # E[ELBO − log p] = −gap ≤ 0; ~0 with the default schedule, clearly negative for β1 = 1.
    # (Monte Carlo error with 96 times: ~0.01 nats/point for VP, ~0.05 for K > 1.)
    boundary, n, draws = "neumann", 12, 96
    data = _prior(DATA)
    process = build_process(name, _prior(PRIOR), boundary, beta_max=beta_max)
    x0 = data.sample((draws, 1), n, boundary, _gen(1), torch.float64)
    difference = elbo(process, JointGaussianScore(process, data), x0, 96, _gen(2)) - (
        gaussian_log_likelihood(x0, data, boundary)
    )
    error = 4 * float(difference.std()) / math.sqrt(draws)
    gap = expected_gap(process, data, n, boundary)
    assert float(difference.mean()) == pytest.approx(-gap, abs=error + 1e-3 * n * n)
    assert float(difference.mean()) < error
    if beta_max == 20.0:
        assert gap < 0.01 * n * n and error < 0.1 * n * n  # close: < 0.01 + 0.1 nats/point
    else:
        assert gap > error


@pytest.mark.parametrize("name", ["vp", "malda"])
def test_elbo_is_lower_for_a_worse_score(name):
    boundary, n, draws = "periodic", 8, 64
    data = _prior(DATA)
    process = build_process(name, _prior(PRIOR), boundary)
    exact = JointGaussianScore(process, data)
    x0 = data.sample((draws, 1), n, boundary, _gen(3), torch.float64)
    best = elbo(process, exact, x0, 64, _gen(4))
    worse = elbo(process, lambda y, t: 1.2 * exact(y, t), x0, 64, _gen(4))
    difference = worse - best
    assert float(difference.mean()) < -4 * float(difference.std()) / math.sqrt(draws)


def test_learned_process_improves_its_elbo():
    # With a short schedule (β1 = 2) the initial learned process leaves x0 visible at t = 1;
    # a few Adam steps on its negative-ELBO loss (exact score, which tracks the process) make
    # it mix faster: the analytic gap shrinks and the estimated ELBO rises.
    boundary, n, draws = "neumann", 8, 64
    data = _prior(DATA)
    process = build_process("learned", _prior(PRIOR), boundary, beta_max=2.0)
    exact = JointGaussianScore(process, data)
    x0 = data.sample((draws, 1), n, boundary, _gen(5), torch.float64)
    gap_before, before = expected_gap(process, data, n, boundary), elbo(process, exact, x0, 64,
                                                                         _gen(6))
    optimizer = torch.optim.Adam(process.parameters(), lr=0.05)
    gen = _gen(7)
    for _ in range(40):
        t = process.sample_time(draws, gen, torch.float64)
        loss = process.loss(exact, x0, t, gen).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    gap_after, after = expected_gap(process, data, n, boundary), elbo(process, exact, x0, 64,
                                                                      _gen(6))
    assert gap_after < 0.5 * gap_before
    gain = after - before
    assert float(gain.mean()) > 4 * float(gain.std()) / math.sqrt(draws)


@pytest.mark.parametrize(
    ("name", "options"), [("learned", {"K": 3}), ("cld", {"objective": "elbo"})]
)
def test_elbo_objective_loss_is_an_unbiased_negative_elbo_per_dimension(name, options):
    boundary, n, draws = "periodic", 8, 48
    data = _prior(DATA)
    process = build_process(name, _prior(PRIOR), boundary, beta_max=5.0, **options)
    exact = JointGaussianScore(process, data)
    x0 = data.sample((draws, 2), n, boundary, _gen(8), torch.float64)
    with torch.no_grad():
        gen = _gen(9)
        losses = torch.stack([
            process.loss(exact, x0, process.sample_time(draws, gen, torch.float64), gen)
            for _ in range(64)
        ])
    reference = -elbo(process, exact, x0, 256, _gen(10)) / (2 * n * n)
    per_sample = losses.mean(0)
    error = 4 * float((per_sample - reference).std()) / math.sqrt(draws)
    assert float(per_sample.mean()) == pytest.approx(float(reference.mean()), abs=error)


def test_time_law_is_a_normalized_density_sampled_by_inverse_cdf():
    process = as_linear(build_process("cld", _prior(PRIOR), "neumann"))
    law = process.time_law()
    assert float((law.pdf * law.grid.diff()).sum()) == pytest.approx(1.0, rel=1e-12)
    torch.testing.assert_close(law.times(law.cdf), law.grid)
    draws = law.times(torch.rand(20000, generator=_gen(11), dtype=torch.float64))
    assert float(draws.min()) >= process.t_min and float(draws.max()) <= 1.0
    empirical = torch.searchsorted(draws.sort().values, law.grid).double() / len(draws)
    assert float((empirical - law.cdf).abs().max()) < 0.015  # Kolmogorov–Smirnov at 1 %
    # importance sampling of ∫ β dt = B(1) − B(t_min), stratified with 2000 points
    u = (torch.arange(2000) + torch.rand(2000, generator=_gen(12), dtype=torch.float64)) / 2000
    t = law.times(u)
    estimate = float((process.vp.beta(t) / law.density(t)).mean())
    exact = float(process.integrated_beta(torch.tensor(1.0)) - process.integrated_beta(
        torch.tensor(process.t_min)))
    assert estimate == pytest.approx(exact, rel=2e-3)


@pytest.mark.parametrize("boundary", ["periodic", "neumann"])
def test_gaussian_log_likelihood_matches_a_dense_multivariate_normal(boundary):
    n, covariance = 4, build_prior("matern", gamma=2.0, scale=3.0)
    basis = torch.eye(n * n, dtype=torch.float64).reshape(n * n, n, n)
    dense = (n * n * covariance.apply(basis, 1.0, boundary)).reshape(n * n, n * n)
    x = covariance.sample((5, 2), n, boundary, _gen(13), torch.float64) + 0.7
    law = torch.distributions.MultivariateNormal(torch.full((n * n,), 0.7, dtype=torch.float64),
                                                 dense)
    expected = law.log_prob(x.reshape(5, 2, n * n)).sum(1)
    torch.testing.assert_close(gaussian_log_likelihood(x, covariance, boundary, 0.7), expected)


def test_elbo_report_units_and_vp_input():
    boundary, n = "periodic", 8
    data = _prior(DATA)
    vp = VPSDE(_prior(PRIOR), boundary)
    x = data.sample((40, 2), n, boundary, _gen(14), torch.float64)
    report = elbo_report(vp, JointGaussianScore(vp, data), x, 48, _gen(15), batch_size=16)
    assert report["samples"] == 40 and report["n_times"] == 48
    assert report["nll_nats_per_point"] == pytest.approx(
        report["bits_per_dim"] * 2 * math.log(2), rel=1e-12)
    exact_bits = float(-gaussian_log_likelihood(x, data, boundary).mean()) / (
        2 * n * n * math.log(2))
    assert report["bits_per_dim"] == pytest.approx(exact_bits, abs=4 * report["bits_per_dim_se"]
                                                   + 0.02)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda p, x: elbo(p, lambda y, t: y, x, 0, _gen()), "n_times: expected"),
        (lambda p, x: elbo(build_process("dimvarying", _prior(PRIOR), "periodic"),
                           lambda y, t: y, x, 4, _gen()), "process: expected the VP SDE"),
        (lambda p, x: elbo(build_process("vp", build_prior("laplacian", mean_variance=0.0),
                                         "periodic"), lambda y, t: y, x, 4, _gen()),
         "zero eigenvalue"),
        (lambda p, x: elbo(p, build_model("fno", 1, 1, width=4, modes=2, layers=1, time_dim=4),
                           x, 4, _gen()), "network: has 1 input channels"),
        (lambda p, x: elbo_report(p, lambda y, t: y, x[:0], 4, _gen()), "at least one field"),
        (lambda p, x: build_process("cld", _prior(PRIOR), "periodic", objective="nll"),
         "objective: expected"),
    ],
)
def test_bad_input_raises(call, message):
    process = build_process("cld", _prior(PRIOR), "periodic")
    x = build_prior("matern").sample((2, 1), 8, "periodic", _gen(16))
    with pytest.raises(MldiffError, match=message) as info:
        call(process, x)
    assert "\n" not in str(info.value)
