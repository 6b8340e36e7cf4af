"""Batched pseudo-spectral ETDRK4 for ``∂_t u = L u + N(u)``, ``L`` diagonal in a spectral basis.

State ``u``: ``(batch, species, n, n)`` indexed ``[b, s, y, x]``; ``L`` acts per species as the
eigenvalues ``linear[s]`` (shape ``(species, n, n_x)``) on the orthonormal coefficients of
:func:`mldiff.spectral.forward` (DCT-II for ``neumann``, real FFT for ``periodic``); ``N`` is
evaluated pointwise in physical space. One step of size ``h`` (Cox & Matthews 2002), ``v = û``::

    a  = E₂ v + Q N(v)
    b  = E₂ v + Q N(a)
    c  = E₂ a + Q (2 N(b) − N(v))
    v⁺ = E v + f₁ N(v) + 2 f₂ (N(a) + N(b)) + f₃ N(c)

with ``z = hL``, ``E = eᶻ``, ``E₂ = e^{z/2}``, ``Q = h (e^{z/2} − 1)/z`` and::

    f₁ = h [−4 − z + eᶻ (4 − 3z + z²)] / z³
    f₂ = h [ 2 + z + eᶻ (z − 2)] / z³
    f₃ = h [−4 − 3z − z² + eᶻ (4 − z)] / z³

The φ-type coefficients are evaluated as Kassam & Trefethen (2005) do, by the mean over points
``z + e^{iθ}`` on a unit circle around each ``z`` (exact for analytic functions, and free of the
cancellation of the formulas above near ``z = 0``), in complex128, then cast to the working dtype.
They depend only on the step, the grid and the linear operator, so they are cached across solver
instances, calls and batches (:func:`coefficient_cache_info`).
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields

import torch

from mldiff import spectral
from mldiff.errors import MldiffError


@dataclass(frozen=True)
class ETDRK4Coefficients:
    """``E, E₂, Q, f₁, f₂, f₃`` for one step size, each shaped like the linear symbol."""

    e: torch.Tensor
    e_half: torch.Tensor
    q: torch.Tensor
    f1: torch.Tensor
    f2: torch.Tensor
    f3: torch.Tensor


def etdrk4_coefficients(
    linear: torch.Tensor, h: float, contour_points: int = 16, chunk: int = 1 << 15
) -> ETDRK4Coefficients:
    """ETDRK4 coefficients (float64, shaped like ``linear``) for real diagonal ``L`` and step ``h``.

    Each of ``Q, f₁, f₂, f₃`` is ``h`` times the mean of its ``g(w)`` over
    ``w = z + exp(iπ(j − ½)/M)``, ``j = 1 … M``; for real ``z`` the upper half circle suffices
    (the real part of its mean is the mean over the full circle of ``2M`` points). ``M = 16``
    (Kassam–Trefethen's 32-point circle) is accurate to round-off for every ``z ≤ 0``; the
    functions are evaluated once per distinct ``z``, in chunks of ``chunk`` values.
    """
    z = h * linear.detach().to(device="cpu", dtype=torch.float64).flatten()
    values, index = torch.unique(z, return_inverse=True)
    angles = math.pi * (torch.arange(contour_points, dtype=torch.float64) + 0.5) / contour_points
    circle = torch.polar(torch.ones_like(angles), angles)[:, None]
    means = []
    for part in values.split(chunk):
        w = part.to(torch.complex128)[None, :] + circle
        ew, w3 = torch.exp(w), w**3
        g = torch.stack(
            [
                (torch.exp(w / 2) - 1) / w,
                (-4 - w + ew * (4 - 3 * w + w * w)) / w3,
                (2 + w + ew * (w - 2)) / w3,
                (-4 - 3 * w - w * w + ew * (4 - w)) / w3,
            ]
        )
        means.append(h * g.mean(dim=1).real)
    q, f1, f2, f3 = torch.cat(means, dim=1)
    full = [torch.exp(values), torch.exp(values / 2), q, f1, f2, f3]
    shaped = [c[index].reshape(linear.shape).to(linear.device) for c in full]
    return ETDRK4Coefficients(*shaped)


def step_schedule(
    times: Sequence[float], dt_max: float, dt0: float, ramp_steps: int
) -> list[list[float]]:
    """Step sizes from ``t = 0`` to each save time in turn: one list per entry of ``times``.

    The step starts at ``dt0`` and doubles after every ``ramp_steps`` steps up to ``dt_max``
    (a geometric ramp over the early reaction transient). A step that would pass the next save
    time is shortened to land on it; once at ``dt_max``, each remaining interval is cut into
    equal steps ``≤ dt_max``. The schedule depends on the settings only, never on the data.
    """
    if not 0 < dt0 <= dt_max or not math.isfinite(dt_max):
        raise MldiffError(f"pde step: expected 0 < dt0 <= dt_max < inf, got {dt0=}, {dt_max=}")
    if isinstance(ramp_steps, bool) or not isinstance(ramp_steps, int) or ramp_steps < 1:
        raise MldiffError(f"pde step: ramp_steps must be an integer >= 1, got {ramp_steps!r}")
    schedule, t, size, taken = [], 0.0, dt0, 0
    for t_save in times:
        steps: list[float] = []
        while t_save > t:
            remaining = t_save - t
            if size >= dt_max:
                count = math.ceil(remaining / dt_max - 1e-9)
                steps += [remaining / count] * count
                break
            if remaining <= size * (1 + 1e-9):
                steps.append(remaining)
                break
            steps.append(size)
            t += size
            taken += 1
            if taken % ramp_steps == 0:
                size = min(2 * size, dt_max)
        t = t_save
        schedule.append(steps)
    return schedule


# Coefficients in working dtype/device, least recently used first; bounded in bytes (one step of a
# two-species 512² problem is 25 MiB in float64).
CACHE_BYTES = 512 << 20
_cache: OrderedDict[tuple, ETDRK4Coefficients] = OrderedDict()
_stats = {"hits": 0, "misses": 0}


def coefficient_cache_info() -> dict[str, int]:
    """``hits``, ``misses``, ``entries`` and ``bytes`` of the shared coefficient cache."""
    size = sum(_nbytes(c) for c in _cache.values())
    return {**_stats, "entries": len(_cache), "bytes": size}


def clear_coefficient_cache() -> None:
    """Empty the shared coefficient cache and zero its counters."""
    _cache.clear()
    _stats.update(hits=0, misses=0)


def _nbytes(coefficients: ETDRK4Coefficients) -> int:
    return sum(getattr(coefficients, f.name).nbytes for f in fields(coefficients))


def _cached(key: tuple, compute: Callable[[], ETDRK4Coefficients]) -> ETDRK4Coefficients:
    """``_cache[key]``, computed on a miss; evicts least recently used entries over
    :data:`CACHE_BYTES` (the newest entry is always kept)."""
    if key in _cache:
        _stats["hits"] += 1
        _cache.move_to_end(key)
        return _cache[key]
    _stats["misses"] += 1
    value = _cache[key] = compute()
    total = sum(_nbytes(c) for c in _cache.values())
    while total > CACHE_BYTES and len(_cache) > 1:
        total -= _nbytes(_cache.popitem(last=False)[1])
    return value


class ETDRK4:
    """ETDRK4 integrator for one linear symbol, reaction and grid.

    ``linear``: ``(species, n, n_x)`` float64 eigenvalues of ``L``; ``nonlinear`` maps a
    physical state ``(batch, species, n, n)`` to its rate of the same shape. Works in ``dtype``
    on ``device``. Periodic coefficients are kept as real ``(…, n_x, 2)`` pairs so every step
    is real arithmetic; with elementwise ``nonlinear`` each sample's result does not depend on
    the other samples in the batch.
    """

    def __init__(
        self,
        linear: torch.Tensor,
        nonlinear: Callable[[torch.Tensor], torch.Tensor],
        boundary: spectral.Boundary,
        *,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str = "cpu",
    ) -> None:
        self.linear = linear.to(torch.float64)
        self.nonlinear = nonlinear
        self.boundary = boundary
        self.n = linear.shape[-2]
        self.dtype = dtype
        self.device = torch.device(device)
        operator = self.linear.detach().cpu().contiguous().numpy()
        digest = hashlib.blake2b(operator.tobytes(), digest_size=16).hexdigest()
        self._key = (digest, operator.shape, boundary, dtype, self.device)

    def coefficients(self, h: float) -> ETDRK4Coefficients:
        """Coefficients for step ``h`` in the working dtype/device, from the shared cache keyed
        by the operator's values (a hash), boundary, dtype, device and ``h`` to 12 digits."""
        return _cached((*self._key, float(f"{h:.12e}")), lambda: self._compute(h))

    def _compute(self, h: float) -> ETDRK4Coefficients:
        full = etdrk4_coefficients(self.linear, h)
        pairs = self.boundary == "periodic"
        return ETDRK4Coefficients(
            *(
                (c[..., None] if pairs else c).to(device=self.device, dtype=self.dtype)
                for c in (getattr(full, f.name) for f in fields(full))
            )
        )

    def to_spectral(self, u: torch.Tensor) -> torch.Tensor:
        """Physical ``(…, n, n)`` to real coefficients (``(…, n, n_x, 2)`` when periodic)."""
        c = spectral.forward(u, self.boundary)
        return torch.view_as_real(c) if c.is_complex() else c

    def to_physical(self, c: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_spectral`."""
        if self.boundary == "periodic":
            c = torch.view_as_complex(c)
        return spectral.inverse(c, self.boundary, self.n)

    def _rate(self, c: torch.Tensor) -> torch.Tensor:
        return self.to_spectral(self.nonlinear(self.to_physical(c)))

    def step(self, v: torch.Tensor, h: float) -> torch.Tensor:
        """One ETDRK4 step of size ``h`` on the coefficients ``v`` (see the module docstring)."""
        k = self.coefficients(h)
        nv = self._rate(v)
        e2v = k.e_half * v
        a = k.q * nv
        a += e2v
        na = self._rate(a)
        b = k.q * na
        b += e2v
        nb = self._rate(b)
        c = 2 * nb
        c -= nv
        c *= k.q
        c += k.e_half * a
        nc = self._rate(c)
        out = k.e * v
        out += k.f1 * nv
        na += nb
        out += 2 * (k.f2 * na)
        out += k.f3 * nc
        return out

    def integrate(
        self, u0: torch.Tensor, schedule: Sequence[Sequence[float]]
    ) -> Iterator[torch.Tensor]:
        """Yield the physical state after each list of steps in ``schedule`` (``u0`` if empty)."""
        u = u0
        v = self.to_spectral(u0)
        for steps in schedule:
            for h in steps:
                v = self.step(v, h)
            if steps:
                u = self.to_physical(v)
            yield u
