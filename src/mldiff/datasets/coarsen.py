"""Restriction to coarser grids and prolongation back, by cell averaging or spectral truncation.

Fields are ``(..., n, n)`` on the cell-centred grid of the square ``[x0, x0 + L]²``; a
restriction by ``factor = f`` (a power of two dividing ``n``) returns ``(..., n/f, n/f)``.
Two normalizations of the same operators:

* value-preserving (default): the coarse field samples the *same function* — a constant stays
  the same constant. ``average`` is the finite-volume view (mean of each ``f×f`` block, so the
  domain mean is kept exactly); ``spectral`` keeps the coarse band of the orthonormal transform
  and multiplies by ``1/f`` (the amplitude of a unitary basis vector grows like ``n``), so a
  field band-limited to the coarse grid is reproduced exactly.
* orthonormal (``orthonormal=True``): ``R = f · restrict`` and ``U = Rᵀ = prolong / f``, with
  ``R Rᵀ = I`` and ``U R`` the orthogonal projection onto the coarse subspace (what the
  dimensionality-varying diffusion needs). The value-preserving prolongation is ``f · Rᵀ``,
  so ``restrict(prolong(y)) = y`` in both normalizations.

Spectral truncation by boundary:

* ``neumann``: keep the DCT-II modes ``m_y, m_x < n/f`` (the cosine basis is native to the
  cell-centred grid: no Nyquist issue).
* ``periodic``: per axis, real FFT in the *shifted* basis ``e^{2πi m (x - x0)/L}`` (phase
  ``e^{-iπ m/n}`` accounts for the half-cell offset of cell centres, which differs between
  grids), keep ``|m| < M/2`` for the coarse size ``M``. The coarse Nyquist vector ``(-1)^j`` is
  the sample of ``sin(π M (x - x0)/L)``, while ``cos`` at that frequency vanishes at every coarse
  centre. Convention (*sine kept, cosine dropped*): the Nyquist slot keeps the fine sine
  component at ``|m| = M/2`` with unit orthonormal gain (RMS preserved, not the pointwise
  amplitude, which no linear map with ``R Rᵀ = I`` can give) and drops the cosine.
"""

from __future__ import annotations

import math
from typing import Literal, TypeVar

import numpy as np
import torch

from mldiff.errors import MldiffError
from mldiff.spectral import BOUNDARIES, Boundary, dct2, idct2

Method = Literal["average", "spectral"]
METHODS: tuple[str, ...] = ("average", "spectral")

Field = TypeVar("Field", torch.Tensor, np.ndarray)


def _check(x: torch.Tensor, factor: int, method: str, boundary: str, coarse: bool) -> int:
    """Validate the arguments; return the grid size after the operation."""
    if method not in METHODS:
        raise MldiffError(f"coarsening method: expected one of {METHODS}, got {method!r}")
    if boundary not in BOUNDARIES:
        raise MldiffError(f"boundary: expected one of {BOUNDARIES}, got {boundary!r}")
    if not isinstance(factor, int) or factor < 1 or factor & (factor - 1):
        raise MldiffError(f"factor: expected a power of two >= 1, got {factor}")
    if x.ndim < 2 or x.shape[-1] != x.shape[-2]:
        raise MldiffError(f"field: expected shape (..., n, n), got {tuple(x.shape)}")
    n = x.shape[-1]
    if coarse and n % factor:
        raise MldiffError(f"field: grid size {n} is not divisible by factor {factor}")
    return n // factor if coarse else n * factor


