"""Orthonormal spectral bases on the square [x0, x0 + L]² and their Laplacian symbols.

Shared by the PDE solvers (``mldiff.pde``) and the noise priors (``mldiff.diffusion``).
Fields are tensors of shape ``(..., n, n)`` indexed ``[..., y, x]`` on a cell-centred grid
with spacing ``h = L / n``; both transforms act on the last two axes and are batched over
the leading ones, on any device and dtype.

* ``periodic``: real FFT, coefficients of shape ``(..., n, n // 2 + 1)`` (complex);
  wavenumbers ``k = 2π m / L`` with ``m`` in FFT order.
* ``neumann``: DCT-II, coefficients of shape ``(..., n, n)`` (real); the cosine modes
  ``cos(π m (x - x0) / L)`` satisfy the no-flux condition exactly, ``k = π m / L``.

Both use ``norm="ortho"`` (unitary), so Parseval holds: ``sum(x²) = sum(|c|²)``, with the
Hermitian weights of the real FFT accounted for by :func:`mode_weights`.
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import scipy.fft
import torch

Boundary = Literal["periodic", "neumann"]
BOUNDARIES: tuple[str, ...] = ("periodic", "neumann")


def _dct_last(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal DCT-II along the last axis via one FFT (Makhoul 1980).

    ``X_k = s_k Σ_j x_j cos(π k (2j + 1) / 2N)``, ``s_0 = √(1/N)``, ``s_k = √(2/N)``.
    """
    n = x.shape[-1]
    v = torch.cat([x[..., ::2], x[..., 1::2].flip(-1)], dim=-1)
    k = torch.arange(n, device=x.device, dtype=x.dtype)
    phase = torch.polar(torch.ones_like(k), -math.pi * k / (2 * n))
    out = (torch.fft.fft(v, dim=-1) * phase).real * math.sqrt(2.0 / n)
    out[..., 0] = out[..., 0] / math.sqrt(2.0)
    return out


