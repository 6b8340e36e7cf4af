"""Forward processes: the one interface that training, sampling and evaluation use.

Shapes. Data ``x0``: ``(B, C, n, n)``. State ``y``: ``(B, S, n_t, n_t)`` with
``S = state_channels(C)`` and ``n_t = grid_size(t, n)``; its first ``C`` channels are the data
fields (:meth:`ForwardProcess.output`). Times ``t``: tensors of shape ``(B,)`` in
``[t_min, t_max]``. The network is called as ``net(y, t)`` and returns a tensor shaped like the
regression target of :meth:`ForwardProcess.perturb` (the state, or the noise it predicts).

A process is the forward SDE ``dy = f(y, t) dt + G(t) dW`` plus the map from a network output to
``G Gᵀ ∇ log p_t``; the reverse-time SDE and the probability-flow ODE (Song et al. 2021),

    dy = [f − G Gᵀ ∇log p_t] dt + G dW̄,        dy/dt = f − ½ G Gᵀ ∇log p_t,

are then generic. A process whose state changes grid with t (dimensionality-varying diffusion)
overrides :meth:`~ForwardProcess.grid_size`, :meth:`~ForwardProcess.resize` and, to put its
switch times on step boundaries, :meth:`~ForwardProcess.time_grid`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch

from mldiff import spectral
from mldiff.diffusion.priors import Prior, build_registered, check_boundary, check_positive
from mldiff.errors import MldiffError
from mldiff.spectral import Boundary

Net = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _per_sample(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``t`` of shape ``(B,)`` reshaped to broadcast against ``x`` of shape ``(B, ...)``."""
    return t.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)


def _check_generator(generator: torch.Generator, x: torch.Tensor) -> None:
    if generator.device.type != x.device.type:
        raise MldiffError(
            f"generator: expected one on device {x.device.type!r} like the data, "
            f"got {generator.device.type!r}"
        )


