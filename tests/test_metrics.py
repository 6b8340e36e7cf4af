"""Evaluation metrics: analytic values, resolution independence, bootstrap coverage, errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from mldiff import spectral
from mldiff.diffusion import build_prior
from mldiff.errors import MldiffError
from mldiff.evaluate import metrics, spectra

L = 2.0


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _constant_fields(values: torch.Tensor, n: int) -> torch.Tensor:
    """Fields ``a·1`` on an ``n × n`` grid: ``(N,) -> (N, 1, n, n)``; ‖a·1 − b·1‖ = |a − b|."""
    return values.double()[:, None, None, None].expand(-1, 1, n, n).contiguous()


def _normal_quantiles(count: int, shift: float = 0.0) -> torch.Tensor:
    """Stratified draws ``Φ⁻¹((i + ½)/count) + shift``: the law N(shift, 1) up to O(1/count)."""
    u = (torch.arange(count, dtype=torch.float64) + 0.5) / count
    return shift + math.sqrt(2.0) * torch.erfinv(2 * u - 1)


def _folded_mean(mu: float, s: float) -> float:
    """``E|Z|`` for ``Z ~ N(mu, s²)``."""
    cdf = 0.5 * (1 + math.erf(-mu / (s * math.sqrt(2))))
    return s * math.sqrt(2 / math.pi) * math.exp(-(mu**2) / (2 * s**2)) + mu * (1 - 2 * cdf)


def _band_limited(coeffs: torch.Tensor, n: int) -> torch.Tensor:
    """``f(x, y) = Re Σ c[m_y, m_x] exp(2πi (m_y y + m_x x) / L)`` at the cell centres.

    ``coeffs (N, C, 2K+1, 2K+1)`` complex over ``m = -K … K``: the same functions on any grid.
    """
    k = (coeffs.shape[-1] - 1) // 2
    x = spectral.cell_centres(n, L, -L / 2)
    m = torch.arange(-k, k + 1, dtype=torch.float64)
    e = torch.exp(1j * (2 * math.pi / L) * x[:, None] * m[None, :])
    return torch.einsum("ym,ncmk,xk->ncyx", e, coeffs, e).real


def _grf_coeffs(count: int, decay: float, gen: torch.Generator, k: int = 6) -> torch.Tensor:
    """Gaussian coefficients with variance ∝ (1 + |m|²)^(-decay) on the disc |m| ≤ k."""
    m = torch.arange(-k, k + 1, dtype=torch.float64)
    r2 = m[:, None] ** 2 + m[None, :] ** 2
    amp = (1 + r2) ** (-decay / 2) * (r2 <= k**2)
    z = torch.randn(count, 1, 2 * k + 1, 2 * k + 1, 2, generator=gen, dtype=torch.float64)
    return torch.complex(z[..., 0], z[..., 1]) * amp


def test_energy_distance_of_identical_sets_is_the_u_statistic_offset():
    x = torch.randn(40, 2, 8, 8, generator=_gen(0), dtype=torch.float64)
    d = torch.cdist(x.flatten(1) / 8, x.flatten(1) / 8)  # unit-area L²: ‖f‖² = Σ f² / n²
    within = d.sum() / (40 * 39)
    # cross mean over all N² pairs (zeros included) minus within over N(N-1): -(2/N)·within
    assert metrics.energy_distance(x, x) == pytest.approx(-2 / 40 * float(within), rel=1e-8)


def test_independent_draws_are_small_next_to_a_shift():
    gen = _gen(1)
    x, y = (torch.randn(200, 1, 16, 16, generator=gen) for _ in range(2))
    shifted = y + 0.5
    assert abs(metrics.energy_distance(x, y)) < 0.05 * metrics.energy_distance(x, shifted)
    mmd_same, h = metrics.gaussian_mmd2(x, y)
    assert abs(mmd_same) < 0.05 * metrics.gaussian_mmd2(x, shifted, h)[0]
    sw_same = metrics.sliced_wasserstein(x, y, _gen(2), max_mode=7)
    assert sw_same < 0.3 * metrics.sliced_wasserstein(x, shifted, _gen(2), max_mode=7)


@pytest.mark.parametrize("n", [4, 16])
def test_energy_distance_matches_the_folded_normal_closed_form(n):
    # a ~ N(0,1) vs b ~ N(δ,1) as constant fields: 2E|a-b| - E|a-a'| - E|b-b'|, a-b ~ N(-δ, 2)
    delta, s = 1.0, math.sqrt(2.0)
    exact = 2 * _folded_mean(delta, s) - 2 * _folded_mean(0.0, s)
    x = _constant_fields(_normal_quantiles(1000), n)
    y = _constant_fields(_normal_quantiles(1000, delta), n)
    assert metrics.energy_distance(x, y) == pytest.approx(exact, abs=3e-3)


def test_gaussian_mmd_matches_the_closed_form_and_the_median_bandwidth():
    # E exp(-Z²/2h²) = h/√(h²+s²) · exp(-μ²/2(h²+s²)) for Z ~ N(μ, s²), here s² = 2
    delta, h = 1.5, 0.8
    same = h / math.sqrt(h**2 + 2)
    exact = 2 * same - 2 * same * math.exp(-(delta**2) / (2 * (h**2 + 2)))
    a, b = _normal_quantiles(1000), _normal_quantiles(1000, delta)
    x, y = _constant_fields(a, 8), _constant_fields(b, 8)
    value, used = metrics.gaussian_mmd2(x, y, bandwidth=h)
    assert used == h
    assert value == pytest.approx(exact, abs=3e-3)
    _, median = metrics.gaussian_mmd2(x, y)
    assert median == pytest.approx(float(torch.pdist(torch.cat([a, b])[:, None]).median()))


def test_sliced_wasserstein_is_exact_for_unequal_sample_sizes():
    # one coordinate (the mean): W2²({0, 1}, {0, ½, 1}) = ¼·⅙ + ¼·⅙ = 1/12
    x = _constant_fields(torch.tensor([0.0, 1.0]), 4)
    y = _constant_fields(torch.tensor([0.0, 0.5, 1.0]), 4)
    assert metrics.sliced_wasserstein(x, y, _gen(0), max_mode=0) == pytest.approx(12**-0.5)
    assert metrics.sliced_wasserstein(x, x, _gen(0), max_mode=0) == 0.0


def test_sliced_wasserstein_directions_are_unit_functions():
    # Y = X + δe with ‖e‖ = 1 in the band: W2 along θ is δ|⟨θ, e⟩|, and E⟨θ, e⟩² = 1/F
    n, k, delta = 16, 7, 0.7
    x = torch.randn(30, 1, n, n, generator=_gen(3), dtype=torch.float64)
    centre = spectral.cell_centres(n, L, -L / 2)
    e = math.sqrt(2) * torch.cos(2 * math.pi * (2 * centre[:, None] + 3 * centre[None, :]) / L)
    dim = spectra.band_coefficients(x[:1], k).shape[1]
    sw = metrics.sliced_wasserstein(x, x + delta * e, _gen(4), n_projections=4096, max_mode=k)
    assert sw**2 == pytest.approx(delta**2 / dim, rel=0.1)


def _cosine_fields(coeffs: torch.Tensor, n: int) -> torch.Tensor:
    """``Σ a[m_y, m_x] cos(π m_y (y - y0)/L) cos(π m_x (x - x0)/L)``: ``(N, C, K, K)`` → fields."""
    x = spectral.cell_centres(n, L, -L / 2) + L / 2
    e = torch.cos(math.pi * x[:, None] * torch.arange(coeffs.shape[-1])[None, :] / L)
    return torch.einsum("ym,ncmk,xk->ncyx", e, coeffs, e)


@pytest.mark.parametrize("boundary", ["periodic", "neumann"])
def test_band_coordinates_are_resolution_independent_and_isometric(boundary):
    gen = _gen(16)
    if boundary == "periodic":
        coeffs = _grf_coeffs(4, 1.0, gen, k=5)
        fields = [_band_limited(coeffs, n) for n in (16, 32)]
    else:
        coeffs = torch.randn(4, 1, 6, 6, generator=gen, dtype=torch.float64)
        fields = [_cosine_fields(coeffs, n) for n in (16, 32)]
    coarse, fine = (spectra.band_coefficients(f, 7, boundary) for f in fields)
    assert torch.allclose(coarse, fine, atol=1e-12)
    # the band holds all of each field: Σ coordinates² = ‖f‖² = mean f²
    assert torch.allclose((coarse**2).sum(1), (fields[0] ** 2).mean((1, 2, 3)), rtol=1e-12)


@pytest.mark.parametrize(
    ("boundary", "mode", "energy", "wavelength"),
    [("periodic", "fourier", 0.5, L / 5), ("neumann", "cosine", 0.25, 2 * L / 5)],
)
def test_power_spectrum_puts_a_single_mode_in_its_shell(boundary, mode, energy, wavelength):
    n, amp = 32, 1.7
    c = spectral.cell_centres(n, L, -L / 2)
    if mode == "fourier":  # m = (4, 3): |m| = 5
        f = torch.cos(2 * math.pi * (4 * c[:, None] + 3 * c[None, :]) / L)
    else:  # cos(π m_y (y - y0)/L) cos(π m_x (x - x0)/L), m = (3, 4)
        f = torch.cos(math.pi * 3 * (c[:, None] + 1) / L) * torch.cos(math.pi * 4 * (c + 1) / L)
    s = spectra.power_spectrum(amp * f[None, None], L, boundary)
    assert float(s.energy[0, 5]) == pytest.approx(amp**2 * energy, rel=1e-12)
    assert float(s.energy[0].sum()) == pytest.approx(amp**2 * energy, rel=1e-12)
    scale = 2 * math.pi / L if boundary == "periodic" else math.pi / L
    assert float(s.wavenumber[5]) == pytest.approx(5 * scale)
    assert float(spectra.dominant_wavelength(s)[0]) == pytest.approx(wavelength)


@pytest.mark.parametrize("boundary", ["periodic", "neumann"])
def test_power_spectrum_is_parseval_consistent(boundary):
    x = torch.randn(5, 2, 24, 24, generator=_gen(5), dtype=torch.float64) + 0.3
    s = spectra.power_spectrum(x, L, boundary)
    assert torch.allclose(s.energy.sum(1), (x**2).mean((0, 2, 3)), rtol=1e-12)


def test_spectrum_log_error_of_a_doubled_field_is_log_four():
    x = torch.randn(6, 1, 32, 32, generator=_gen(6))
    s, s2 = spectra.power_spectrum(x), spectra.power_spectrum(2 * x)
    assert spectra.spectrum_log_error(s2, s) == pytest.approx(math.log(4), rel=1e-9)
    assert spectra.spectrum_log_error(s2, s, max_shell=3) == pytest.approx(math.log(4), rel=1e-9)
    assert spectra.spectrum_log_error(s, s) == 0.0
    with pytest.raises(MldiffError, match="max_shell"):
        spectra.spectrum_log_error(s, s, max_shell=16)


def test_vendi_counts_identical_and_orthogonal_samples():
    n = 16
    c = spectral.cell_centres(n, L, -L / 2)
    modes = [
        torch.cos(2 * math.pi * (my * c[:, None] + mx * c[None, :]) / L)
        for my in range(3)
        for mx in range(1, 4)
    ]
    orthogonal = torch.stack(modes)[:, None]
    assert metrics.vendi_score(orthogonal) == pytest.approx(len(modes), rel=1e-10)
    identical = orthogonal[:1].expand(7, -1, -1, -1)
    assert metrics.vendi_score(identical) == pytest.approx(1.0, rel=1e-10)


def test_field_moments_and_value_w1_of_a_shifted_mode():
    n, amp, offset = 32, 0.8, 0.25
    c = spectral.cell_centres(n, L, -L / 2)
    phases = torch.rand(10, generator=_gen(7), dtype=torch.float64) * 2 * math.pi
    f = offset + amp * torch.cos(
        2 * math.pi * 3 * c[None, None, None, :] / L + phases[:, None, None, None]
    )
    f = f.expand(-1, 1, n, n)
    mean, var = metrics.field_moments(f)
    assert float(mean[0]) == pytest.approx(offset, abs=1e-12)
    assert float(var[0]) == pytest.approx(amp**2 / 2, rel=1e-12)
    w1 = metrics.value_wasserstein1(f, f + 0.1, bins=4096)
    assert float(w1[0]) == pytest.approx(0.1, abs=(2 * amp + 0.1) / 4096)


def test_metrics_agree_across_resolutions():
    # the same band-limited functions sampled at 32 and 64, against the same reference law
    gen = _gen(8)
    samples, reference = _grf_coeffs(60, 2.0, gen), _grf_coeffs(60, 1.5, gen) * 1.2
    results = [
        metrics.compare(
            _band_limited(samples, n), _band_limited(reference, n), L, _gen(9), 50, max_shell=15
        )
        for n in (32, 64)
    ]
    assert results[0].keys() == results[1].keys()
    for key in results[0].keys() - {"value_w1"}:
        assert results[1][key] == pytest.approx(results[0][key], rel=1e-7, abs=1e-10), key
    # pointwise values: 4x the points of the same functions; statistically equal
    assert results[1]["value_w1"] == pytest.approx(results[0]["value_w1"], rel=0.1)
    assert results[0]["energy_distance_low"] > 0  # the two laws differ, and that is seen


def test_spectra_of_one_law_agree_on_shared_shells():
    coeffs = _grf_coeffs(20, 2.0, _gen(10))
    coarse = spectra.power_spectrum(_band_limited(coeffs, 32))
    fine = spectra.power_spectrum(_band_limited(coeffs, 64))
    assert torch.allclose(fine.energy[:, : coarse.resolved], coarse.energy[:, : coarse.resolved])
    assert spectra.spectrum_log_error(coarse, fine) < 1e-9


def test_bootstrap_intervals_cover_the_truth():
    delta, s = 1.0, math.sqrt(2.0)
    truth = 2 * _folded_mean(delta, s) - 2 * _folded_mean(0.0, s)
    gen, trials, hits = _gen(11), 60, 0
    for _ in range(trials):
        a = torch.randn(40, generator=gen)
        b = torch.randn(40, generator=gen) + delta
        out = metrics.compare(
            _constant_fields(a, 4), _constant_fields(b, 4), L, gen, 100, max_mode=1
        )
        hits += out["energy_distance_low"] <= truth <= out["energy_distance_high"]
    assert 0.85 <= hits / trials <= 0.995


def _grf(count: int, gamma: float, gen: torch.Generator, n: int = 8) -> torch.Tensor:
    """``(count, 1, n, n)`` periodic draws of N(0, (τ − Δ)^(−γ)): a law with a known spectrum."""
    return build_prior("matern", gamma=gamma).sample((count, 1), n, "periodic", gen,
                                                     torch.float64)


def _rejection_rate(make_pair, repeats: int, seed: int) -> tuple[float, float]:
    """Fraction of ``repeats`` pairs rejected at 5% by the energy and the MMD permutation tests."""
    gen, hits = _gen(seed), np.zeros(2)
    for _ in range(repeats):
        out = metrics.two_sample_test(*make_pair(gen), n_permutations=199, generator=gen)
        hits += [out["energy_distance_p"] <= 0.05, out["mmd2_p"] <= 0.05]
    return tuple(hits / repeats)


def test_permutation_tests_are_calibrated_on_one_gaussian_law():
    """Two independent samples of one Gaussian random field: rejection rate 5% ± 3% over 300
    repeats (the binomial s.d. is 1.3%)."""
    rates = _rejection_rate(lambda g: (_grf(20, 1.5, g), _grf(20, 1.5, g)), 300, 21)
    for rate in rates:
        assert 0.02 <= rate <= 0.08


@pytest.mark.parametrize(
    ("name", "make_pair", "power"),
    [
        # mean shift 0.5, i.e. 0.74 pointwise s.d.: measured power 0.90 (energy), 0.86 (MMD)
        ("mean shift", lambda g: (_grf(30, 1.5, g), _grf(30, 1.5, g) + 0.5), 0.75),
        # spectrum slope gamma 1.5 -> 1.1 (more fine-scale energy), 40 fields on 16x16
        ("slope", lambda g: (_grf(40, 1.5, g, 16), _grf(40, 1.1, g, 16)), 0.6),
    ],
)
def test_permutation_tests_detect_a_small_change_of_law(name, make_pair, power):
    rates = _rejection_rate(make_pair, 60, 22)
    assert min(rates) >= power, (name, rates)


def test_two_sample_test_values_and_p_value_range():
    gen = _gen(23)
    x, y = _grf(15, 1.5, gen), _grf(12, 1.5, gen) + 3.0
    out = metrics.two_sample_test(x, y, n_permutations=99, generator=gen)
    assert out["energy_distance"] == pytest.approx(metrics.energy_distance(x, y), rel=1e-12)
    assert out["mmd2"] == pytest.approx(metrics.gaussian_mmd2(x, y)[0], rel=1e-12)
    # a far shift: no relabelling beats the observed split, so p is the smallest possible
    assert out["energy_distance_p"] == out["mmd2_p"] == pytest.approx(1 / 100)
    same = metrics.two_sample_test(x, x.clone(), n_permutations=99, generator=gen)
    assert same["energy_distance_p"] > 0.5


def test_bootstrap_returns_the_value_and_ordered_percentiles():
    x = torch.randn(50, generator=_gen(12))
    y = torch.randn(30, generator=_gen(13)) + 2

    def diff(a, b):
        return float(b.mean() - a.mean())

    value, low, high = metrics.bootstrap(diff, x, y, 300, _gen(14))
    assert value == diff(x, y)
    se = math.sqrt(float(x.var()) / 50 + float(y.var()) / 30)
    assert low < value < high
    assert high - low == pytest.approx(2 * 1.96 * se, rel=0.2)


def test_compare_is_json_ready_with_per_channel_keys():
    gen = _gen(15)
    x, y = torch.rand(20, 2, 32, 32, generator=gen), torch.rand(25, 2, 32, 32, generator=gen)
    out = metrics.compare(x.numpy(), y, n_boot=0)
    json.dumps(out, allow_nan=False)
    assert all(type(v) is float for v in out.values())
    assert {"mean_samples_c0", "wavelength_reference_c1", "value_w1_c1"} <= out.keys()
    assert "energy_distance_low" not in out
    assert out["energy_distance"] == pytest.approx(metrics.energy_distance(x, y), rel=1e-12)


def test_numpy_input_gives_the_same_values():
    x = np.random.default_rng(0).normal(size=(12, 1, 16, 16))
    y = x[::-1] + 0.3
    assert metrics.energy_distance(x, y) == metrics.energy_distance(torch.from_numpy(x), y.copy())


def test_mismatched_shapes_raise_naming_both():
    with pytest.raises(MldiffError, match=r"\(10, 1, 32, 32\) and \(10, 1, 64, 64\)"):
        metrics.compare(torch.zeros(10, 1, 32, 32), torch.zeros(10, 1, 64, 64))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: metrics.energy_distance(torch.zeros(4, 8, 8), torch.zeros(4, 8, 8)), "x:"),
        (
            lambda: metrics.energy_distance(
                torch.full((3, 1, 4, 4), math.nan), torch.zeros(3, 1, 4, 4)
            ),
            "finite",
        ),
        (
            lambda: metrics.energy_distance(torch.zeros(1, 1, 4, 4), torch.zeros(3, 1, 4, 4)),
            "at least 2",
        ),
        (
            lambda: metrics.sliced_wasserstein(torch.rand(3, 1, 16, 16), torch.rand(3, 1, 16, 16)),
            "max_mode",
        ),
        (lambda: spectra.power_spectrum(torch.rand(3, 1, 8, 8), boundary="dirichlet"), "boundary"),
        (lambda: metrics.vendi_score(torch.zeros(3, 1, 4, 4)), "vendi"),
        (lambda: metrics.bootstrap(lambda a, b: 0.0, torch.zeros(3), torch.zeros(3), 0), "n_boot"),
        (lambda: metrics.permutation_pvalues([torch.eye(4)], 2, 0), "n_permutations"),
    ],
)
def test_bad_input_raises_mldiff_error(call, message):
    with pytest.raises(MldiffError, match=message):
        call()
