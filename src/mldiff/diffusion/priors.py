"""Covariance operators Q: Gaussian noise laws on functions, diagonal in the bases of ``spectral``.

Normalization. The square domain of side ``length`` is rescaled to unit area, so the
L²-orthonormal basis functions ``e_k`` (Fourier ``exp(i k·x)``; Neumann products of ``1`` and
``√2 cos``) have mean square 1, and their values on an ``n × n`` cell-centred grid are ``n`` times
the unitary basis vectors of :func:`mldiff.spectral.forward`. Hence a grid field with unitary
coefficients ``ĉ`` has function coefficients ``ĉ / n``, and ``Q e_k = λ_k e_k`` acts on grid
fields as the Fourier multiplier ``λ_k`` (the factor ``n`` cancels).

Eigenvalues are ``λ_k = scale · spectrum(|k|²)`` with ``|k|²`` in physical units
(``k = 2π m / L`` periodic, ``π m / L`` Neumann). A draw from ``N(0, Q)`` truncated at the grid's
Nyquist is::

    x(grid) = Σ_k √λ_k ξ_k e_k(grid) = n · Q^{1/2} w,      w ~ N(0, I) per grid value,

whose pointwise variance, averaged over the grid, is ``trace(n) = Σ_k λ_k`` (at every point for
periodic fields). For trace-class Q this converges as ``n → ∞``; for white noise it is ``n²``.
"""

from __future__ import annotations

import inspect
import math
import numbers
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch

from mldiff import spectral
from mldiff.errors import MldiffError
from mldiff.spectral import BOUNDARIES, Boundary

POWERS: tuple[float, ...] = (1.0, 0.5, -0.5)


def check_positive(name: str, value: Any, allow_zero: bool = False) -> float:
    """``value`` as a finite float ``> 0`` (``>= 0`` with ``allow_zero``), else MldiffError."""
    bound = ">= 0" if allow_zero else "> 0"
    number = not isinstance(value, bool) and isinstance(value, numbers.Real)
    if not (number and math.isfinite(value) and (value > 0 or (allow_zero and value == 0))):
        raise MldiffError(f"{name}: expected a finite number {bound}, got {value!r}")
    return float(value)


def check_boundary(boundary: Any) -> Boundary:
    """``boundary`` if it names a basis of :mod:`mldiff.spectral`, else MldiffError."""
    if boundary not in BOUNDARIES:
        raise MldiffError(f"boundary: expected one of {BOUNDARIES}, got {boundary!r}")
    return boundary


def check_grid(n: Any) -> int:
    """``n`` as a grid size (integer ``>= 2``), else MldiffError."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 2:
        raise MldiffError(f"n: expected an integer grid size >= 2, got {n!r}")
    return int(n)


class Prior(ABC):
    """A covariance operator ``Q = scale · spectrum(−Δ)`` on the square of side ``length``."""

    name: ClassVar[str]
    is_trace_class: ClassVar[bool] = True

    def __init__(self, *, length: float = 2.0, scale: float = 1.0) -> None:
        self.length = check_positive("length", length)
        self.scale = check_positive("scale", scale)
        self._cache: dict[tuple[int, str, torch.device, torch.dtype], torch.Tensor] = {}

    @abstractmethod
    def spectrum(self, k2: torch.Tensor) -> torch.Tensor:
        """Eigenvalue (before ``scale``) as a function of ``|k|²`` (float64 tensor)."""

    def eigenvalues(
        self,
        n: int,
        boundary: Boundary,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> torch.Tensor:
        """``λ_k`` on the coefficient grid of ``spectral.forward``, shape ``(n, n_x)``; cached."""
        n = check_grid(n)
        key = (n, check_boundary(boundary), torch.device(device or "cpu"), dtype)
        if key not in self._cache:
            k2 = spectral.wavenumber_squared(n, self.length, boundary)
            self._cache[key] = (self.scale * self.spectrum(k2)).to(device=key[2], dtype=dtype)
        return self._cache[key]

    def trace(self, n: int, boundary: Boundary) -> float:
        """``Σ_k λ_k`` over the ``n²`` modes: the grid-mean pointwise variance of a draw."""
        weights = spectral.mode_weights(n, boundary)
        return float((weights * self.eigenvalues(n, boundary)).sum())

    def apply(self, x: torch.Tensor, power: float, boundary: Boundary) -> torch.Tensor:
        """``Q^power x`` for grid fields ``x`` of shape ``(..., n, n)``, power in {1, ½, −½}."""
        if power not in POWERS:
            raise MldiffError(f"power: expected one of {POWERS}, got {power!r}")
        if x.ndim < 2 or x.shape[-1] != x.shape[-2]:
            raise MldiffError(f"x: expected a field of shape (..., n, n), got {tuple(x.shape)}")
        n = x.shape[-1]
        lam = self.eigenvalues(n, boundary, x.device, x.dtype)
        if power < 0 and not bool((lam > 0).all()):
            raise MldiffError(
                f"power: Q^{power:g} is undefined for prior {self.name!r} (zero eigenvalue); "
                "use a positive mean_variance"
            )
        return spectral.inverse(spectral.forward(x, boundary) * lam**power, boundary, n)

    def sample(
        self,
        shape: tuple[int, ...],
        n: int,
        boundary: Boundary,
        generator: torch.Generator,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Draws of ``N(0, Q)`` on the grid, ``(*shape, n, n)``: ``n · Q^{1/2} w``, on the
        generator's device."""
        n = check_grid(n)
        w = torch.randn((*shape, n, n), generator=generator, device=generator.device, dtype=dtype)
        return n * self.apply(w, 0.5, boundary)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"


