"""Covariance operators: trace class, grid-independent pointwise statistics, operator algebra."""

import json
import math

import pytest
import torch

from mldiff import spectral
from mldiff.diffusion import PRIORS, Fitted, Laplacian, Matern, build_prior
from mldiff.diffusion.priors import MIN_DECAY
from mldiff.errors import MldiffError

BOUNDARIES = ("periodic", "neumann")
TRACE_CLASS = [
    ("matern", {}),
    ("matern", {"gamma": 1.5, "tau": 3.0}),
    ("laplacian", {"gamma": 1.5}),
    ("combined", {"gamma": 1.5}),
]
ALL_PRIORS = [("white", {}), *TRACE_CLASS]


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize(("name", "params"), TRACE_CLASS)
def test_trace_converges_at_order_two_gamma_minus_two(name, params, boundary):
    # Σ_{|k|>K} |k|^(−2γ) ~ K^(2−2γ): successive differences shrink by 2^(−2(γ−1)) per doubling.
    prior = build_prior(name, **params)
    traces = [prior.trace(n, boundary) for n in (32, 64, 128, 256)]
    diffs = [b - a for a, b in zip(traces, traces[1:], strict=False)]
    assert all(d > 0 for d in diffs)
    expected = 2.0 ** (-2 * (prior.gamma - 1))
    for ratio in (diffs[1] / diffs[0], diffs[2] / diffs[1]):
        assert ratio == pytest.approx(expected, rel=0.04)


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_white_noise_trace_is_number_of_modes(boundary):
    white = build_prior("white", scale=0.5)
    assert not white.is_trace_class
    assert [white.trace(n, boundary) for n in (16, 32, 64)] == [0.5 * n * n for n in (16, 32, 64)]


@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize(("name", "params"), TRACE_CLASS)
def test_pointwise_variance_equals_trace_at_every_resolution(name, params, boundary):
    # grid mean of x² = Σ_k λ_k ξ_k² (Parseval), so E = trace(n), Var = 2 Σ_k λ_k² per draw.
    prior = build_prior(name, **params)
    gen, draws = _gen(1), 24
    for n in (32, 64, 128, 256):
        x = prior.sample((draws,), n, boundary, gen, torch.float64)
        lam, weights = prior.eigenvalues(n, boundary), spectral.mode_weights(n, boundary)
        tolerance = 4 * math.sqrt(2 * float((weights * lam**2).sum()) / draws)
        assert float(x.square().mean()) == pytest.approx(prior.trace(n, boundary), abs=tolerance)


def _shared_mode_variance(prior, boundary, n, n_shared, draws, gen):
    """Variance of the function coefficients ĉ/n of draws, on the modes |m| < n_shared/2
    (periodic) or m < n_shared (neumann), ordered alike on every grid."""
    coef = spectral.forward(prior.sample((draws,), n, boundary, gen, torch.float64), boundary) / n
    my, mx = spectral.mode_indices(n, boundary)
    limit = n_shared // 2 if boundary == "periodic" else n_shared
    shared = (my.abs() < limit) & (mx < limit)
    return coef.abs().square().mean(0)[shared], prior.eigenvalues(n, boundary)[shared]


@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize(("name", "params"), ALL_PRIORS)
def test_noise_at_two_resolutions_agrees_in_law_on_shared_modes(name, params, boundary):
    prior, gen, draws = build_prior(name, **params), _gen(2), 3000
    var16, lam16 = _shared_mode_variance(prior, boundary, 16, 16, draws, gen)
    var32, lam32 = _shared_mode_variance(prior, boundary, 32, 16, draws, gen)
    torch.testing.assert_close(lam16, lam32)
    for ratio in (var16 / lam16, var32 / lam32, var32 / var16):
        assert float(ratio.mean()) == pytest.approx(1.0, abs=0.02)
        assert float((ratio - 1).abs().max()) < 0.2  # ~ 6 sd of one mode's variance estimate


@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize(("name", "params"), ALL_PRIORS)
def test_square_roots_compose_to_q_and_identity(name, params, boundary):
    prior = build_prior(name, **params)
    x, y = torch.randn(2, 3, 20, 20, generator=_gen(3), dtype=torch.float64)
    half = prior.apply(x, 0.5, boundary)
    torch.testing.assert_close(prior.apply(half, 0.5, boundary), prior.apply(x, 1.0, boundary))
    torch.testing.assert_close(prior.apply(half, -0.5, boundary), x)
    qx, qy = prior.apply(x, 1.0, boundary), prior.apply(y, 1.0, boundary)
    torch.testing.assert_close((qx * y).sum(), (x * qy).sum())  # self-adjoint