def _idct_last(c: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_dct_last` (orthonormal DCT-III) along the last axis."""
    n = c.shape[-1]
    scaled = c * math.sqrt(n / 2.0)
    scaled = torch.cat([scaled[..., :1] * math.sqrt(2.0), scaled[..., 1:]], dim=-1)
    k = torch.arange(n, device=c.device, dtype=c.dtype)
    phase = torch.polar(torch.ones_like(k), math.pi * k / (2 * n))
    reflected = torch.cat([torch.zeros_like(scaled[..., :1]), scaled[..., 1:].flip(-1)], dim=-1)
    v = torch.fft.ifft(phase * torch.complex(scaled, -reflected), dim=-1).real
    out = torch.empty_like(v)
    half = (n + 1) // 2
    out[..., ::2] = v[..., :half]
    out[..., 1::2] = v[..., half:].flip(-1)
    return out


# Up to this size the DCT is two small matrix products (faster than the FFT route there).
MATMUL_DCT_MAX = 128


@functools.lru_cache(maxsize=32)
def dct_matrix(n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Orthonormal DCT-II matrix ``C[k, j] = s_k cos(π k (2j + 1) / 2n)`` (``C Cᵀ = I``).

    Cached, so always made as a normal tensor (never an inference-mode one that autograd
    would refuse after a sampler first asked for it)."""
    with torch.inference_mode(False):
        k = torch.arange(n, dtype=torch.float64)[:, None]
        j = torch.arange(n, dtype=torch.float64)[None, :]
        c = torch.cos(math.pi * k * (2 * j + 1) / (2 * n)) * math.sqrt(2.0 / n)
        c[0] /= math.sqrt(2.0)
        return c.to(dtype=dtype, device=device)


def _use_scipy(x: torch.Tensor) -> bool:
    """CPU tensors outside autograd go through scipy's DCT (2-9x faster than the torch paths)."""
    return x.device.type == "cpu" and not (torch.is_grad_enabled() and x.requires_grad)


def dct2(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal 2D DCT-II over the last two axes: ``(..., n, n) -> (..., n, n)``.

    On CPU without autograd, ``scipy.fft.dctn``; otherwise ``C x Cᵀ`` with the DCT matrix for
    ``n <= MATMUL_DCT_MAX``, else one FFT per axis (Makhoul).
    """
    n = x.shape[-1]
    if _use_scipy(x):
        return torch.from_numpy(scipy.fft.dctn(x.numpy(), axes=(-2, -1), norm="ortho"))
    if n <= MATMUL_DCT_MAX and x.shape[-2] == n:
        c = dct_matrix(n, x.dtype, x.device)
        return c @ x @ c.T
    return _dct_last(_dct_last(x).transpose(-1, -2)).transpose(-1, -2)


def idct2(c: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`dct2` (orthonormal 2D DCT-III): ``Cᵀ c C``."""
    n = c.shape[-1]
    if _use_scipy(c):
        return torch.from_numpy(scipy.fft.idctn(c.numpy(), axes=(-2, -1), norm="ortho"))
    if n <= MATMUL_DCT_MAX and c.shape[-2] == n:
        m = dct_matrix(n, c.dtype, c.device)
        return m.T @ c @ m
    return _idct_last(_idct_last(c).transpose(-1, -2)).transpose(-1, -2)


def forward(x: torch.Tensor, boundary: Boundary) -> torch.Tensor:
    """Field ``(..., n, n)`` to orthonormal coefficients of the basis for ``boundary``."""
    if boundary == "periodic":
        return torch.fft.rfft2(x, norm="ortho")
    if boundary == "neumann":
        return dct2(x)
    raise ValueError(f"boundary: expected one of {BOUNDARIES}, got {boundary!r}")


def inverse(c: torch.Tensor, boundary: Boundary, n: int) -> torch.Tensor:
    """Coefficients back to the field ``(..., n, n)`` (inverse of :func:`forward`)."""
    if boundary == "periodic":
        return torch.fft.irfft2(c, s=(n, n), norm="ortho")
    if boundary == "neumann":
        return idct2(c)
    raise ValueError(f"boundary: expected one of {BOUNDARIES}, got {boundary!r}")


def mode_indices(n: int, boundary: Boundary) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer mode numbers ``(m_y, m_x)`` on the coefficient grid, each ``(n, n_x)``.

    Periodic: ``m_y`` in FFT order (0, 1, …, -1), ``m_x = 0 … n/2`` (rfft).
    Neumann: ``m_y, m_x = 0 … n-1``.
    """
    if boundary == "periodic":
        my = torch.fft.fftfreq(n, d=1.0 / n)
        mx = torch.arange(n // 2 + 1, dtype=torch.float64)
    elif boundary == "neumann":
        my = mx = torch.arange(n, dtype=torch.float64)
    else:
        raise ValueError(f"boundary: expected one of {BOUNDARIES}, got {boundary!r}")
    return torch.meshgrid(my.double(), mx, indexing="ij")


def wavenumber_squared(n: int, length: float, boundary: Boundary) -> torch.Tensor:
    """``|k|²`` of each basis function, ``(n, n_x)`` float64: ``−Δ e_k = |k|² e_k``.

    Periodic ``k = 2π m / L``; Neumann ``k = π m / L``.
    """
    my, mx = mode_indices(n, boundary)
    scale = (2.0 if boundary == "periodic" else 1.0) * math.pi / length
    return (scale * my) ** 2 + (scale * mx) ** 2


def laplacian_symbol(
    n: int, length: float, boundary: Boundary, operator: str = "spectral"
) -> torch.Tensor:
    """Eigenvalues of the discrete Laplacian on the coefficient grid, ``(n, n_x)`` float64.

    ``spectral``: ``−|k|²`` (exact Laplacian of the band-limited interpolant).
    ``finite_volume``: the cell-centred 5-point stencil, diagonal in the same basis,
    ``−(4/h²)[sin²(θ_y/2) + sin²(θ_x/2)]`` with ``θ = π m / n`` (Neumann, mirror ghost
    cells) or ``θ = 2π m / n`` (periodic), ``h = L / n``.
    """
    if operator == "spectral":
        return -wavenumber_squared(n, length, boundary)
    if operator == "finite_volume":
        my, mx = mode_indices(n, boundary)
        theta = (2.0 if boundary == "periodic" else 1.0) * math.pi / n
        h = length / n
        return -(4.0 / h**2) * (torch.sin(theta * my / 2) ** 2 + torch.sin(theta * mx / 2) ** 2)
    raise ValueError(f"laplacian: expected 'spectral' or 'finite_volume', got {operator!r}")


def mode_weights(n: int, boundary: Boundary) -> torch.Tensor:
    """Multiplicity of each stored coefficient in Parseval's sum, ``(n, n_x)``.

    ``sum(x**2) == sum(mode_weights * |forward(x)|**2)``: 1 everywhere for the DCT; for the
    real FFT, 2 for columns whose conjugate partner is not stored (0 < m_x < n/2).
    """
    if boundary == "neumann":
        return torch.ones(n, n, dtype=torch.float64)
    w = torch.full((n, n // 2 + 1), 2.0, dtype=torch.float64)
    w[:, 0] = 1.0
    if n % 2 == 0:
        w[:, -1] = 1.0
    return w


def cell_centres(n: int, length: float = 2.0, origin: float = -1.0) -> torch.Tensor:
    """Cell-centre coordinates ``origin + (i + ½) L / n``, ``i = 0 … n-1`` (float64)."""
    return origin + (torch.arange(n, dtype=torch.float64) + 0.5) * (length / n)
