"""Multivariate diffusions with auxiliary variables, in function space (arXiv 2302.07261).

State. Every point carries ``K`` variables ``y = [x, v¹, …, v^{K−1}]`` per data channel: the
state is ``(B, K·C, n, n)`` with the components stacked component-major (channels
``[x_1…x_C, v¹_1…v¹_C, …]``), so :meth:`~LinearProcess.output` is the first ``C`` channels.

Forward SDE. With ``K × K`` matrices ``Q = −Qᵀ``, ``D ⪰ 0`` and the prior's covariance operator
``C`` (eigenvalues ``λ_k``), the paper's process ``dy = −β(Q̄ + D̄) Σ∞⁻¹ y ds + √(2β D̄) dB``
with ``Q̄ = Q ⊗ C``, ``D̄ = D ⊗ C`` and ``Σ∞ = I_K ⊗ C`` reads

    dy = β(s) (A ⊗ I) y ds + √(2β(s)) (√D ⊗ C^{1/2}) dW,        A = −(Q + D),

whose drift is bounded (it mixes the K components only), whose noise is the prior's, and whose
stationary law is ``N(0, I_K ⊗ C)`` (``A + Aᵀ + 2D = 0`` is the Lyapunov equation of ``I_K``).
``β(s) = β0 + (β1 − β0) s`` as in :class:`~mldiff.diffusion.processes.VPSDE`.

Per mode. In whitened coordinates ``z_k = ŷ_k / (n √λ_k)`` every mode obeys the same ``K``-variate
OU process ``dz = β A z ds + √(2βD) dw``, so with ``B(s) = ∫₀ˢ β``:

    mean    exp(B(s) A) y0 = M(s) y0            (the same for every mode, no whitening needed),
    cov     λ_k Σ(s),  [Σ̃; H] = exp(B [[A, 2D], [0, −Aᵀ]]) [Σ0; I],  Σ(s) = Σ̃ H⁻¹  (Van Loan).

The block exponential is taken at ``B / 2^m`` (``‖B A‖₁ ≤ ½``) and the transition is then doubled
``m`` times, ``N ← M N Mᵀ + N``, ``M ← M²`` (exact by the semigroup property, and free of the
cancellations that plain squaring of the block matrix suffers at large ``B``).

Hybrid conditioning. Data are ``x0``; auxiliaries start at ``v0 ~ N(0, σ_v0² C)`` (prior-coloured,
so grid independent; ``σ_v0 = v0_scale``, the paper's ``N(0, 0.01 I)`` is ``v0_scale = 0.1``) and
are integrated out: ``Σ0 = diag(0, σ_v0², …)``, ``y_s | x0 ~ N(M e₁ ⊗ x0, Σ(s) ⊗ C)``.

Training target. ``y_s = M e₁ ⊗ x0 + (L ⊗ I) η`` with ``L Lᵀ = Σ(s)`` and ``η ~ N(0, I_K ⊗ C)``;
the network regresses ``η`` (K = 1 is :class:`VPSDE`'s ``α x0 + σ η`` exactly). From
``∇log q = −(L⁻ᵀ ⊗ C⁻¹) η`` and ``G Gᵀ = 2β D ⊗ C`` (C here the grid covariance of prior draws),

    G Gᵀ ∇ log p_s = −2β (D L⁻ᵀ ⊗ I) ε,        ε ≈ E[η | y_s],

which involves ``ε_j`` only for ``j ≥ j0``, the first index with ``D_jj > 0`` (``L⁻ᵀ`` is upper
triangular). The DSM loss is therefore taken over those "active" components only (all of them
for VP and learned processes, the auxiliaries for CLD/MALDA, the last one for ALDA).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from mldiff import spectral
from mldiff.diffusion.priors import Prior, check_positive
from mldiff.diffusion.processes import VPSDE, ForwardProcess, Net, _check_generator
from mldiff.errors import MldiffError
from mldiff.spectral import Boundary

MAX_K = 8
OBJECTIVES = ("dsm", "elbo")
LOG_2PI = math.log(2 * math.pi)


def _as_matrix(name: str, value: Any) -> torch.Tensor:
    """``value`` (nested lists or a tensor) as a finite square float64 matrix, else MldiffError."""
    try:
        m = torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise MldiffError(f"{name}: expected a square matrix of numbers, got {value!r}") from None
    if m.ndim != 2 or m.shape[0] != m.shape[1] or not 1 <= m.shape[0] <= MAX_K:
        raise MldiffError(
            f"{name}: expected a K×K matrix with 1 <= K <= {MAX_K}, got shape {tuple(m.shape)}"
        )
    if not bool(torch.isfinite(m).all()):
        raise MldiffError(f"{name}: expected finite entries, got {m.tolist()}")
    return m


def check_matrices(q: Any, d: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Validated ``(Q, D)``: Q skew-symmetric, D symmetric positive semidefinite, same ``K``,
    and ``A = −(Q + D)`` stable (every eigenvalue with negative real part), so the process
    forgets its start and converges to ``N(0, I_K ⊗ C)``."""
    q, d = _as_matrix("q", q), _as_matrix("d", d)
    if q.shape != d.shape:
        raise MldiffError(f"q, d: expected the same K×K shape, got {tuple(q.shape)} and "
                          f"{tuple(d.shape)}")
    scale = 1e-10 * max(1.0, float(q.abs().max()), float(d.abs().max()))
    if float((q + q.T).abs().max()) > scale:
        raise MldiffError(f"q: expected a skew-symmetric matrix (q = −qᵀ), got {q.tolist()}")
    if float((d - d.T).abs().max()) > scale:
        raise MldiffError(f"d: expected a symmetric matrix, got {d.tolist()}")
    eigenvalues = torch.linalg.eigvalsh(d)
    if float(eigenvalues.min()) < -scale:
        raise MldiffError(
            f"d: expected a positive semidefinite matrix, got eigenvalues {eigenvalues.tolist()}"
        )
    growth = float(torch.linalg.eigvals(-(q + d)).real.max())
    if growth > -1e-8:
        raise MldiffError(
            f"q, d: the drift −(q + d) has an eigenvalue with real part {growth:.3g} >= 0, so "
            "the process never reaches N(0, I ⊗ C); couple every variable to the noise in d "
            "through q"
        )
    return q, d


