"""Dimensionality-varying VP diffusion (Zhang et al. 2022, arXiv 2211.16032) in function space.

The state walks down a ladder of grids as t grows. Stages ``j = 0 … K``: for an output grid
``n`` and ``factors`` ``F_1 < … < F_K`` (powers of two, ``F_0 = 1``), stage ``j`` covers
``τ_j ≤ t < τ_{j+1}`` (``τ_0 = 0``, switch times ``τ_1 < … < τ_K``, ``τ_{K+1} = 1``) and its
state lives on the grid ``n_j = n / F_j``.

Operators (``mldiff.datasets.coarsen``, value-preserving normalization, so a state keeps the
pointwise scale of the data at every grid). ``P`` restricts by a factor ``r``, ``E`` prolongs;
``P E = I`` and ``Π = E P`` is an orthogonal projection (Euclidean and L²): in the orthonormal
normalization ``R = r P``, ``U = Rᵀ = E / r``, ``R Rᵀ = I`` and ``Π = U R``. ``spectral``
(default) keeps the coarse band of the orthonormal basis, so ``Π`` commutes with every
covariance operator diagonal in that basis (``Q``, stationary data) and ``P`` maps Q-noise on
one grid exactly to Q-noise on the coarser one (see :mod:`mldiff.diffusion.priors`: a draw
``Σ_k √λ_k ξ_k e_k`` truncated at the coarse band). ``average`` (block means) commutes only with
the white prior and is allowed only with it. On stage ``j``'s grid, ``Π`` is the projection
onto the band of grid ``n_{j+1}`` and ``I − Π`` the *complement* dropped at ``τ_{j+1}``
(``Π = I`` in the last stage).

Forward marginal for ``t`` in stage ``j``, with ``x_0`` on the output grid::

    X_t = α(t) A_j(t) P_j x_0 + σ(t) η,     η ~ N(0, Q) on grid n_j,
    A_j(t) = Π + a_j(t) (I − Π),            a_j(t) = exp(−κ S(u)),  S(u) = (1 − cos πu) / 2,

``u = (t − τ_j) / (τ_{j+1} − τ_j)``, ``κ = −ln(residual)``, α, σ those of :class:`VPSDE`
(σ² = 1 − α²) and ``P_j`` the restriction by ``F_j``. The complement's signal is attenuated
smoothly from ``a = 1`` at the start of its stage to ``a = residual`` at the switch; its noise
stays σ Q^{1/2}, so at ``τ_{j+1}`` the complement is Q-noise up to the residual signal
``α residual (I − Π) x_0``, and ``X ↦ P X`` (restriction by ``F_{j+1} / F_j``) continues on the
coarser grid with the stage-``j+1`` marginal (``a_{j+1}(τ_{j+1}) = 1``). ``residual = 1`` is the
hard switch without attenuation.

Forward SDE inside stage ``j`` (grid ``n_j``), ``ρ = −ȧ/a = κ π sin(πu) / (2 (τ_{j+1} − τ_j))``::

    dX = [−½ β X − ρ (I − Π) X] dt + Q^{1/2} D dW,    D = √β Π + √(β + 2ρσ²) (I − Π),

whose mean is ``α A_j x_0`` and whose covariance stays ``σ² Q``
(``d(σ²)/dt = β α² = −2(½β + ρ) σ² + β + 2ρσ²`` on the complement). ``ρ`` vanishes at both ends
of a stage, so at a switch time the coefficients are those of the plain VP SDE on either grid.
The rate is bounded (``κ π / 2Δ``): no exact zero in finite time, which would need an infinite
drift; the residual is the only approximation of the switch.

Training target: ``η`` on the stage's grid, as for VP; a batch shares one stage
(:meth:`DimVaryingVP.sample_time` draws a stage with probability ∝ its length, then uniform
times in it). The optimum ``ε* = E[η | X_t] = −σ Q ∇log p_t`` gives
``G Gᵀ ∇log p_t = Q D² ∇log p_t = −(β ε* + 2ρσ² (I − Π) ε*) / σ``. At ``t = τ_j`` exactly the
stage is ``j`` (right-continuous); the samplers evaluate there on both grids (the last step of
stage ``j`` and the first after prolongation). Drift and diffusion are then the VP ones on
either grid (``ρ = 0``); only :class:`DimVaryingGaussianScore` takes the finer grid's
complement as unattenuated there (``a_j = 1``), an error of the order of that band's
signal-to-noise ratio at ``τ_j`` in one step.

Reverse step at ``τ_j`` (:meth:`DimVaryingVP.resize`): ``X ← E X + σ(τ_j) (I − Π) η``,
``η ~ N(0, Q)`` on the finer grid — fresh noise of the marginal's size in the complement.
Sampling cost: the network runs on ``n_j²`` points in stage ``j``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import torch

from mldiff import spectral
from mldiff.datasets.coarsen import prolong, restrict
from mldiff.diffusion.priors import Prior, check_grid, check_positive
from mldiff.diffusion.processes import PROCESSES, VPSDE, _check_generator, _per_sample
from mldiff.errors import MldiffError
from mldiff.spectral import Boundary

METHODS: tuple[str, ...] = ("spectral", "average")
NETWORKS: tuple[str, ...] = ("shared", "per_stage")
# Times within TOLERANCE of a switch time count as the later stage: float32 batches of a
# float64 time grid land on either side of τ.
TOLERANCE = 1e-6


def _check_factors(factors: Any) -> tuple[int, ...]:
    ok = isinstance(factors, Sequence) and not isinstance(factors, str) and len(factors) > 0
    ok = ok and all(
        isinstance(f, numbers.Integral) and not isinstance(f, bool) and f >= 2 and not f & (f - 1)
        for f in factors
    )
    if not ok or any(b <= a for a, b in zip(factors, factors[1:], strict=False)):
        raise MldiffError(
            f"factors: expected increasing powers of two >= 2 (e.g. [2, 4]), got {factors!r}"
        )
    return tuple(int(f) for f in factors)


def _check_times(times: Any, count: int, t_min: float) -> tuple[float, ...]:
    ok = isinstance(times, Sequence) and not isinstance(times, str) and len(times) == count
    ok = ok and all(isinstance(t, numbers.Real) and not isinstance(t, bool) for t in times)
    if ok:
        edges = [t_min, *times, 1.0]
        ok = all(b - a > 10 * TOLERANCE for a, b in zip(edges, edges[1:], strict=False))
    if not ok:
        raise MldiffError(
            f"switch_times: expected {count} increasing times in (t_min={t_min:g}, 1), one per "
            f"factor, got {times!r}"
        )
    return tuple(float(t) for t in times)


class DimVaryingVP(VPSDE):
    """VP SDE whose state moves to coarser grids at the switch times (module docstring).

    Options: ``factors`` (coarsening of each later stage relative to the output grid),
    ``switch_times`` (one per factor, see :func:`switch_times_from_data`), ``method``
    (``spectral`` or ``average``), ``residual`` (signal factor left on a complement at its
    switch, in (0, 1]; 1 = no attenuation), ``network`` (``shared``: one network for all
    stages; ``per_stage``: one each, see :class:`StageNetworks` — read by the model builder).
    """

    def __init__(
        self,
        prior: Prior,
        boundary: Boundary,
        *,
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        t_min: float = 1e-3,
        factors: Sequence[int] = (2, 4),
        switch_times: Sequence[float] = (0.4, 0.6),
        method: str = "spectral",
        residual: float = 1e-2,
        network: str = "shared",
    ) -> None:
        super().__init__(prior, boundary, beta_min=beta_min, beta_max=beta_max, t_min=t_min)
        self.factors = (1, *_check_factors(factors))
        self.switch_times = _check_times(switch_times, len(self.factors) - 1, self.t_min)
        if method not in METHODS:
            raise MldiffError(f"method: expected one of {METHODS}, got {method!r}")
        if method == "average" and prior.name != "white":
            raise MldiffError(
                f"method: 'average' (block means) does not commute with prior {prior.name!r}, so "
                "restricted noise would not be Q-noise; use 'spectral' or prior 'white'"
            )
        self.method = method
        self.residual = check_positive("residual", residual)
        if self.residual > 1:
            raise MldiffError(f"residual: expected a number in (0, 1], got {residual!r}")
        if network not in NETWORKS:
            raise MldiffError(f"network: expected one of {NETWORKS}, got {network!r}")
        self.network = network
        self.edges = (0.0, *self.switch_times, self.t_max)  # attenuation ramps
        self.spans = tuple(zip((self.t_min, *self.switch_times), self.edges[1:], strict=True))

    @property
    def stages(self) -> int:
        """Number of stages ``K + 1``."""
        return len(self.factors)

    def stage(self, t: float | torch.Tensor) -> int:
        """Stage ``j`` of time ``t``: the number of switch times ``τ_k ≤ t`` (up to
        :data:`TOLERANCE`); a tensor of times must lie in one stage."""
        if isinstance(t, torch.Tensor):
            lo, hi = (float(v) for v in torch.aminmax(t.detach().reshape(-1)))
        else:
            lo = hi = float(t)
        first, last = (sum(tau <= v + TOLERANCE for tau in self.switch_times) for v in (lo, hi))
        if first != last:
            raise MldiffError(
                f"t: expected the times of one batch in one stage (switch times "
                f"{list(self.switch_times)}), got values from {lo:.6g} to {hi:.6g}"
            )
        return first

    def grid_size(self, t: float, n_final: int) -> int:
        """``n_final / F_j`` for the stage ``j`` of ``t``; ``n_final`` must be divisible by the
        largest factor and leave a coarsest grid of at least 2."""
        return self._grid(self.stage(t), n_final)

    def _grid(self, j: int, n_final: int) -> int:
        n_final, top = check_grid(n_final), self.factors[-1]
        if n_final % top or n_final // top < 2:
            raise MldiffError(
                f"n: expected a grid divisible by the largest factor {top} (coarsest grid >= 2), "
                f"got {n_final}"
            )
        return n_final // self.factors[j]

    def attenuation(self, t: torch.Tensor, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(a_j(t), ρ_j(t))`` per sample, shaped like ``t``: the complement's signal factor
        and its rate ``−ȧ/a``; ``(1, 0)`` in the last stage."""
        if j == self.stages - 1:
            return torch.ones_like(t), torch.zeros_like(t)
        start, end = self.edges[j], self.edges[j + 1]
        kappa = -math.log(self.residual)
        u = ((t - start) / (end - start)).clamp(0.0, 1.0)
        a = torch.exp(-kappa * 0.5 * (1 - torch.cos(math.pi * u)))
        return a, kappa * math.pi * torch.sin(math.pi * u) / (2 * (end - start))

    def project(self, y: torch.Tensor, j: int) -> torch.Tensor:
        """``Π y`` on stage ``j``'s grid: orthogonal projection onto the next grid's band."""
        r = self.factors[j + 1] // self.factors[j]
        coarse = restrict(y, r, self.method, self.boundary)
        return prolong(coarse, r, self.method, self.boundary)

    def perturb(
        self, x0: torch.Tensor, t: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(α A_j(t) P_j x0 + σ η, η)`` on stage ``j``'s grid, ``η ~ N(0, Q)`` there."""
        _check_generator(generator, x0)
        j = self.stage(t)
        n = self._grid(j, x0.shape[-1])
        y0 = restrict(x0, self.factors[j], self.method, self.boundary)
        if j < self.stages - 1:
            a, _ = self.attenuation(t.to(y0.dtype), j)
            y0 = y0 - _per_sample(1 - a, y0) * (y0 - self.project(y0, j))
        eta = self.prior.sample(y0.shape[:-2], n, self.boundary, generator, y0.dtype)
        alpha, sigma = self.alpha_sigma(t)
        return _per_sample(alpha, y0) * y0 + _per_sample(sigma, y0) * eta, eta

    def sample_time(
        self, batch: int, generator: torch.Generator, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """Times ``(batch,)`` of one stage: stage ``j`` with probability ∝ its length in
        ``[t_min, 1]``, then uniform in it (over many batches: ``t ~ U[t_min, 1]``)."""
        device = generator.device
        lengths = torch.tensor([hi - lo for lo, hi in self.spans], dtype=torch.float64)
        pick = torch.rand(1, generator=generator, device=device, dtype=torch.float64).item()
        j = min(int((lengths.cumsum(0) / lengths.sum() <= pick).sum()), self.stages - 1)
        u = torch.rand(batch, generator=generator, device=device, dtype=dtype)
        lo, hi = self.spans[j]
        return lo + (hi - lo - (10 * TOLERANCE if j < self.stages - 1 else 0.0)) * u

    def time_grid(self, steps: int) -> torch.Tensor:
        """Uniform steps inside each stage, the switch times on step boundaries; stage ``j``
        gets ``steps · length_j / (1 − t_min)`` steps (largest remainders, at least one)."""
        if steps < self.stages:
            raise MldiffError(
                f"steps: expected at least {self.stages} (one per stage), got {steps!r}"
            )
        share = [steps * (hi - lo) / (self.t_max - self.t_min) for lo, hi in self.spans]
        counts = [max(1, math.floor(s)) for s in share]
        by_remainder = sorted(range(self.stages), key=lambda j: counts[j] - share[j])
        for k in range(steps - sum(counts)):
            counts[by_remainder[k % self.stages]] += 1
        while sum(counts) > steps:
            counts[max(range(self.stages), key=lambda j: counts[j])] -= 1
        pieces = [
            torch.linspace(hi, lo, count + 1, dtype=torch.float64)[1:]
            for (lo, hi), count in reversed(list(zip(self.spans, counts, strict=True)))
        ]
        return torch.cat([torch.tensor([self.t_max], dtype=torch.float64), *pieces])

    def resize(
        self, y: torch.Tensor, t_from: float, t_to: float, generator: torch.Generator
    ) -> torch.Tensor:
        """Reverse switch ``τ = t_from``: ``E y + σ(τ) (I − Π) η``, ``η ~ N(0, Q)`` on the
        finer grid of ``t_to`` (several levels at once if the step skips stages)."""
        _check_generator(generator, y)
        j_from, j_to = self.stage(t_from), self.stage(t_to)
        if j_to >= j_from:
            raise MldiffError(
                f"resize: expected a reverse step into an earlier stage, got t={t_from:g} -> "
                f"{t_to:g}"
            )
        r = self.factors[j_from] // self.factors[j_to]
        eta = self.prior.sample(y.shape[:-2], y.shape[-1] * r, self.boundary, generator, y.dtype)
        noise = eta - prolong(restrict(eta, r, self.method, self.boundary), r, self.method,
                              self.boundary)
        sigma = float(self.alpha_sigma(torch.tensor(t_from, dtype=torch.float64))[1])
        return prolong(y, r, self.method, self.boundary) + sigma * noise

    def drift(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``−½ β y − ρ (I − Π) y``."""
        j, out = self.stage(t), super().drift(y, t)
        if j == self.stages - 1:
            return out
        rho = _per_sample(self.attenuation(t, j)[1], y)
        return out - rho * (y - self.project(y, j))

    def diffusion_apply(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``n Q^{1/2} D z``: ``√β`` on the kept band, ``√(β + 2ρσ²)`` on the complement."""
        j, out = self.stage(t), super().diffusion_apply(z, t)
        if j == self.stages - 1:
            return out
        beta, sigma = self.beta(t), self.alpha_sigma(t)[1]
        boost = (1 + 2 * self.attenuation(t, j)[1] * sigma**2 / beta).sqrt() - 1
        return out + _per_sample(boost, z) * (out - self.project(out, j))

    def preconditioned_score(
        self, y: torch.Tensor, t: torch.Tensor, net_out: torch.Tensor
    ) -> torch.Tensor:
        """``Q D² ∇log p_t = −(β ε + 2ρσ² (I − Π) ε) / σ``."""
        j, out = self.stage(t), super().preconditioned_score(y, t, net_out)
        if j == self.stages - 1:
            return out
        sigma = self.alpha_sigma(t)[1]
        extra = _per_sample(2 * self.attenuation(t, j)[1] * sigma, y)
        return out - extra * (net_out - self.project(net_out, j))


class DimVaryingGaussianScore(torch.nn.Module):
    """Exact noise predictor ``ε*(x, t)`` of a :class:`DimVaryingVP` for data ``N(m, C)``, ``m`` a
    constant, ``C`` diagonal in the basis of Q (eigenvalues ``c_k``, given as a :class:`Prior`).

    In stage ``j``, ``p_t = N(α m, α² A² C + σ² Q)`` on grid ``n_j`` (restriction maps the
    stationary law to the same spectrum on the coarse grid; ``(I − Π) m = 0``). ``Π`` commutes
    with ``C`` and ``Q``, so with the VP gain ``g(s)_k = σ λ_k / (s² c_k + σ² λ_k)``::

        ε* = Π g(α) (x − α m) + (I − Π) g(α a_j) (x − α m).

    Called like a network, ``(x (B, C, n_j, n_j), t (B,)) → ε``; spectral method only.
    """

    def __init__(self, process: DimVaryingVP, data: Prior, mean: float = 0.0) -> None:
        super().__init__()
        if not isinstance(process, DimVaryingVP) or not isinstance(data, Prior):
            raise MldiffError(
                "DimVaryingGaussianScore: expected a DimVaryingVP process and a Prior data law"
            )
        if process.method != "spectral":
            raise MldiffError("DimVaryingGaussianScore: expected a process with method 'spectral'")
        self.process, self.data, self.mean = process, data, float(mean)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        process, n = self.process, x.shape[-1]
        boundary, j = process.boundary, process.stage(t)
        lam = process.prior.eigenvalues(n, boundary, x.device, x.dtype)
        c = self.data.eigenvalues(n, boundary, x.device, x.dtype)
        alpha, sigma = (v.to(x.dtype).reshape(-1, 1, 1, 1) for v in process.alpha_sigma(t))
        coef = spectral.forward(x - alpha * self.mean, boundary)

        def denoise(signal: torch.Tensor) -> torch.Tensor:
            denominator = signal**2 * c + sigma**2 * lam
            gain = torch.where(denominator > 0, sigma * lam / denominator, 0.0)
            return spectral.inverse(gain * coef, boundary, n)

        kept = denoise(alpha)
        if j == process.stages - 1:
            return kept
        a = process.attenuation(t, j)[0].to(x.dtype).reshape(-1, 1, 1, 1)
        dropped = denoise(alpha * a)
        return dropped + process.project(kept - dropped, j)


class StageNetworks(torch.nn.Module):
    """One network per stage (``network: per_stage``): ``net(x, t) = nets[stage(t)](x, t)``.

    Dispatches on the time, not the grid, so sampling at another resolution finds the right
    network. ``nets`` are built alike (same channels); ``min_resolution`` is the largest of
    theirs (each grid a stage uses must satisfy it).
    """

    def __init__(self, nets: Sequence[torch.nn.Module], process: DimVaryingVP) -> None:
        super().__init__()
        if len(nets) != process.stages:
            raise MldiffError(
                f"StageNetworks: expected {process.stages} networks (one per stage), got "
                f"{len(nets)}"
            )
        self.nets = torch.nn.ModuleList(nets)
        self.process = process
        self.in_channels = getattr(nets[0], "in_channels", None)

    @property
    def min_resolution(self) -> int:
        return max(getattr(net, "min_resolution", 1) for net in self.nets)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.nets[self.process.stage(t)](x, t)


def switch_times_from_data(
    x0: torch.Tensor,
    prior: Prior,
    boundary: Boundary,
    factors: Sequence[int],
    *,
    beta_min: float = 0.1,
    beta_max: float = 20.0,
    threshold: float = 0.01,
    method: str = "spectral",
    min_gap: float = 0.02,
) -> list[float]:
    """Switch times where each dropped band's signal falls below ``threshold`` × its noise.

    For factor ``F_k`` the band is the complement of grid ``n/F_k`` in grid ``n/F_{k−1}``
    (``n`` the grid of ``x0 (N, C, n, n)``, e.g. the normalized training data). Its signal
    energy ``S_k = max_c mean_samples (‖P_{k−1} x‖² − ‖P_k x‖²)`` (L² norms on the unit-area
    domain, largest over channels) and noise energy ``N_k = tr_{n/F_{k−1}} Q − tr_{n/F_k} Q``
    give ``τ_k`` as the first time with ``α² S_k ≤ threshold · σ² N_k``, solved in closed form
    from ``ln α(t) = −¼ t² (β1 − β0) − ½ t β0``. Times are made increasing by at least
    ``min_gap`` and rounded up to 1e-3 (the criterion only gets stricter later).
    """
    factors = (1, *_check_factors(list(factors)))
    threshold = check_positive("threshold", threshold)
    if x0.ndim != 4 or x0.shape[-1] != x0.shape[-2] or x0.shape[-1] % factors[-1]:
        raise MldiffError(
            f"x0: expected data (N, C, n, n) with n divisible by {factors[-1]}, got "
            f"{tuple(x0.shape)}"
        )
    n, x = x0.shape[-1], x0.double()
    energy = [
        restrict(x, f, method, boundary).square().mean((-2, -1)).mean(0) for f in factors
    ]
    times: list[float] = []
    for k in range(1, len(factors)):
        signal = float((energy[k - 1] - energy[k]).max())
        noise = prior.trace(n // factors[k - 1], boundary) - prior.trace(n // factors[k], boundary)
        ratio = threshold * noise / max(signal, 1e-300)  # α²/σ² at the switch
        t = _vp_time(0.5 * math.log(ratio / (1 + ratio)), beta_min, beta_max)
        t = max(t, (times[-1] if times else 0.0) + min_gap)
        times.append(math.ceil(t * 1000) / 1000)
        if times[-1] >= 1:
            raise MldiffError(
                f"factors: the band dropped at factor {factors[k]} keeps signal above "
                f"threshold={threshold:g} of the noise up to t = 1; use fewer/smaller factors"
            )
    return times


def _vp_time(log_alpha: float, beta_min: float, beta_max: float) -> float:
    """The ``t ≥ 0`` with ``−¼ t² (β1 − β0) − ½ t β0 = ln α``."""
    slope, curve, target = 0.5 * beta_min, 0.25 * (beta_max - beta_min), -log_alpha
    if curve == 0:
        return target / slope
    return (-slope + math.sqrt(slope**2 + 4 * curve * target)) / (2 * curve)


PROCESSES["dimvarying"] = DimVaryingVP