def _fourier_resample_last(x: torch.Tensor, size: int) -> torch.Tensor:
    """Orthonormal truncation (``size < n``) or zero-padding (``size > n``) along the last axis.

    Coefficients in the shifted unitary basis ``ĉ_m = e^{-iπm/n} rfft(x)_m``; modes
    ``|m| < min/2`` are copied; the Nyquist slot ``min/2`` of the smaller grid holds
    ``i·√2·Im ĉ`` when restricting and ``i·Im ĉ/√2`` when prolonging (sine component kept with
    unit gain, see the module docstring). Real input ``(..., n)`` -> real ``(..., size)``.
    """
    n = x.shape[-1]
    real = x.dtype
    m_in = torch.arange(n // 2 + 1, device=x.device, dtype=real)
    c = torch.fft.rfft(x, norm="ortho") * torch.polar(torch.ones_like(m_in), -math.pi * m_in / n)
    small = min(n, size)
    out = c.new_zeros(*c.shape[:-1], size // 2 + 1)
    keep = (small + 1) // 2  # modes 0 … ceil(small/2) - 1 have |m| < small/2
    out[..., :keep] = c[..., :keep]
    if small % 2 == 0:
        gain = math.sqrt(2.0) if size < n else 1.0 / math.sqrt(2.0)
        out[..., small // 2] = 1j * gain * c[..., small // 2].imag
    m_out = torch.arange(size // 2 + 1, device=x.device, dtype=real)
    out = out * torch.polar(torch.ones_like(m_out), math.pi * m_out / size)
    return torch.fft.irfft(out, n=size, norm="ortho")


def _orthonormal(x: torch.Tensor, size: int, method: str, boundary: str) -> torch.Tensor:
    """The orthonormal restriction ``R`` (``size < n``) or prolongation ``Rᵀ`` (``size > n``)."""
    n = x.shape[-1]
    if method == "average":
        if size < n:
            f = n // size
            return x.reshape(*x.shape[:-2], size, f, size, f).sum(dim=(-3, -1)) / f
        f = size // n
        return x.repeat_interleave(f, dim=-2).repeat_interleave(f, dim=-1) / f
    if boundary == "neumann":
        c = dct2(x)
        if size < n:
            return idct2(c[..., :size, :size].contiguous())
        return idct2(torch.nn.functional.pad(c, (0, size - n, 0, size - n)))
    along_x = _fourier_resample_last(x, size)
    return _fourier_resample_last(along_x.transpose(-1, -2), size).transpose(-1, -2)


def _apply(x: Field, factor: int, method: str, boundary: str, coarse: bool, scale: float) -> Field:
    """Shared driver: accept a tensor or array, apply the orthonormal map, scale, return alike."""
    tensor = torch.as_tensor(x)
    if not tensor.is_floating_point():
        tensor = tensor.double()
    size = _check(tensor, factor, method, boundary, coarse)
    out = tensor if factor == 1 else _orthonormal(tensor, size, method, boundary) * scale
    return out.numpy() if isinstance(x, np.ndarray) else out


def restrict(
    x: Field,
    factor: int,
    method: Method = "average",
    boundary: Boundary = "periodic",
    orthonormal: bool = False,
) -> Field:
    """Restrict ``(..., n, n)`` to ``(..., n/f, n/f)``, ``f = factor``.

    Value-preserving by default (constants stay constant); ``orthonormal=True`` gives
    ``R = f · restrict`` with ``R Rᵀ = I``. ``boundary`` matters for ``spectral`` only.
    Tensors keep their device and dtype; NumPy arrays come back as arrays.
    """
    return _apply(x, factor, method, boundary, True, 1.0 if orthonormal else 1.0 / factor)


def prolong(
    x: Field,
    factor: int,
    method: Method = "average",
    boundary: Boundary = "periodic",
    orthonormal: bool = False,
) -> Field:
    """Prolong ``(..., n, n)`` to ``(..., n·f, n·f)``: the adjoint side of :func:`restrict`.

    ``orthonormal=True``: ``U = Rᵀ`` (so ``U R`` is an orthogonal projection). Default,
    value-preserving: ``f · Rᵀ`` — piecewise-constant for ``average``, spectral (trigonometric
    or cosine) interpolation for ``spectral``; ``restrict(prolong(y)) = y``.
    """
    return _apply(x, factor, method, boundary, False, 1.0 if orthonormal else float(factor))
