"""Field conventions and spectral statistics of sets of sampled fields.

A *set* is a tensor (numpy arrays are converted) of shape ``(n_samples, channels, n, n)``
indexed ``[sample, channel, y, x]`` on the cell-centred grid of the square of side ``L``
(:func:`mldiff.spectral.cell_centres`). Norms are L² norms on the domain normalized to unit
area, ``‖f‖² = Σ_c mean_grid f_c² = (h²/L²) Σ f²``: a function sampled at n = 32 and at 64 has
the same norm (exactly for band-limited functions that both grids resolve), so nothing here
grows with the grid size.

Transforms come from :mod:`mldiff.spectral`: ``boundary="periodic"`` uses the real FFT (wave
vector ``k = 2π m / L``), ``"neumann"`` the DCT-II whose cosines satisfy no-flux exactly
(``k = π m / L``). Neumann data may also be analysed with the FFT as is; its periodic
extension then has a jump at the boundary, which leaks a ``|m|⁻²`` tail into the spectrum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from mldiff import spectral
from mldiff.errors import MldiffError
from mldiff.spectral import BOUNDARIES, Boundary

_BLOCK_ELEMENTS = 1 << 22  # float64 values per sample block (32 MiB)


def as_fields(x: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    """Check a set ``(n_samples, channels, n, n)`` of finite values; return it as a tensor.

    Floating tensors keep their dtype and device; integer data become float64.
    """
    x = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
    if x.ndim != 4 or x.shape[-1] != x.shape[-2] or min(x.shape) < 1:
        raise MldiffError(
            f"{name}: expected shape (n_samples, channels, n, n), got {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        x = x.to(torch.float64)
    if not bool(torch.isfinite(x).all()):
        raise MldiffError(f"{name}: expected finite values, found NaN or inf")
    return x


def batch_slices(x: torch.Tensor) -> list[slice]:
    """Slices of the sample axis whose float64 copies hold about 2²² values each."""
    per_sample = max(1, x[0].numel())
    step = max(1, _BLOCK_ELEMENTS // per_sample)
    return [slice(s, s + step) for s in range(0, x.shape[0], step)]


def _check_boundary(boundary: str) -> None:
    if boundary not in BOUNDARIES:
        raise MldiffError(f"boundary: expected one of {BOUNDARIES}, got {boundary!r}")


def _wavenumber_scale(length: float, boundary: Boundary) -> float:
    """``k / m``: 2π/L for the Fourier basis, π/L for the cosine basis."""
    if not length > 0:
        raise MldiffError(f"length: expected a positive domain side, got {length}")
    return (2.0 if boundary == "periodic" else 1.0) * math.pi / length


@dataclass(frozen=True)
class Spectrum:
    """Radially averaged power spectrum of a set.

    ``energy[c, m]`` is the sample mean of the normalized energy of channel ``c`` in shell ``m``
    (integer wave vectors with ``round(|m|) = m``); ``wavenumber[m] = k`` in physical units;
    shells ``0 … resolved-1`` are complete circles on the grid (higher ones are corners).
    """

    wavenumber: torch.Tensor
    energy: torch.Tensor
    resolved: int
    length: float
    boundary: Boundary


def power_spectrum(
    x: torch.Tensor | np.ndarray, length: float = 2.0, boundary: Boundary = "periodic"
) -> Spectrum:
    """Shell-summed ``|û|²`` of a set, averaged over samples.

    ``E_c(m) = mean_s Σ_{round(|m⃗|) = m} w(m⃗) |û_{s,c}(m⃗)|²`` with ``û = c / n`` the
    coefficients of the orthonormal transform scaled to the unit-area domain and ``w`` the
    real-FFT multiplicities, so Parseval holds: ``Σ_m E_c(m) = mean_s mean_grid f_c²``.
    Shapes: ``x (N, C, n, n)`` → ``energy (C, n_shells)``, ``wavenumber (n_shells,)``, float64.
    The spectrum of a band-limited law is the same on the shells two grids share.
    """
    x = as_fields(x, "x")
    _check_boundary(boundary)
    scale = _wavenumber_scale(length, boundary)
    n = x.shape[-1]
    my, mx = spectral.mode_indices(n, boundary)
    shell = torch.round(torch.sqrt(my**2 + mx**2)).long().flatten().to(x.device)
    weight = (spectral.mode_weights(n, boundary) / n**2).to(x.device)
    n_shells = int(shell.max()) + 1
    energy = torch.zeros(x.shape[1], n_shells, dtype=torch.float64, device=x.device)
    for s in batch_slices(x):
        coeffs = spectral.forward(x[s].to(torch.float64), boundary)
        per_mode = (coeffs.abs() ** 2 * weight).sum(0)
        energy.index_add_(1, shell, per_mode.flatten(1))
    resolved = n // 2 if boundary == "periodic" else n
    wavenumber = scale * torch.arange(n_shells, dtype=torch.float64, device=x.device)
    return Spectrum(wavenumber, energy / x.shape[0], resolved, float(length), boundary)


def spectrum_log_error(a: Spectrum, b: Spectrum, max_shell: int | None = None) -> float:
    """Relative log error ``mean_{c, 1 ≤ m ≤ M} |log(E_a(c, m) / E_b(c, m))|``.

    ``M = max_shell``, by default the last shell both grids hold as full circles; pass one
    ``M`` to compare errors between resolutions over the same scales (the default range grows
    with the grid). The mean shell ``m = 0`` is left out: the mean is reported on its own, and
    a near-zero mean makes its log ratio meaningless. Both spectra are floored at 1e-12 of the
    larger total energy, so an empty shell gives a large finite error rather than inf.
    """
    if (a.length, a.boundary, a.energy.shape[0]) != (b.length, b.boundary, b.energy.shape[0]):
        raise MldiffError(
            "spectra: expected the same length, boundary and channels, got "
            f"({a.length}, {a.boundary}, {a.energy.shape[0]}) and "
            f"({b.length}, {b.boundary}, {b.energy.shape[0]})"
        )
    top = min(a.resolved, b.resolved) - 1
    if max_shell is not None:
        if not 1 <= max_shell <= top:
            raise MldiffError(f"max_shell: expected 1..{top} for these grids, got {max_shell}")
        top = max_shell
    if top < 1:
        raise MldiffError("spectra: expected grids resolving at least shell 1")
    floor = 1e-12 * max(float(a.energy.sum(1).max()), float(b.energy.sum(1).max()), 1e-300)
    ea = a.energy[:, 1 : top + 1].clamp_min(floor)
    eb = b.energy[:, 1 : top + 1].to(ea.device).clamp_min(floor)
    return float(torch.log(ea / eb).abs().mean())


def dominant_wavelength(s: Spectrum) -> torch.Tensor:
    """Wavelength ``2π / k`` of the peak shell among ``1 … resolved-1``, per channel ``(C,)``.

    Physical units: ``L / m`` for the Fourier basis, ``2L / m`` for the cosine basis.
    """
    if s.resolved < 2:
        raise MldiffError("spectrum: expected a grid resolving at least shell 1")
    peak = 1 + torch.argmax(s.energy[:, 1 : s.resolved], dim=1)
    return 2 * math.pi / s.wavenumber[peak]


def band_coefficients(
    x: torch.Tensor | np.ndarray, max_mode: int, boundary: Boundary = "periodic"
) -> torch.Tensor:
    """Real coordinates of each field in an L²-orthonormal basis of the modes ``|m⃗| ≤ K``.

    Returns ``(N, C·F)`` float64 with ``Σ coordinates² = Σ_{round|m⃗| ≤ K} |û(m⃗)|²`` (the
    normalized energy in the band) and ``F`` fixed by ``K = max_mode`` alone: the same
    function gives the same coordinates on every grid that resolves the band, so random unit
    vectors in this space are the same functions at every resolution. Fourier basis: the
    half plane of wave vectors (``m_x > 0`` or ``m_x = 0, m_y ≥ 0``), real and imaginary parts
    weighted by √2 (the conjugate partner) except the mean, and the half-cell phase of the
    cell-centred grid removed so coefficients refer to the domain origin. Cosine basis: the
    quadrant ``m_y, m_x ≥ 0``, coefficients as they are.
    """
    x = as_fields(x, "x")
    _check_boundary(boundary)
    n = x.shape[-1]
    periodic = boundary == "periodic"
    limit = n // 2 - 1 if periodic else n - 1
    if not 0 <= max_mode <= limit:
        raise MldiffError(
            f"max_mode: expected 0..{limit} for a {n}x{n} {boundary} grid, got {max_mode}"
        )
    span = torch.arange(-max_mode if periodic else 0, max_mode + 1)
    my, mx = torch.meshgrid(span, torch.arange(max_mode + 1), indexing="ij")
    keep = torch.round(torch.sqrt((my**2 + mx**2).double())) <= max_mode
    if periodic:
        keep &= (mx > 0) | (my >= 0)
    my, mx = my[keep].to(x.device), mx[keep].to(x.device)
    not_mean = (my != 0) | (mx != 0)
    shift = -math.pi * (my + mx).to(torch.float64) / n
    phase = torch.polar(torch.ones_like(shift), shift)
    weight = 1 + (math.sqrt(2.0) - 1) * not_mean.to(torch.float64)
    rows = []
    for s in batch_slices(x):
        c = spectral.forward(x[s].to(torch.float64), boundary)[..., my % n, mx] / n
        if periodic:
            c = c * phase
            c = torch.cat([c.real * weight, c.imag[..., not_mean] * weight[not_mean]], dim=-1)
        rows.append(c.flatten(1))
    return torch.cat(rows)


def fine_band_energy(
    x: torch.Tensor | np.ndarray, coarse: int, boundary: Boundary = "periodic"
) -> torch.Tensor:
    """Per-field normalized energy ``(N, C)`` in the modes a ``coarse × coarse`` grid cannot hold.

    ``Σ_{m⃗ ∈ B} w(m⃗) |û(m⃗)|²`` over ``B = {max(|m_y|, |m_x|) > coarse/2}`` (Fourier: above
    the coarse Nyquist mode) or ``{max(m_y, m_x) ≥ coarse}`` (cosines), with the weights of
    :func:`power_spectrum`. Restriction to the coarse grid and back (spectral prolongation)
    leaves exactly zero here.
    """
    x = as_fields(x, "x")
    _check_boundary(boundary)
    n = x.shape[-1]
    my, mx = spectral.mode_indices(n, boundary)
    top = torch.maximum(my.abs(), mx)
    band = top > coarse / 2 if boundary == "periodic" else top >= coarse
    weight = (spectral.mode_weights(n, boundary) * band / n**2).to(x.device)
    return torch.cat([
        (spectral.forward(x[s].to(torch.float64), boundary).abs() ** 2 * weight).sum((-2, -1))
        for s in batch_slices(x)
    ])
