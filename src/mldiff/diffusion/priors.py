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

import numpy as np
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
        raise MldiffError(f"n: expected an integer grid size >= 2, got {n}")
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
        """``Σ_k λ_k`` over the ``n²`` modes: the grid-mean pointwise variance of a draw
        (averaged over species for a prior with one spectrum per species)."""
        weights = spectral.mode_weights(n, boundary)
        return float((weights * self.eigenvalues(n, boundary)).sum((-2, -1)).mean())

    def apply(self, x: torch.Tensor, power: float, boundary: Boundary) -> torch.Tensor:
        """``Q^power x`` for grid fields ``x`` of shape ``(..., n, n)``, power in {1, ½, −½}."""
        if power not in POWERS:
            raise MldiffError(f"power: expected one of {POWERS}, got {power!r}")
        if x.ndim < 2 or x.shape[-1] != x.shape[-2]:
            raise MldiffError(f"x: expected a field of shape (..., n, n), got {tuple(x.shape)}")
        n = x.shape[-1]
        lam = self.eigenvalues(n, boundary, x.device, x.dtype)
        if lam.ndim == 3 and (x.ndim < 3 or x.shape[-3] != lam.shape[0]):
            raise MldiffError(
                f"prior {self.name!r}: one spectrum per species ({lam.shape[0]}), but the "
                f"field has shape {tuple(x.shape)}; use the vp process (or one species)"
            )
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


# Floor of the fitted prior's decay beyond its band: ``|k|^(−p)`` is trace class in 2D for p > 2.
MIN_DECAY = 2.5
LAWS = ("power", "exponential")  # decay laws of the fitted prior beyond its band


