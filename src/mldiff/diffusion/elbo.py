"""Likelihood bound (ELBO) of a diffusion model on continuous fields, for any linear process.

For data ``x0`` (``D = C n²`` grid values) and the network's noise prediction ``ε_θ``, with
hybrid conditioning (auxiliaries ``v0 ~ N(0, σ_v0² C)`` integrated out; see
:mod:`mldiff.diffusion.multivariate`):

    log p_θ(x0) ≥ ELBO(x0) = boundary_terms(x0) − ∫_{t_min}^{t_max} I(t) dt,

``I(t)`` the denoising form of the continuous-time bound (Huang et al. 2021; Song et al. 2021)
for ``q(y_t | x0)``, and the boundary terms a flat-prior Gaussian decoder at ``t_min`` and the
prior ``N(0, I_K ⊗ C)`` at ``t_max`` (:meth:`LinearProcess.boundary_terms`). The VP SDE is the
case K = 1. The bound is a *continuous density* on grid values: our fields are continuous, so
no dequantization is involved (unlike 8-bit images, where bits/dim also carries the
``log 256`` offset of the discrete data) — compare numbers only at one resolution and one
normalization. It needs ``C^{-1/2}``: priors with a zero eigenvalue are refused.

Time integral. Importance sampled from :meth:`LinearProcess.time_law` (mostly the expected
score-error term of the exact score for prior-like data, ``∝ β α²/σ²`` for VP), stratified:
``t_j = F⁻¹((j + U_j) / N)``, ``U_j`` uniform per sample, one noise draw per sample and time,
``∫ I ≈ (1/N) Σ_j I(t_j) / p(t_j)`` (unbiased for any network).
"""

from __future__ import annotations

import math

import torch

from mldiff import spectral
from mldiff.diffusion.multivariate import as_linear, check_network
from mldiff.diffusion.priors import Prior
from mldiff.diffusion.processes import ForwardProcess, Net
from mldiff.errors import MldiffError
from mldiff.spectral import Boundary


@torch.no_grad()
def elbo(
    process: ForwardProcess,
    net: Net,
    x0: torch.Tensor,
    n_times: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """Per-sample lower bound on ``log p_θ(x0)`` in nats (float64 ``(B,)``) for data
    ``x0 (B, C, n, n)``, estimated with ``n_times`` stratified importance-sampled times drawn
    independently per sample (so estimates of different samples are independent; one network
    call on the batch per stratum)."""
    if isinstance(n_times, bool) or not isinstance(n_times, int) or n_times < 1:
        raise MldiffError(f"n_times: expected a positive integer, got {n_times!r}")
    linear = as_linear(process)
    check_network(net, linear, x0.shape[1])
    law = linear.time_law(x0.device)
    jitter = torch.rand((n_times, len(x0)), generator=generator, device=generator.device,
                        dtype=torch.float64).to(x0.device)
    strata = torch.arange(n_times, device=x0.device, dtype=torch.float64)[:, None]
    times = law.times((strata + jitter) / n_times).to(x0.dtype)
    integral = torch.zeros(len(x0), dtype=torch.float64, device=x0.device)
    for t in times:
        integral += linear.elbo_integrand(net, x0, t, generator) / law.density(t)
    return linear.boundary_terms(x0) - integral / n_times


def elbo_report(
    process: ForwardProcess,
    net: Net,
    x: torch.Tensor,
    n_times: int,
    generator: torch.Generator,
    batch_size: int = 64,
) -> dict[str, float]:
    """Mean ELBO of the fields ``x (N, C, n, n)`` in the units people compare.

    ``nll_nats_per_point = −ELBO / n²`` (all channels of a grid point), ``bits_per_dim =
    −ELBO / (C n² ln 2)`` and its standard error over the ``N`` fields. Continuous-density
    bound (see the module docstring): no dequantization term.
    """
    if len(x) == 0:
        raise MldiffError("x: expected at least one field to evaluate the ELBO on")
    values = torch.cat([elbo(process, net, chunk, n_times, generator)
                        for chunk in x.split(batch_size)])
    dims = x[0].numel()
    bits = -values / (dims * math.log(2))
    spread = float(bits.std()) / math.sqrt(len(x)) if len(x) > 1 else float("nan")
    return {
        "nll_nats_per_point": float(-values.mean()) / x.shape[-1] ** 2,
        "bits_per_dim": float(bits.mean()),
        "bits_per_dim_se": spread,
        "samples": len(x),
        "n_times": n_times,
    }


def gaussian_log_likelihood(
    x: torch.Tensor, covariance: Prior, boundary: Boundary, mean: float = 0.0
) -> torch.Tensor:
    """Exact ``log N(x; mean, C)`` of grid fields ``x (B, C, n, n)`` (float64 ``(B,)``) for a
    covariance diagonal in the spectral basis: grid coefficients have variance ``n² c_k``,
    ``log p = −½ Σ_k w_k [|x̂_k − m̂_k|² / (n² c_k) + log(2π n² c_k)]``."""
    n = x.shape[-1]
    c = covariance.eigenvalues(n, boundary, x.device) * n * n
    weights = spectral.mode_weights(n, boundary).to(x.device)
    coef = spectral.forward(x.to(torch.float64) - mean, boundary).abs().square()
    per_channel = (weights * (coef / c + (2 * math.pi * c).log())).flatten(2).sum(2)
    return -0.5 * per_channel.sum(1)