def test_matern_default_tau_keeps_the_official_spectrum_shape_in_mode_numbers():
    # τ = 8 / L²: on side L the eigenvalues are L^(2γ) times those of τ = 8 on the unit square.
    unit, ours = Matern(length=1.0), Matern()
    for boundary in BOUNDARIES:
        torch.testing.assert_close(
            ours.eigenvalues(16, boundary), 2.0**2.2 * unit.eigenvalues(16, boundary)
        )
    assert unit.tau == 8.0 and ours.tau == 2.0


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_laplacian_mean_mode_is_a_stated_variance(boundary):
    free = Laplacian(mean_variance=0.3)
    means = free.sample((4000,), 8, boundary, _gen(4), torch.float64).mean((-1, -2))
    assert float(means.var()) == pytest.approx(0.3, rel=0.1)
    pinned = Laplacian(mean_variance=0.0)
    assert float(pinned.sample((8,), 8, boundary, _gen(4)).mean((-1, -2)).abs().max()) < 1e-6
    with pytest.raises(MldiffError, match="undefined"):
        pinned.apply(torch.zeros(8, 8), -0.5, boundary)


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_combined_is_flat_below_cutoff_and_laplacian_above(boundary):
    cutoff = 3 * math.pi
    combined = build_prior("combined", gamma=1.3, cutoff=cutoff)
    laplacian = build_prior("laplacian", gamma=1.3)
    k2 = spectral.wavenumber_squared(32, 2.0, boundary)
    low = k2 <= cutoff**2
    lam = combined.eigenvalues(32, boundary)
    assert torch.all(lam[low] == cutoff ** (-2.6))
    torch.testing.assert_close(lam[~low], laplacian.eigenvalues(32, boundary)[~low])


def test_dtype_is_kept_and_eigenvalues_are_cached():
    prior = build_prior("matern")
    x = prior.sample((2, 1), 16, "neumann", _gen(5), torch.float32)
    assert x.dtype == torch.float32 and x.shape == (2, 1, 16, 16)
    assert prior.apply(x, -0.5, "neumann").dtype == torch.float32
    table = prior.eigenvalues(16, "neumann", "cpu", torch.float32)
    assert prior.eigenvalues(16, "neumann", "cpu", torch.float32) is table
    assert table.shape == (16, 16) and prior.eigenvalues(16, "periodic").shape == (16, 9)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_sample_and_apply_match_cpu():
    prior = build_prior("matern")
    x = prior.sample((4, 2), 32, "periodic", torch.Generator("cuda").manual_seed(0))
    assert x.is_cuda
    torch.testing.assert_close(
        prior.apply(x, 0.5, "periodic").cpu(), prior.apply(x.cpu(), 0.5, "periodic")
    )


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: build_prior("gauss"), "prior: expected one of"),
        (lambda: build_prior("matern", nu=2.0), r"unknown parameter\(s\) \['nu'\]"),
        (lambda: build_prior("matern", gamma=1.0), "gamma: expected > 1"),
        (lambda: build_prior("laplacian", gamma=0.5), "gamma: expected > 1"),
        (lambda: build_prior("matern", tau=-1.0), "tau: expected"),
        (lambda: build_prior("matern", tau="8"), "tau: expected"),
        (lambda: build_prior("laplacian", mean_variance=-1.0), "mean_variance: expected"),
        (lambda: build_prior("combined", cutoff=0), "cutoff: expected"),
        (lambda: build_prior("white", length=float("inf")), "length: expected"),
        (lambda: build_prior("white").eigenvalues(16, "dirichlet"), "boundary: expected"),
        (lambda: build_prior("white").eigenvalues(1, "periodic"), "n: expected"),
        (lambda: build_prior("white").apply(torch.zeros(4, 4), 2.0, "periodic"), "power"),
        (lambda: build_prior("white").apply(torch.zeros(4, 5), 1.0, "periodic"), "x: expected"),
    ],
)
def test_bad_input_raises_one_line_error(call, message):
    with pytest.raises(MldiffError, match=message) as info:
        call()
    assert "\n" not in str(info.value)


def test_registry_names_match_classes():
    assert sorted(PRIORS) == ["combined", "fitted", "laplacian", "matern", "white"]
    assert all(cls.name == name for name, cls in PRIORS.items())