@dataclass
class Transition:
    """Hybrid transition law at times ``t`` (float64): ``y_t | x0 ~ N(mean ⊗ x0, cov ⊗ C)``."""

    beta: torch.Tensor  # (B,) β(t)
    mean: torch.Tensor  # (B, K) first column of M(t) = exp(B(t) A)
    cov: torch.Tensor  # (B, K, K) Σ(t)
    chol: torch.Tensor  # (B, K, K) lower Cholesky factor L of Σ(t)


def _mix(matrix: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(matrix ⊗ I) y`` for ``matrix`` ``(K, K)`` or ``(B, K, K)`` and ``y`` ``(B, K·C, …)``,
    outside autocast (bf16 would round the transition's small entries)."""
    k = matrix.shape[-1]
    m = matrix.to(y.dtype).expand(y.shape[0], k, k)
    with torch.autocast(y.device.type, enabled=False):
        return torch.einsum("bij,bj...->bi...", m, y.unflatten(1, (k, -1))).flatten(1, 2)


class TimeLaw:
    """A law on ``[grid[0], grid[-1]]`` with density ``∝ h`` given at the ``grid`` points.

    Cell masses by the trapezoidal rule; sampled by inverse CDF, uniform within each cell.
    :meth:`density` is the exact density of that piecewise-uniform law, so
    ``∫ f dt = E[f(t) / density(t)]`` holds without bias.
    """

    def __init__(self, grid: torch.Tensor, h: torch.Tensor) -> None:
        mass = 0.5 * (h[1:] + h[:-1]) * grid.diff()
        self.grid = grid
        self.cdf = torch.cat([mass.new_zeros(1), mass.cumsum(0)]) / mass.sum()
        self.pdf = self.cdf.diff() / grid.diff()

    def _cell(self, edges: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        cell = torch.searchsorted(edges, value.double(), right=True) - 1
        return cell.clamp(0, len(self.pdf) - 1)

    def times(self, u: torch.Tensor) -> torch.Tensor:
        """Times (float64) at the quantiles ``u ∈ [0, 1]`` of the law."""
        cell = self._cell(self.cdf, u)
        return self.grid[cell] + (u.double() - self.cdf[cell]) / self.pdf[cell]

    def density(self, t: torch.Tensor) -> torch.Tensor:
        """Density (float64) of the law at ``t``."""
        return self.pdf[self._cell(self.grid, t)]


def _error_weight(chol: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """``W = L⁻¹ D L⁻ᵀ`` ``(B, K, K)``: ``½‖Gᵀ(s − ∇log q)‖² = β Σ ẽᵀ W ẽ`` per mode."""
    half = torch.linalg.solve_triangular(chol, d.expand_as(chol), upper=False)
    return torch.linalg.solve_triangular(chol, half.mT, upper=False)


class LinearProcess(ForwardProcess):
    """Linear multivariate forward process with user matrices ``q``, ``d`` (``K × K``); see the
    module docstring for the SDE, the transition and the training target.

    ``q = [[0]], d = [[0.5]]`` is the VP SDE (:func:`as_linear`). Options: ``q``, ``d``,
    ``v0_scale`` (σ_v0, initial auxiliary scale relative to the prior), ``objective``,
    ``beta_min``, ``beta_max``, ``t_min`` (as :class:`VPSDE`).

    Objective. ``"dsm"``: uniform training times and the DSM loss on the active components
    (VP's convention). ``"elbo"``: times from the importance law :meth:`time_law` and the
    per-sample negative ELBO in nats per dimension, ``(−boundary_terms + I(t) / p(t)) / (C n²)``
    (unbiased for ``t ~ p``; validate it at :meth:`stratified_times`), whose gradient also
    reaches a learned process's parameters.
    """

    name = "linear"
    t_max = 1.0

    def __init__(
        self,
        prior: Prior,
        boundary: Boundary,
        *,
        q: Any = None,
        d: Any = None,
        v0_scale: float = 0.1,
        objective: str = "dsm",
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        t_min: float = 1e-3,
    ) -> None:
        self._q, self._d = check_matrices(q, d)
        self._setup(prior, boundary, self._q.shape[0], v0_scale, objective, beta_min, beta_max,
                    t_min)
        diagonal = self._d.diagonal() > 0
        self.active = torch.arange(self.K) >= int(diagonal.int().argmax())

    def _setup(
        self,
        prior: Prior,
        boundary: Boundary,
        k: int,
        v0_scale: float,
        objective: str,
        beta_min: float,
        beta_max: float,
        t_min: float,
    ) -> None:
        """Validate and store what every linear process shares."""
        if objective not in OBJECTIVES:
            raise MldiffError(f"objective: expected one of {OBJECTIVES}, got {objective!r}")
        self.objective = objective
        # The VP SDE with the same prior and schedule validates them and supplies β(t).
        self.vp = VPSDE(prior, boundary, beta_min=beta_min, beta_max=beta_max, t_min=t_min)
        self.prior, self.boundary, self.t_min = self.vp.prior, self.vp.boundary, self.vp.t_min
        self.K = k
        self.v0_scale = check_positive("v0_scale", v0_scale)

    # ---- the K×K algebra ------------------------------------------------------------------

    def matrices(self, device: torch.device | str | None = None) -> tuple[torch.Tensor, ...]:
        """``(Q, D)``, float64 ``(K, K)`` on ``device``."""
        return self._q.to(device), self._d.to(device)

    def integrated_beta(self, t: torch.Tensor) -> torch.Tensor:
        """``B(t) = ∫₀ᵗ β = β0 t + ½ (β1 − β0) t²``."""
        return self.vp.beta_min * t + 0.5 * (self.vp.beta_max - self.vp.beta_min) * t**2

    def transition(self, t: torch.Tensor) -> Transition:
        """Hybrid transition law at times ``t`` ``(B,)`` (any device; float64 results), computed
        once per distinct time."""
        times, index = torch.unique(t.to(torch.float64), return_inverse=True)
        law = self._transition(times)
        return Transition(*(value[index] for value in vars(law).values()))

    def _transition(self, t: torch.Tensor) -> Transition:
        q, d = self.matrices(t.device)
        a, k = -(q + d), self.K
        b = self.integrated_beta(t)
        sigma0 = torch.diag(torch.cat([b.new_zeros(1), b.new_full((k - 1,), self.v0_scale**2)]))
        bound = float(b.detach().abs().max()) * float(torch.linalg.matrix_norm(a.detach(), 1))
        halvings = max(0, math.ceil(math.log2(max(bound, 1e-300) / 0.5)))
        block = torch.cat([torch.cat([a, 2 * d], 1), torch.cat([torch.zeros_like(a), -a.T], 1)])
        e = torch.linalg.matrix_exp((b / 2**halvings)[:, None, None] * block)
        m, noise = e[:, :k, :k], e[:, :k, k:] @ e[:, :k, :k].mT  # H⁻¹ = exp(−hAᵀ)⁻¹ = Mᵀ
        for _ in range(halvings):
            noise, m = m @ noise @ m.mT + noise, m @ m
        cov = m @ sigma0 @ m.mT + noise
        cov = 0.5 * (cov + cov.mT)
        chol, info = torch.linalg.cholesky_ex(cov)
        if bool((info > 0).any()):
            raise MldiffError(
                f"t: transition covariance of process {self.name!r} is singular at "
                f"t = {float(t.min()):.3g}; times must be > 0 (use t >= t_min = {self.t_min})"
            )
        return Transition(self.vp.beta(t), m[..., 0], cov, chol)

    # ---- ForwardProcess interface ---------------------------------------------------------

    def state_channels(self, channels: int) -> int:
        return self.K * channels

    def initial_state(self, x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``[x0, v0]`` with ``v0 ~ N(0, σ_v0² C)`` per auxiliary and channel."""
        _check_generator(generator, x0)
        shape = (x0.shape[0], (self.K - 1) * x0.shape[1])
        v0 = self.prior.sample(shape, x0.shape[-1], self.boundary, generator, x0.dtype)
        return torch.cat([x0, self.v0_scale * v0], dim=1)

    def perturb(
        self, x0: torch.Tensor, t: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(M e₁ ⊗ x0 + (L ⊗ I) η, η)``, ``η ~ N(0, I_K ⊗ C)`` drawn per sample and channel."""
        return self._perturb(x0, self.transition(t), generator)

    def _perturb(
        self, x0: torch.Tensor, law: Transition, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        _check_generator(generator, x0)
        shape = (x0.shape[0], self.K * x0.shape[1])
        eta = self.prior.sample(shape, x0.shape[-1], self.boundary, generator, x0.dtype)
        mean = law.mean.to(x0.dtype)[:, :, None, None, None] * x0[:, None]
        return mean.flatten(1, 2) + _mix(law.chol, eta), eta

    def sample_time(
        self, batch: int, generator: torch.Generator, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """Training times ``(batch,)``: uniform (``dsm``) or from :meth:`time_law` (``elbo``)."""
        if self.objective == "dsm":
            return super().sample_time(batch, generator, dtype)
        u = torch.rand(batch, generator=generator, device=generator.device, dtype=torch.float64)
        return self.time_law(generator.device).times(u).to(dtype)

    def stratified_times(
        self, count: int, dtype: torch.dtype = torch.float32, device: torch.device | None = None
    ) -> torch.Tensor:
        """Midpoints of ``count`` equal-probability strata of :meth:`sample_time`'s law."""
        if self.objective == "dsm":
            return super().stratified_times(count, dtype, device)
        u = (torch.arange(count, dtype=torch.float64, device=device) + 0.5) / count
        return self.time_law(device).times(u).to(dtype)

    def loss(
        self,
        net: Net,
        x0: torch.Tensor,
        t: torch.Tensor,
        generator: torch.Generator,
        shard: slice = slice(None),
    ) -> torch.Tensor:
        """Training loss per sample of ``x0[shard]`` (see *Objective*). ``dsm``:
        ``mean ‖net(y_t, t) − η‖²`` over the active components (those the reverse dynamics
        use), their channels and grid points; K = 1 is VPSDE's loss. ``elbo``: the negative
        ELBO in nats per dimension for ``t ~`` :meth:`time_law`."""
        check_network(net, self, x0.shape[1])
        if self.objective == "elbo":
            weight = 1.0 / self.time_law(x0.device).density(t[shard])
            integrand = self.elbo_integrand(net, x0, t, generator, shard)
            nelbo = integrand * weight - self.boundary_terms(x0[shard])
            return (nelbo / x0[0].numel()).to(x0.dtype)
        y_t, target = self.perturb(x0, t, generator)
        error = (net(y_t[shard], t[shard]) - target[shard]).square()
        return error.unflatten(1, (self.K, -1))[:, self.active.to(error.device)].flatten(1).mean(1)

    def prior_sample(
        self,
        batch: int,
        channels: int,
        n: int,
        generator: torch.Generator,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """``N(0, I_K ⊗ C)`` draws ``(batch, K·channels, n, n)``."""
        return self.prior.sample((batch, self.K * channels), n, self.boundary, generator, dtype)

    def drift(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``β(t) (A ⊗ I) y``."""
        q, d = self.matrices(y.device)
        beta = self.vp.beta(t.to(torch.float64))
        return _mix(-beta[:, None, None] * (q + d), y)

    def diffusion_apply(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``√(2β) (√D ⊗ n C^{1/2}) z`` (symmetric square root of D)."""
        _, d = self.matrices(z.device)
        values, vectors = torch.linalg.eigh(d)
        root = vectors @ torch.diag(values.clamp_min(0).sqrt()) @ vectors.T
        scale = (2 * self.vp.beta(t.to(torch.float64))).sqrt()[:, None, None]
        coloured = z.shape[-1] * self.prior.apply(z, 0.5, self.boundary)
        return _mix(scale * root, coloured)

    def preconditioned_score(
        self, y: torch.Tensor, t: torch.Tensor, net_out: torch.Tensor
    ) -> torch.Tensor:
        """``G Gᵀ ∇log p_t = −2β (D L⁻ᵀ ⊗ I) ε``."""
        law = self.transition(t)
        _, d = self.matrices(y.device)
        d_lt = torch.linalg.solve_triangular(law.chol, d.expand_as(law.chol), upper=False).mT
        return _mix(-2 * law.beta[:, None, None] * d_lt, net_out)

    def output(self, y: torch.Tensor) -> torch.Tensor:
        """The data component ``x``: the first ``K``-th of the channels."""
        return y[:, : y.shape[1] // self.K]

    # ---- likelihood bound (used by mldiff.diffusion.elbo) ---------------------------------

    def time_law(self, device: torch.device | str | None = None, cells: int = 512) -> TimeLaw:
        """Importance law of the ELBO's time integral: ``p = 0.8 p_score + 0.2 p_weight``.

        ``p_weight ∝ β tr W`` (``W = L⁻¹ D L⁻ᵀ``, the weight of the whitened score error;
        ``β/σ²`` for VP) and ``p_score ∝ β ρ uᵀ W u / (1 + ρ |u|²)``, ``u = L⁻¹ M e₁``: the
        expected score-error term of the exact score for data ``N(0, ρ C)``, ``ρ = 1``
        (``β α² / 2σ²`` for VP), which drops once the state has forgotten ``x0``. Tabulated
        on a geometric grid of ``cells`` cells.
        """
        with torch.no_grad():
            grid = torch.logspace(
                math.log10(self.t_min), math.log10(self.t_max), cells + 1,
                dtype=torch.float64, device=device,
            )
            law = self.transition(grid)
            w = _error_weight(law.chol, self.matrices(device)[1])
            u = torch.linalg.solve_triangular(law.chol, law.mean[..., None], upper=False)
            score = law.beta * (u.mT @ w @ u)[:, 0, 0] / (1 + u.square().sum((-1, -2)))
            weight = law.beta * w.diagonal(dim1=-2, dim2=-1).sum(-1)
            h = (0.8 * score / torch.trapezoid(score, grid)
                 + 0.2 * weight / torch.trapezoid(weight, grid))
        return TimeLaw(grid, h)

    def _whitened(self, x: torch.Tensor) -> torch.Tensor:
        """``√w_k x̂_k / (n √λ_k)``, float64 real ``(…, n, n_x[, 2])``: the orthonormal real
        coordinates of ``C^{-1/2} x / n``, so ``‖·‖²`` is the Cameron–Martin norm of the grid
        field."""
        n = x.shape[-1]
        lam = self.prior.eigenvalues(n, self.boundary, x.device)
        if not bool((lam > 0).all()):
            raise MldiffError(
                f"prior {self.prior.name!r}: the likelihood bound needs C^(-1/2), but C has a "
                "zero eigenvalue; use a positive mean_variance"
            )
        weights = spectral.mode_weights(n, self.boundary).to(x.device)
        coef = spectral.forward(x.to(torch.float64), self.boundary)
        scale = (weights / lam).sqrt() / n
        if coef.is_complex():
            return torch.view_as_real(coef) * scale[..., None]
        return coef * scale

    def boundary_terms(self, x0: torch.Tensor) -> torch.Tensor:
        """``E log r(x0 | y_ε) − E log q(y_ε | x0) + E log π(y_T)`` per sample, float64 ``(B,)``.

        Decoder ``r(x0 | y_ε) ∝ q(y_ε | x0)`` (the posterior under a flat prior on x0), so per
        real degree of freedom with ``m = M(ε) e₁`` and ``Λ = n²λ Σ(ε)``,
        ``E log r − E log q = ½(K−1)(1 + log 2π) + ½ log det Λ + ½ log(mᵀΛ⁻¹m)``
        (``log α(ε)`` for K = 1). Prior ``π = N(0, I_K ⊗ C)``:
        ``E log π = −½[K log(2π n²λ) + tr Σ(T) + |M(T) e₁|² x̃0²]``.
        """
        channels, n, k = x0.shape[1], x0.shape[-1], self.K
        dofs = channels * n * n
        ends = self.transition(torch.tensor([self.t_min, self.t_max], device=x0.device))
        lam = self.prior.eigenvalues(n, self.boundary, x0.device)
        weights = spectral.mode_weights(n, self.boundary).to(x0.device)
        log_scale = channels * float((weights * (n * n * lam).log()).sum())
        chol, m = ends.chol[0], ends.mean[0]
        u = torch.linalg.solve_triangular(chol, m[:, None], upper=False)
        log_det = 2 * chol.diagonal().log().sum()
        decoder = (
            0.5 * dofs * ((k - 1) * (1 + LOG_2PI) + log_det + u.square().sum().log())
            + 0.5 * (k - 1) * log_scale
        )
        x_norm = self._whitened(x0).square().flatten(1).sum(1)
        prior = -0.5 * (
            ends.mean[1].square().sum() * x_norm
            + dofs * ends.cov[1].trace() + k * (dofs * LOG_2PI + log_scale)
        )
        return decoder + prior

    def elbo_integrand(
        self,
        net: Net,
        x0: torch.Tensor,
        t: torch.Tensor,
        generator: torch.Generator,
        shard: slice = slice(None),
    ) -> torch.Tensor:
        """One-draw estimate of the ELBO's time integrand at ``t`` per sample, float64 ``(B,)``:

            I(t) = ½ E‖Gᵀ(s_θ − ∇log q)‖² − ½ E‖Gᵀ∇log q‖² − ∇·f
                 = β [ Σ ẽᵀ W ẽ − C n² (tr W − tr D) ],     W = L⁻¹ D L⁻ᵀ,

        with ``ẽ`` the whitened error ``C^{-1/2}(ε_θ − η)/n`` (the middle term is taken in
        expectation, ``E‖Gᵀ∇log q‖² = 2β C n² tr(D Σ⁻¹)``; ``∇·f = −β C n² tr D``).
        ``log p(x0) ≥ boundary_terms(x0) − ∫_{t_min}^{t_max} I(t) dt``.
        """
        law = self.transition(t)
        y_t, eta = self._perturb(x0, law, generator)
        error = net(y_t[shard], t[shard]) - eta[shard]
        whitened = self._whitened(error)
        _, d = self.matrices(x0.device)
        beta, w = law.beta[shard], _error_weight(law.chol[shard], d)
        quad = (whitened * _mix(w, whitened)).flatten(1).sum(1)
        dofs = x0.shape[1] * x0.shape[-1] ** 2
        return beta * (quad - dofs * (w.diagonal(dim1=-2, dim2=-1).sum(-1) - d.trace()))


class CLD(LinearProcess):
    """Critically damped Langevin diffusion (K = 2): ``Q = [[0, −1], [1, 0]]``,
    ``D = diag(0, Γ)``; ``Γ = 2`` is critical damping (``A`` has the double eigenvalue −1)."""

    name = "cld"

    def __init__(
        self,
        prior: Prior,
        boundary: Boundary,
        *,
        gamma: float = 2.0,
        v0_scale: float = 0.1,
        objective: str = "dsm",
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        t_min: float = 1e-3,
    ) -> None:
        gamma = check_positive("gamma", gamma)
        super().__init__(
            prior, boundary, q=[[0.0, -1.0], [1.0, 0.0]], d=[[0.0, 0.0], [0.0, gamma]],
            v0_scale=v0_scale, objective=objective, beta_min=beta_min, beta_max=beta_max,
            t_min=t_min,
        )


class ALDA(LinearProcess):
    """Third-order ("accelerated") Langevin diffusion (K = 3): ``x' = v``,
    ``v' = −x + γ a``, ``a' = −γ v − ψ a + noise``, i.e. ``Q = [[0, −1, 0], [1, 0, −γ],
    [0, γ, 0]]``, ``D = diag(0, 0, ψ)``. Defaults ``γ = 2``, ``ψ = 3``: every eigenvalue of ``A``
    has real part −1, the decay rate of critically damped CLD
    (``det(λ − A) = λ³ + ψλ² + (1 + γ²)λ + ψ = (λ + 1)(λ² + 2λ + 3)``)."""

    name = "alda"

    def __init__(
        self,
        prior: Prior,
        boundary: Boundary,
        *,
        gamma: float = 2.0,
        psi: float = 3.0,
        v0_scale: float = 0.1,
        objective: str = "dsm",
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        t_min: float = 1e-3,
    ) -> None:
        gamma, psi = check_positive("gamma", gamma), check_positive("psi", psi)
        super().__init__(
            prior, boundary,
            q=[[0.0, -1.0, 0.0], [1.0, 0.0, -gamma], [0.0, gamma, 0.0]],
            d=[[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, psi]],
            v0_scale=v0_scale, objective=objective, beta_min=beta_min, beta_max=beta_max,
            t_min=t_min,
        )


def _check_k(k: Any, low: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or not low <= k <= MAX_K:
        raise MldiffError(f"K: expected an integer in [{low}, {MAX_K}], got {k!r}")
    return k


class MALDA(LinearProcess):
    """Multi-auxiliary Langevin diffusion: ``Q_ij = −1`` for ``i < j``, ``+1`` for ``i > j``,
    ``D = diag(0, Γ, …, Γ)``; K = 3 and Γ = 2 by default (K = 2 is CLD)."""

    name = "malda"

    def __init__(
        self,
        prior: Prior,
        boundary: Boundary,
        *,
        K: int = 3,  # noqa: N803 - the paper's name, as written in params.yaml
        gamma: float = 2.0,
        v0_scale: float = 0.1,
        objective: str = "dsm",
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        t_min: float = 1e-3,
    ) -> None:
        k, gamma = _check_k(K, 2), check_positive("gamma", gamma)
        ones = torch.ones(k, k, dtype=torch.float64)
        super().__init__(
            prior, boundary, q=ones.tril(-1) - ones.triu(1),
            d=torch.diag(torch.cat([ones.new_zeros(1), ones.new_full((k - 1,), gamma)])),
            v0_scale=v0_scale, objective=objective, beta_min=beta_min, beta_max=beta_max,
            t_min=t_min,
        )


class LearnedProcess(LinearProcess, torch.nn.Module):
    """Learned multivariate process, trained jointly with the score network on the ELBO.

    ``Q = G − Gᵀ`` and ``D = diag(softplus(d))`` (or ``D = B Bᵀ`` with ``d_full``), all
    ``K × K`` float64 parameters. Initialization (seeded): ``G ~ N(0, 1/K)`` entrywise and
    ``D = ½ I`` (each component relaxes at the VP rate; ``G ≠ 0`` breaks the sign symmetry of
    the auxiliaries, at which ``∂ELBO/∂Q`` vanishes).

    Its objective is always ``"elbo"`` (see :class:`LinearProcess`): the gradient of the
    negative ELBO reaches the network and ``G``, ``d`` (through the perturbation, the weights
    and the boundary terms).
    """

    name = "learned"

    def __init__(
        self,
        prior: Prior,
        boundary: Boundary,
        *,
        K: int = 2,  # noqa: N803 - the paper's name, as written in params.yaml
        d_full: bool = False,
        seed: int = 0,
        v0_scale: float = 0.1,
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        t_min: float = 1e-3,
    ) -> None:
        torch.nn.Module.__init__(self)
        k = _check_k(K, 1)
        if not isinstance(d_full, bool):
            raise MldiffError(f"d_full: expected true or false, got {d_full!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise MldiffError(f"seed: expected an integer, got {seed!r}")
        self._setup(prior, boundary, k, v0_scale, "elbo", beta_min, beta_max, t_min)
        self.d_full = d_full
        g = torch.Generator().manual_seed(seed)
        skew = torch.randn(k, k, generator=g, dtype=torch.float64) / math.sqrt(k)
        if d_full:
            dissipation = math.sqrt(0.5) * torch.eye(k, dtype=torch.float64)
        else:
            dissipation = torch.full((k,), math.log(math.expm1(0.5)), dtype=torch.float64)
        self.skew = torch.nn.Parameter(skew)
        self.dissipation = torch.nn.Parameter(dissipation)
        self.active = torch.ones(k, dtype=torch.bool)

    def matrices(self, device: torch.device | str | None = None) -> tuple[torch.Tensor, ...]:
        skew, dissipation = self.skew.to(device), self.dissipation.to(device)
        if self.d_full:
            d = dissipation @ dissipation.T
        else:
            d = torch.diag(F.softplus(dissipation))
        return skew - skew.T, d



def as_linear(process: ForwardProcess) -> LinearProcess:
    """``process`` as a :class:`LinearProcess`; a :class:`VPSDE` becomes the K = 1 process
    ``Q = 0``, ``D = ½`` with its prior and schedule (the same α, σ, training target)."""
    if isinstance(process, LinearProcess):
        return process
    if type(process) is VPSDE:  # subclasses (dimensionality-varying) have other dynamics
        return LinearProcess(
            process.prior, process.boundary, q=[[0.0]], d=[[0.5]],
            beta_min=process.beta_min, beta_max=process.beta_max, t_min=process.t_min,
        )
    raise MldiffError(
        f"process: expected the VP SDE or a linear multivariate process, got "
        f"{type(process).__name__}"
    )


def check_network(net: Net, process: ForwardProcess, channels: int) -> None:
    """MldiffError unless ``net``'s ``in_channels`` (if it declares one) equals
    ``process.state_channels(channels)`` — e.g. a model trained with another K."""
    declared = getattr(getattr(net, "module", net), "in_channels", None)
    expected = process.state_channels(channels)
    if declared is not None and declared != expected:
        name = getattr(process, "name", type(process).__name__)
        raise MldiffError(
            f"network: has {declared} input channels, but process {name!r} needs "
            f"state_channels({channels}) = {expected}; was the model trained with another "
            "process or K?"
        )


class JointGaussianScore(torch.nn.Module):
    """Exact noise predictor ``ε* = E[η | y_t]`` of a linear process for Gaussian data
    ``N(mean, C_data)`` with ``C_data`` diagonal in the prior's basis (eigenvalues ``c_k``).

    Per mode, whitened by ``n √λ_k``: ``ỹ = m x̃0 + L η̃`` with ``m = M e₁``, ``x̃0 ~ N(0, ρ_k)``,
    ``ρ_k = c_k / λ_k``, so ``ỹ ~ N(0, P)``, ``P = ρ m mᵀ + L Lᵀ`` and

        ε̃* = Lᵀ P⁻¹ ỹ = z − u ρ (uᵀ z) / (1 + ρ |u|²),    z = L⁻¹ ỹ,  u = L⁻¹ m

    (Sherman–Morrison). ``z`` mixes components only (grid space); the mode-dependent gain acts
    on the one field ``uᵀz`` per channel. The score is ``∇log p_t = −(L⁻ᵀ ⊗ C⁻¹) ε* / n²``.
    Called like a network: ``(y (B, K·C, n, n), t (B,)) → ε*``; tracks a learned process.
    """

    def __init__(
        self, process: ForwardProcess, data: Prior, mean: float | torch.Tensor = 0.0
    ) -> None:
        super().__init__()
        if not isinstance(data, Prior):
            raise MldiffError(f"data: expected a Prior data covariance, got {data!r}")
        self.process = as_linear(process)
        self.data = data
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float64))

    def forward(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        process, n = self.process, y.shape[-1]
        law = process.transition(t)
        k, boundary = process.K, process.boundary
        channels = y.shape[1] // k
        mean = self.mean.to(y.device).expand(channels)[:, None, None]
        centred = y.double().unflatten(1, (k, -1)) - law.mean[:, :, None, None, None] * mean
        z = torch.linalg.solve_triangular(
            law.chol, centred.flatten(2), upper=False
        ).reshape(centred.shape)
        u = torch.linalg.solve_triangular(law.chol, law.mean[..., None], upper=False)[..., 0]
        lam = process.prior.eigenvalues(n, boundary, y.device)
        rho = torch.where(lam > 0, self.data.eigenvalues(n, boundary, y.device) / lam, 0.0)
        gain = rho / (1 + rho * u.square().sum(1)[:, None, None, None])
        projection = (u[:, :, None, None, None] * z).sum(1)
        shrunk = spectral.inverse(gain * spectral.forward(projection, boundary), boundary, n)
        return (z - u[:, :, None, None, None] * shrunk[:, None]).flatten(1, 2).to(y.dtype)