class Fitted(Prior):
    """Q fitted to the training data: one radially averaged power spectrum per species.

    Inside the fitted band (``|k| ≤ k_M``, the last of ``knots``, physical wavenumbers)
    ``λ_s(|k|) = scale · exp(interp(|k|; knots, log values[s]))``, log-linear between knots;
    beyond it a decay law of log-log slope ``−p = −decay[s]`` at ``k_M``, ``laws[s]`` either
    ``power``, ``λ_s = scale · values[s][-1] · (|k| / k_M)^(−p)``, or ``exponential``,
    ``λ_s = scale · values[s][-1] · exp(−p (|k| − k_M) / k_M)``, with ``p ≥ MIN_DECAY > 2``, so
    Q is trace class on every finer grid. The knots are physical
    wavenumbers, so the same operator applies on the periodic and the no-flux basis and at any
    resolution. Species are independent (Q is block diagonal, no cross-covariance: the prior only
    has to bound each species' spectrum; the network learns their coupling); with several
    species :meth:`eigenvalues` has shape ``(C, n, n_x)`` and fields must carry the species on
    axis −3 (the ``vp`` process).

    Built without ``knots`` it is a placeholder that ``mldiff train`` replaces by :meth:`fit` of
    the training split at the run's finest level, kept in the model file (``spec.prior``).
    """

    name = "fitted"

    def __init__(
        self,
        *,
        margin: float = 0.25,
        knots: list[float] | None = None,
        values: list[list[float]] | None = None,
        decay: list[float] | None = None,
        laws: list[str] | None = None,
        length: float = 2.0,
        scale: float = 1.0,
    ) -> None:
        super().__init__(length=length, scale=scale)
        self.margin = check_positive("margin", margin, allow_zero=True)
        self.knots, self.values, self.decay = knots, values, decay
        self.laws = laws if laws is not None or decay is None else ["power"] * len(decay)
        if knots is None and values is None and decay is None:
            return
        try:
            k = torch.tensor(knots, dtype=torch.float64)
            v = torch.tensor(values, dtype=torch.float64)
            p = torch.tensor(decay, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            k = v = p = torch.zeros(0)
        ok = (k.ndim == 1 and len(k) >= 2 and bool((k.diff() > 0).all()) and v.ndim == 2
              and v.shape[1] == len(k) and bool((v > 0).all()) and p.shape == (v.shape[0],)
              and bool((p > 2).all()) and isinstance(self.laws, list)
              and len(self.laws) == len(p) and set(self.laws) <= set(LAWS))
        if not ok:
            raise MldiffError(
                "prior 'fitted': expected increasing knots, positive values (species x knots) "
                f"and one decay > 2 and one law in {LAWS} per species"
            )

    @classmethod
    def fit(
        cls,
        x: torch.Tensor,
        boundary: Boundary,
        *,
        margin: float = 0.25,
        length: float = 2.0,
        scale: float = 1.0,
    ) -> Fitted:
        """The prior of fields ``x (N, C, n, n)``: per species and shell ``s`` the mean second
        moment ``P_s`` of :func:`shell_power` (uncentred: the process noises ``x`` itself),
        floored at ``1e-12 · max P``; ``log P`` smoothed by a (1, 2, 1)/4 filter over the
        shells ``2 … top − 1``; knots at the shells' mean ``|k|``. Over the upper half of the
        shells ``log P`` is fitted by least squares against ``log k`` (power law) and against
        ``k`` (exponential); the law with the smaller residual is kept, its log-log slope at
        ``k_M`` less ``margin`` (Q slightly rougher than the data just beyond the band, keeping
        them inside its support) and floored at :data:`MIN_DECAY` is the decay.
        """
        knots, shells = shell_power(x, boundary, length)
        top = len(knots) - 1
        shells = shells.clamp_min(1e-12 * shells.amax(1, keepdim=True))
        logs = shells.log()
        if top >= 3:
            logs[:, 2:-1] = (logs[:, 1:-2] + 2 * logs[:, 2:-1] + logs[:, 3:]) / 4
        upper = slice(max(1, top // 2), top + 1)
        y = logs[:, upper] - logs[:, upper].mean(1, keepdim=True)
        fits = []
        for abscissa, to_log_log in ((knots[upper].log(), 1.0), (knots[upper], knots[-1])):
            centred = abscissa - abscissa.mean()
            slope = (y * centred).sum(1) / centred.square().sum().clamp_min(1e-300)
            fits.append(((y - slope[:, None] * centred).square().sum(1), -slope * to_log_log))
        exponential = fits[1][0] < fits[0][0]
        decay = (torch.where(exponential, fits[1][1], fits[0][1]) - margin).clamp_min(MIN_DECAY)
        laws = [LAWS[int(e)] for e in exponential]
        return cls(margin=margin, knots=knots.tolist(), values=logs.exp().tolist(),
                   decay=decay.tolist(), laws=laws, length=length, scale=scale)

    def params(self) -> dict[str, Any]:
        """Keyword parameters that rebuild this prior with :func:`build_prior` (JSON-ready)."""
        return {"margin": self.margin, "knots": self.knots, "values": self.values,
                "decay": self.decay, "laws": self.laws, "scale": self.scale}

    def spectrum(self, k2: torch.Tensor) -> torch.Tensor:
        if self.knots is None:
            raise MldiffError(
                "prior 'fitted': not fitted yet (mldiff train fits it to the training data "
                "and stores it in the model file)"
            )
        k = k2.sqrt().numpy()
        last = self.knots[-1]
        rows = []
        for values, decay, law in zip(self.values, self.decay, self.laws, strict=True):
            inside = np.exp(np.interp(k, self.knots, np.log(values)))
            ratio = np.maximum(k, last) / last
            beyond = values[-1] * (ratio ** (-decay) if law == "power"
                                   else np.exp(-decay * (ratio - 1)))
            rows.append(torch.from_numpy(np.where(k <= last, inside, beyond)))
        return rows[0] if len(rows) == 1 else torch.stack(rows)


def shell_power(
    x: torch.Tensor, boundary: Boundary, length: float, prior: Prior | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(knots (S,), P (C, S))``: per species the mean of ``|ĉ_k / n|²`` (over samples and the
    modes of shell ``s``, ``round(|k| / k_1) = s``, ``s ≤ n/2`` periodic, ``n − 1`` no-flux) of
    fields ``x (N, C, n, n)``, divided by ``λ_k`` of ``prior`` when given; knots are the shells'
    mean ``|k|``."""
    boundary = check_boundary(boundary)
    if x.ndim != 4 or x.shape[-1] != x.shape[-2] or len(x) < 1:
        raise MldiffError(f"x: expected fields (N, C, n, n), got {tuple(x.shape)}")
    n = check_grid(x.shape[-1])
    power = (spectral.forward(x.double().cpu(), boundary) / n).abs().square().mean(0)
    if prior is not None:
        power = power / prior.eigenvalues(n, boundary)
    unit = (2.0 if boundary == "periodic" else 1.0) * math.pi / length
    k = spectral.wavenumber_squared(n, length, boundary).sqrt()
    shell = (k / unit).round()
    top = n // 2 if boundary == "periodic" else n - 1
    knots = torch.stack([k[shell == s].mean() for s in range(top + 1)])
    return knots, torch.stack([power[:, shell == s].mean(-1) for s in range(top + 1)], dim=1)


def fit_prior_spec(spec: dict[str, Any], x: torch.Tensor, boundary: Boundary,
                   length: float) -> dict[str, Any]:
    """``spec`` (``{"name", "params"}``) with an unfitted ``fitted`` prior replaced by
    :meth:`Fitted.fit` of the normalized fields ``x``; other specs unchanged."""
    if spec["name"] != Fitted.name or spec["params"].get("knots") is not None:
        return spec
    prior = Fitted.fit(x, boundary, length=length, **spec["params"])
    return {**spec, "params": prior.params()}


PRIORS: dict[str, type[Prior]] = {
    cls.name: cls for cls in (WhiteNoise, Matern, Laplacian, Combined, Fitted)
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