def _band(n, boundary):
    """Modes inside the grid's circle ``|k| ≤ π n / L`` (L = 2), i.e. not in the corners."""
    return spectral.wavenumber_squared(n, 2.0, boundary).sqrt() <= math.pi * n / 2


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_fitted_prior_recovers_each_species_spectrum(boundary):
    # Two species drawn from Matérn(γ = 1.3, τ = 3) with standard deviations 1 and ½: the fit
    # at 32² matches each per mode within the estimation error of a shell mean and the radial
    # averaging of a curved spectrum (mean |log ratio| 0.02, max 0.2 at the coarsest shells).
    data = build_prior("matern", gamma=1.3, tau=3.0)
    x = data.sample((200, 2), 32, boundary, _gen(0), torch.float64)
    x[:, 1] *= 0.5
    fitted = Fitted.fit(x, boundary)
    lam, c = fitted.eigenvalues(32, boundary), data.eigenvalues(32, boundary)
    assert lam.shape == (2, *c.shape)
    band = _band(32, boundary)
    for species, variance in ((0, 1.0), (1, 0.25)):
        log_ratio = (lam[species] / (variance * c))[band].log()
        assert float(log_ratio.abs().mean()) < 0.05
        assert float(log_ratio.abs().max()) < 0.3
    # Beyond the band: a power law no flatter than MIN_DECAY (trace class), the same operator
    # on every grid (shared modes agree), converging traces.
    assert all(p >= MIN_DECAY for p in fitted.decay)
    my, mx = spectral.mode_indices(32, boundary)
    fine = fitted.eigenvalues(128, boundary)
    index = (my.long() % 128, mx.long()) if boundary == "periodic" else (my.long(), mx.long())
    torch.testing.assert_close(fine[:, index[0], index[1]], lam)
    traces = [fitted.trace(n, boundary) for n in (32, 64, 128, 256)]
    diffs = [b - a for a, b in zip(traces, traces[1:], strict=False)]
    assert diffs[2] / diffs[1] == pytest.approx(2 ** (2 - max(fitted.decay)), rel=0.05)


def test_fitted_prior_round_trips_through_its_parameters_and_validates_them():
    x = build_prior("matern").sample((8, 1), 16, "periodic", _gen(1), torch.float64)
    fitted = Fitted.fit(x, "periodic", margin=0.5)
    rebuilt = build_prior("fitted", **json.loads(json.dumps(fitted.params())))
    torch.testing.assert_close(rebuilt.eigenvalues(64, "neumann"),
                               fitted.eigenvalues(64, "neumann"))
    assert fitted.eigenvalues(16, "periodic").shape == (16, 9)  # one species: plain (n, n_x)
    with pytest.raises(MldiffError, match="not fitted yet"):
        build_prior("fitted").eigenvalues(16, "periodic")
    with pytest.raises(MldiffError, match="one decay > 2"):
        build_prior("fitted", knots=[0.0, 1.0], values=[[1.0, 0.5]], decay=[1.5])
    two = Fitted.fit(torch.cat([x, x], 1), "periodic")
    with pytest.raises(MldiffError, match="one spectrum per species"):
        two.sample((4, 3), 16, "periodic", _gen(2))


def test_fitted_prior_extends_an_exponential_spectrum_by_the_exponential_law():
    # c(k) = exp(−k / 5) (smooth fields, like FitzHugh–Nagumo); fitted at 16² periodic, the law
    # beyond the band is exponential with the data's slope less the margin, so at 4x λ stays
    # above c (data inside Q's support) by at most exp(margin · (k/k_M − 1)).
    knots = [math.pi * s for s in range(40)]
    data = Fitted(knots=knots, values=[[math.exp(-k / 5) for k in knots]], decay=[8.0],
                  laws=["exponential"])
    x = data.sample((400, 1), 16, "periodic", _gen(3), torch.float64)
    fitted = Fitted.fit(x, "periodic")
    assert fitted.laws == ["exponential"]
    assert Fitted.fit(build_prior("matern").sample((400, 1), 16, "periodic", _gen(4),
                                                   torch.float64), "periodic").laws == ["power"]
    k = spectral.wavenumber_squared(64, 2.0, "periodic").sqrt()
    beyond = (k > fitted.knots[-1]) & (k < 32 * math.pi)
    ratio = (fitted.eigenvalues(64, "periodic") / data.eigenvalues(64, "periodic"))[beyond]
    assert 0.7 < float(ratio.min()) and float(ratio.max()) < math.exp(0.25 * 3) * 1.3