class ForwardProcess(ABC):
    """Abstract forward process; subclasses set ``t_min``, ``t_max`` and the abstract methods."""

    t_min: float
    t_max: float

    def state_channels(self, channels: int) -> int:
        """Channels ``S`` of the state for ``channels`` data fields (``C`` unless auxiliaries)."""
        return channels

    def initial_state(self, x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Data ``(B, C, n, n)`` → state at ``t = 0`` (draws auxiliary variables if any)."""
        return x0

    @abstractmethod
    def perturb(
        self, x0: torch.Tensor, t: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``y_t ~ p(y_t | x0)`` from the exact transition; return ``(y_t, target)``."""

    def loss(
        self,
        net: Net,
        x0: torch.Tensor,
        t: torch.Tensor,
        generator: torch.Generator,
        shard: slice = slice(None),
    ) -> torch.Tensor:
        """Denoising score matching per sample of ``x0[shard]``: ``mean ‖net(y_t, t) − target‖²``
        over channels and grid points (an L² norm, comparable across grids).

        The transition noise is drawn for the whole batch and then sharded, so data-parallel
        ranks that share a generator together reproduce single-process training.
        """
        y_t, target = self.perturb(x0, t, generator)
        return (net(y_t[shard], t[shard]) - target[shard]).square().flatten(1).mean(1)

    def sample_time(
        self, batch: int, generator: torch.Generator, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """Training times ``t ~ U[t_min, t_max]``, shape ``(batch,)`` (no importance sampling)."""
        u = torch.rand(batch, generator=generator, device=generator.device, dtype=dtype)
        return self.t_min + (self.t_max - self.t_min) * u

    def stratified_times(
        self, count: int, dtype: torch.dtype = torch.float32, device: torch.device | None = None
    ) -> torch.Tensor:
        """``count`` fixed times, the midpoints of equal-probability strata of the law of
        :meth:`sample_time` (validation at fixed times): uniform midpoints of ``[t_min, t_max]``."""
        mid = (torch.arange(count, dtype=dtype, device=device) + 0.5) / count
        return self.t_min + (self.t_max - self.t_min) * mid

    def time_grid(self, steps: int) -> torch.Tensor:
        """Sampler times ``t_max = t_0 > … > t_steps = t_min``, float64 ``(steps + 1,)``."""
        return torch.linspace(self.t_max, self.t_min, steps + 1, dtype=torch.float64)

    @abstractmethod
    def prior_sample(
        self,
        batch: int,
        channels: int,
        n: int,
        generator: torch.Generator,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Draw from the terminal law ``p_{t_max}``: ``(batch, S, n, n)`` on the generator's
        device, ``n`` being the grid at ``t_max``."""

    @abstractmethod
    def drift(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Forward drift ``f(y, t)``."""

    @abstractmethod
    def diffusion_apply(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``G(t) z`` for ``z ~ N(0, I)`` per grid value, shaped like the state, so that an
        Euler–Maruyama increment of the noise over ``h`` is ``√h · G(t) z``."""

    @abstractmethod
    def preconditioned_score(
        self, y: torch.Tensor, t: torch.Tensor, net_out: torch.Tensor
    ) -> torch.Tensor:
        """``G Gᵀ ∇ log p_t(y)`` as estimated from the network output."""

    def reverse_drift(
        self, y: torch.Tensor, t: torch.Tensor, net_out: torch.Tensor
    ) -> torch.Tensor:
        """Drift of the reverse SDE in forward time, ``f − G Gᵀ ∇log p_t``."""
        return self.drift(y, t) - self.preconditioned_score(y, t, net_out)

    def probability_flow_drift(
        self, y: torch.Tensor, t: torch.Tensor, net_out: torch.Tensor
    ) -> torch.Tensor:
        """Velocity of the probability-flow ODE, ``f − ½ G Gᵀ ∇log p_t``."""
        return self.drift(y, t) - 0.5 * self.preconditioned_score(y, t, net_out)

    def grid_size(self, t: float, n_final: int) -> int:
        """Grid of the state at time ``t`` for output resolution ``n_final``."""
        return n_final

    def resize(
        self, y: torch.Tensor, t_from: float, t_to: float, generator: torch.Generator
    ) -> torch.Tensor:
        """Move the state onto ``grid_size(t_to)`` when a reverse step from ``t_from`` to
        ``t_to`` changes grid (prolong and inject noise); identity for fixed-grid processes."""
        return y

    def output(self, y: torch.Tensor) -> torch.Tensor:
        """State → data fields (the first ``C`` channels)."""
        return y


class VPSDE(ForwardProcess):
    """Variance-preserving SDE with a covariance operator Q (function-space diffusion).

        dX = −½ β(t) X dt + √β(t) Q^{1/2} dW,        β(t) = β0 + (β1 − β0) t,
        X_t = α(t) X_0 + σ(t) η,   η = Q^{1/2} ξ ~ N(0, Q),
        α(t) = exp(−¼ t² (β1 − β0) − ½ t β0),        σ² = 1 − α².

    The network regresses η; its optimum is ``ε* = E[η | X_t] = −σ Q ∇log p_t``, so
    ``G Gᵀ ∇log p_t = β Q ∇log p_t = −β ε / σ``. Training times are uniform on
    ``[t_min, 1]``; ``t_min = 1e-3`` keeps σ ≈ 0.01 away from the 1/σ singularity.
    """

    t_max = 1.0

    def __init__(
        self,
        prior: Prior,
        boundary: Boundary,
        *,
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        t_min: float = 1e-3,
    ) -> None:
        if not isinstance(prior, Prior):
            raise MldiffError(f"prior: expected a Prior (see build_prior), got {prior!r}")
        self.prior = prior
        self.boundary = check_boundary(boundary)
        self.beta_min = check_positive("beta_min", beta_min)
        self.beta_max = check_positive("beta_max", beta_max)
        if self.beta_max < self.beta_min:
            raise MldiffError(f"beta_max: expected >= beta_min = {beta_min}, got {beta_max}")
        self.t_min = check_positive("t_min", t_min)
        if self.t_min >= self.t_max:
            raise MldiffError(f"t_min: expected a number in (0, 1), got {t_min!r}")

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        """``β(t) = β0 + (β1 − β0) t``."""
        return self.beta_min + (self.beta_max - self.beta_min) * t

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Marginal coefficients ``(α(t), σ(t))``; σ via ``expm1`` for accuracy at small t."""
        log_alpha = -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min
        return log_alpha.exp(), (-torch.expm1(2 * log_alpha)).sqrt()

    def perturb(
        self, x0: torch.Tensor, t: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(α x0 + σ η, η)`` with ``η ~ N(0, Q)`` drawn per sample and channel."""
        _check_generator(generator, x0)
        eta = self.prior.sample(x0.shape[:-2], x0.shape[-1], self.boundary, generator, x0.dtype)
        alpha, sigma = self.alpha_sigma(t)
        return _per_sample(alpha, x0) * x0 + _per_sample(sigma, x0) * eta, eta

    def prior_sample(
        self,
        batch: int,
        channels: int,
        n: int,
        generator: torch.Generator,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """``N(0, Q)`` draws ``(batch, channels, n, n)`` (``p_1`` up to ``α(1) ≈ 7e-3``)."""
        return self.prior.sample((batch, channels), n, self.boundary, generator, dtype)

    def drift(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return -0.5 * _per_sample(self.beta(t), y) * y

    def diffusion_apply(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``√β(t) · n Q^{1/2} z``: with ``z`` per-value N(0, 1), ``n Q^{1/2} z ~ N(0, Q)``."""
        root_q = z.shape[-1] * self.prior.apply(z, 0.5, self.boundary)
        return _per_sample(self.beta(t).sqrt(), z) * root_q

    def preconditioned_score(
        self, y: torch.Tensor, t: torch.Tensor, net_out: torch.Tensor
    ) -> torch.Tensor:
        """``β Q ∇log p_t = −β ε / σ``."""
        _, sigma = self.alpha_sigma(t)
        return -_per_sample(self.beta(t) / sigma, y) * net_out


class GaussianScore(torch.nn.Module):
    """Exact noise predictor ``ε*(x, t)`` of a :class:`VPSDE` for Gaussian data ``N(m, C)``.

    With C diagonal in the basis of Q (eigenvalues ``c_k``, given as a :class:`Prior`),
    ``p_t = N(α m, α² C + σ² Q)`` and per mode

        ε*_k = −σ λ_k ∇log p_t = σ λ_k (x − α m)_k / (α² c_k + σ² λ_k).

    Called like a network, ``(x (B, C, n, n), t (B,)) → ε``, at any grid size ``n``.
    """

    def __init__(self, process: VPSDE, data: Prior, mean: float | torch.Tensor = 0.0) -> None:
        super().__init__()
        if type(process) is not VPSDE or not isinstance(data, Prior):
            raise MldiffError("GaussianScore: expected a VPSDE process and a Prior data covariance")
        self.process = process
        self.data = data
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float64))

    def _modes(
        self, t: torch.Tensor, n: int, device: torch.device, dtype: torch.dtype
    ) -> tuple[torch.Tensor, ...]:
        """``(α, σ, λ, c)`` broadcastable to ``(B, 1, n, n_x)``."""
        boundary = self.process.boundary
        lam = self.process.prior.eigenvalues(n, boundary, device, dtype)
        c = self.data.eigenvalues(n, boundary, device, dtype)
        alpha, sigma = (v.to(dtype).reshape(-1, 1, 1, 1) for v in self.process.alpha_sigma(t))
        return alpha, sigma, lam, c

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        n, boundary = x.shape[-1], self.process.boundary
        alpha, sigma, lam, c = self._modes(t, n, x.device, x.dtype)
        denominator = alpha**2 * c + sigma**2 * lam
        gain = torch.where(denominator > 0, sigma * lam / denominator, 0.0)
        centred = x - alpha * self.mean.to(x)
        return spectral.inverse(gain * spectral.forward(centred, boundary), boundary, n)

    def minimum_loss(self, t: torch.Tensor, n: int) -> torch.Tensor:
        """Minimum of :meth:`ForwardProcess.loss`, ``(B,)``: the mean posterior variance of η,
        ``E‖η − ε*‖² = Σ_k λ_k α² c_k / (α² c_k + σ² λ_k)`` (sum over the ``n²`` modes)."""
        alpha, sigma, lam, c = self._modes(t, n, t.device, torch.float64)
        denominator = alpha**2 * c + sigma**2 * lam
        posterior = torch.where(denominator > 0, lam * alpha**2 * c / denominator, 0.0)
        weights = spectral.mode_weights(n, self.process.boundary).to(t.device)
        return (weights * posterior).flatten(1).sum(1)


# Processes defined in sibling modules (they build on VPSDE) add themselves on import, which
# ``mldiff.diffusion`` does: "dimvarying" (dimvarying.py).
# The multivariate processes build on the classes above (imported here, not at the top).
from mldiff.diffusion.multivariate import (  # noqa: E402
    ALDA,
    CLD,
    MALDA,
    LearnedProcess,
    LinearProcess,
)

PROCESSES: dict[str, type[ForwardProcess]] = {
    "vp": VPSDE,
    "linear": LinearProcess,
    "cld": CLD,
    "alda": ALDA,
    "malda": MALDA,
    "learned": LearnedProcess,
}


def build_process(name: str, prior: Prior, boundary: Boundary, **params: Any) -> ForwardProcess:
    """The process registered as ``name`` for ``prior`` and ``boundary`` (see :data:`PROCESSES`)."""
    return build_registered("process", PROCESSES, name, prior, boundary, **params)