def _trace_class_gamma(gamma: Any) -> float:
    """γ of ``(·)^(−γ)`` priors: trace class in 2D needs γ > 1 (white noise is the other way)."""
    gamma = check_positive("gamma", gamma)
    if gamma <= 1.0:
        raise MldiffError(
            f"gamma: expected > 1 (trace class in 2D), got {gamma!r}; "
            "use prior 'white' for a non-trace-class baseline"
        )
    return gamma


class WhiteNoise(Prior):
    """``Q = scale · I``: the finite-dimensional baseline, not trace class.

    A draw has pointwise variance ``scale · n²`` (it grows with the grid). ``scale = 1 / n_train²``
    gives the usual per-pixel ``N(0, 1)`` at the training resolution ``n_train``.
    """

    name = "white"
    is_trace_class = False

    def spectrum(self, k2: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(k2)


class Matern(Prior):
    """Matérn-like ``Q = scale · (τ I − Δ)^(−γ)``, ``λ = scale (τ + |k|²)^(−γ)`` ("bessel").

    Defaults: γ = 1.1 and τ = 8 / length², the official choice (γ = 1.1, τ = 8 on the unit
    square) carried to side ``length`` so that the spectrum has the same shape in mode numbers.
    """

    name = "matern"

    def __init__(
        self,
        *,
        gamma: float = 1.1,
        tau: float | None = None,
        length: float = 2.0,
        scale: float = 1.0,
    ) -> None:
        super().__init__(length=length, scale=scale)
        self.gamma = _trace_class_gamma(gamma)
        self.tau = 8.0 / self.length**2 if tau is None else check_positive("tau", tau)

    def spectrum(self, k2: torch.Tensor) -> torch.Tensor:
        return (self.tau + k2) ** (-self.gamma)


class Laplacian(Prior):
    """``Q = scale · (−Δ)^(−γ)`` on the non-constant modes, ``λ = scale |k|^(−2γ)``.

    The constant mode (eigenvalue 1/0) gets ``scale · mean_variance``: the variance of the
    domain average of a draw. ``mean_variance = 0`` reproduces the official code (the mean is
    never noised, samples keep the data's mean); then ``Q^{−1/2}`` is undefined.
    """

    name = "laplacian"

    def __init__(
        self,
        *,
        gamma: float = 1.1,
        mean_variance: float = 1.0,
        length: float = 2.0,
        scale: float = 1.0,
    ) -> None:
        super().__init__(length=length, scale=scale)
        self.gamma = _trace_class_gamma(gamma)
        self.mean_variance = check_positive("mean_variance", mean_variance, allow_zero=True)

    def spectrum(self, k2: torch.Tensor) -> torch.Tensor:
        tail = k2.clamp_min(torch.finfo(k2.dtype).tiny) ** (-self.gamma)
        return torch.where(k2 > 0, tail, torch.full_like(k2, self.mean_variance))


class Combined(Prior):
    """Low-mode filter plus Laplacian tail: ``λ = scale · max(|k|², k_c²)^(−γ)``.

    Flat (``scale · k_c^(−2γ)``) on the low modes ``|k| ≤ k_c``, which include the mean, and
    ``(−Δ)^(−γ)`` above, continuous at ``k_c = cutoff`` (physical wavenumber; the default 4π
    is wavelength 0.5, a quarter of the default domain).
    """

    name = "combined"

    def __init__(
        self,
        *,
        gamma: float = 1.1,
        cutoff: float = 4 * math.pi,
        length: float = 2.0,
        scale: float = 1.0,
    ) -> None:
        super().__init__(length=length, scale=scale)
        self.gamma = _trace_class_gamma(gamma)
        self.cutoff = check_positive("cutoff", cutoff)

    def spectrum(self, k2: torch.Tensor) -> torch.Tensor:
        return k2.clamp_min(self.cutoff**2) ** (-self.gamma)


PRIORS: dict[str, type[Prior]] = {
    cls.name: cls for cls in (WhiteNoise, Matern, Laplacian, Combined)
}


def build_registered(kind: str, registry: dict[str, type], name: str, *args: Any, **params: Any):
    """``registry[name](*args, **params)``; MldiffError naming ``kind`` for unknown names or
    keyword parameters."""
    if name not in registry:
        raise MldiffError(f"{kind}: expected one of {sorted(registry)}, got {name!r}")
    cls = registry[name]
    signature = inspect.signature(cls.__init__).parameters.values()
    allowed = [p.name for p in signature if p.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise MldiffError(f"{kind} {name!r}: unknown parameter(s) {unknown}; expected {allowed}")
    return cls(*args, **params)


def build_prior(name: str, **params: Any) -> Prior:
    """The prior registered as ``name`` with keyword ``params`` (see :data:`PRIORS`)."""
    return build_registered("prior", PRIORS, name, **params)
