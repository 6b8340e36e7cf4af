"""Fourier neural operator (Li et al. 2021) with FiLM time conditioning.

``net(x, t)``: ``x (B, C_in, n, n)`` on the cell-centred grid of ``[origin, origin + length]²``,
``t (B,)`` -> ``(B, C_out, n, n)``, for every ``n >= min_resolution``::

    h_0     = P([x, γ(grid)])                                   pointwise lifting to `width`
    h_{l+1} = GELU(FiLM_l(K_l h_l + W_l h_l, e(t)))             l = 0 … layers-1
    out     = Q(h_L)                                            pointwise MLP to C_out

``K_l`` is a :class:`SpectralConv2d`, ``W_l`` a pointwise linear skip. ``γ(grid)`` encodes the
physical cell-centre coordinates by functions that are smooth under the boundary's symmetry:
``(cos θ, sin θ)`` per axis with ``θ = 2π (x − origin) / L`` (periodic), ``cos(π (x − origin) / L)``
per axis (neumann; its even reflection is one smooth cosine). Raw coordinates would add a jump
(periodic wrap) or a kink (reflection) whose aliasing depends on ``n`` and break the resolution
consistency below.

Resolution consistency: every step is either pointwise (it commutes with sampling) or a fixed
multiplier on grid-independent Fourier coefficients of the kept modes, all strictly below every
allowed grid's Nyquist frequency. The same weights are therefore one operator on functions; two
grids differ only by the aliasing of the spectrum that GELU creates above the grid's band.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mldiff.errors import MldiffError
from mldiff.models.embedding import FiLM, TimeEmbedding, seeded
from mldiff.spectral import BOUNDARIES, Boundary, cell_centres, dct_matrix

N_COORDS = {"periodic": 4, "neumann": 2}  # channels of coordinate_features

# Inference (no autograd) works in chunks of samples whose widest activation (the projection's
# 2·width channels) is at most this many bytes; it bounds the per-chunk scratch buffers. Larger
# chunks mean fewer, larger operations, which matters more on a CPU shared with other processes
# (each parallel operation waits for its slowest thread) than the cache locality of small ones.
CHUNK_BYTES = 256 << 20


class Pointwise(nn.Linear):
    """Linear map of the channels at every grid point: ``(B, C_in, n, n) -> (B, C_out, n, n)``,
    ``y[b, :, p] = W x[b, :, p] + β`` as one batched matrix product over the flattened grid."""

    def forward(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """``out``: an optional contiguous ``(B, C_out, n, n)`` tensor to write the result into."""
        weight = self.weight.expand(x.shape[0], -1, -1)
        flat = None if out is None else out.flatten(2)
        return torch.baddbmm(self.bias[:, None], weight, x.flatten(2), out=flat).unflatten(
            2, x.shape[2:]
        )


class _Permute(torch.autograd.Function):
    """``x.permute(dims)`` as a contiguous copy whose gradient is contiguous too, so that both
    passes of the mode-wise batched matrix product get BLAS-ready blocks."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
        ctx.inverse = tuple(sorted(range(len(dims)), key=dims.__getitem__))
        return x.permute(dims).contiguous()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad.permute(ctx.inverse).contiguous(), None


def modewise(low: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``v̂[b, o, k] = Σ_i û[b, i, k] R[k, i, o]``: ``(B, C_in, X, Y), (X, Y, C_in, C_out)`` ->
    ``(B, C_out, X, Y)``, one batched matrix product over the ``X·Y`` kept modes."""
    a = _Permute.apply(low.flatten(2), (2, 0, 1))  # (K, B, C_in)
    out = torch.bmm(a, weight.flatten(0, 1))  # (K, B, C_out)
    return _Permute.apply(out, (1, 2, 0)).unflatten(2, low.shape[2:])


class SpectralConv2d(nn.Module):
    """Learned multiplier on the lowest Fourier (periodic) or cosine (neumann) modes.

    ``(B, C_in, n, n) -> (B, C_out, n, n)``; ``v̂_o(k) = Σ_i R_io(k) û_i(k)`` for kept ``k``,
    zero for the rest (see :func:`modewise`).

    * ``periodic``: ``û = rfft2(u, norm="forward")``, i.e. ``û(k) = n⁻² Σ_x u(x) e^{−ik·x}``:
      for a band-limited ``u`` these are its Fourier-series coefficients, the same at every
      ``n``. ``irfft2(v̂, norm="forward")`` evaluates the truncated series ``Σ_k v̂(k) e^{ik·x}``
      at the grid points. Hence the same weights are the same operator at every grid size: a
      band-limited input at 32 and at 64 gives the same output function sampled on each grid
      (the half-cell offset of cell centres gives ``û`` and ``v̂`` the same phase, which
      cancels). Computed axis by axis, dropping unkept ``k_x`` before the ``k_y`` FFT.
      Kept modes: ``k_y ∈ [−(modes−1), modes−1]`` (both signs, the rfft2's full axis),
      ``k_x ∈ [0, modes−1]``; complex ``R``. Needs ``n >= 2·modes`` so every kept mode is
      strictly below Nyquist.
    * ``neumann``: even reflection. Mirroring ``u`` to the ``(2n, 2n)`` grid of the doubled
      period ``2L`` makes it periodic; its Fourier series there is the cosine series
      ``u = Σ_m a_m cos(π m_y (y−y0)/L) cos(π m_x (x−x0)/L)``. A multiplier that is real and even
      in ``(k_y, k_x)`` keeps the reflected field even, so the periodic layer on the doubled grid
      followed by restriction to the original quadrant equals multiplying the cosine
      coefficients ``a_m`` — computed here by the DCT-II on the ``n × n`` grid without forming
      the doubled field (4× less work). ``dct2(u) / n`` are ``a_m`` times a fixed factor
      (``1`` for ``m = 0``, ``1/√2`` otherwise, per axis), independent of ``n`` (only the kept
      rows ``C[:modes]`` of the DCT matrix are applied: ``C u Cᵀ`` restricted); ``idct2(n v̂)``
      evaluates the series. ``modes`` counts modes of the doubled period: ``m_y, m_x <
      modes``, wavenumbers ``π m / L``, half the physical bandwidth of a periodic layer with
      the same ``modes``. Real ``R``. Needs ``n >= modes``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        modes: int,
        boundary: Boundary,
        generator: torch.Generator,
    ) -> None:
        super().__init__()
        self.modes, self.boundary = modes, boundary
        if boundary == "periodic":  # R(k_y, k_x) as (Re, Im), E|R|² = 1 / C_in
            shape, fan_in = (2 * modes - 1, modes, in_channels, out_channels, 2), 2 * in_channels
        else:
            shape, fan_in = (modes, modes, in_channels, out_channels), in_channels
        weight = torch.randn(shape, generator=generator) / math.sqrt(fan_in)
        self.weight = nn.Parameter(weight)

    def min_resolution(self) -> int:
        """Smallest grid on which every kept mode lies strictly below Nyquist."""
        return 2 * self.modes if self.boundary == "periodic" else self.modes

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.synthesise(modewise(self.analyse(u), self.kernel()), u.shape[-1])

    def kernel(self) -> torch.Tensor:
        """The multiplier ``R``: ``(X, Y, C_in, C_out)``, complex (periodic) or real (neumann)."""
        return torch.view_as_complex(self.weight) if self.boundary == "periodic" else self.weight

    def analyse(self, u: torch.Tensor) -> torch.Tensor:
        """Kept coefficients ``û``: ``(B, C, n, n) -> (B, C, 2m-1, m)`` complex (periodic) or
        ``(B, C, m, m)`` real (neumann, scaled by ``1/n``)."""
        n, m = u.shape[-1], self.modes
        if self.boundary == "neumann":
            c = dct_matrix(n, u.dtype, u.device)[:m]  # the kept rows of the DCT-II: (m, n)
            return c @ u @ c.T / n
        coeff = torch.fft.rfft(u, dim=-1, norm="forward")[..., :m]
        coeff = torch.fft.fft(coeff, dim=-2, norm="forward")  # (B, C_in, n, m)
        return torch.cat([coeff[..., :m, :], coeff[..., n - m + 1 :, :]], dim=-2)

    def synthesise(
        self, out: torch.Tensor, n: int, into: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The field ``(B, C, n, n)`` of kept coefficients ``v̂`` (inverse of :meth:`analyse`,
        zero above the kept modes), written into the contiguous tensor ``into`` if given."""
        m = self.modes
        if self.boundary == "neumann":
            c = dct_matrix(n, out.dtype, out.device)[:m]
            return torch.matmul(c.T @ (out * n), c, out=into)
        zeros = out.new_zeros(*out.shape[:2], n - 2 * m + 1, m)
        out = torch.cat([out[..., :m, :], zeros, out[..., m:, :]], dim=-2)
        out = torch.fft.ifft(out, dim=-2, norm="forward")
        return torch.fft.irfft(out, n=n, dim=-1, norm="forward", out=into)  # zero-pads k_x >= m


class FNO(nn.Module):
    """Time-conditioned FNO score network; see the module docstring for the equations.

    ``width`` channels, ``layers`` Fourier layers keeping ``modes`` modes per direction,
    ``time_dim`` embedding size. Weights are drawn from ``torch.Generator().manual_seed(seed)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        width: int = 32,
        modes: int = 12,
        layers: int = 4,
        boundary: Boundary = "periodic",
        origin: float = -1.0,
        length: float = 2.0,
        time_dim: int = 64,
        seed: int = 0,
    ) -> None:
        super().__init__()
        check_hyper(
            boundary,
            length,
            in_channels=in_channels,
            out_channels=out_channels,
            width=width,
            modes=modes,
            layers=layers,
            time_dim=time_dim,
        )
        g = torch.Generator().manual_seed(seed)
        self.in_channels, self.boundary = in_channels, boundary
        self._workspace: dict[str, tuple] = {}  # buffers of _infer, see _scratch
        self.origin, self.length = origin, length
        n_coords = N_COORDS[boundary]
        self.lift = seeded(Pointwise, in_channels + n_coords, width, generator=g)
        self.time = TimeEmbedding(time_dim, g)
        self.spectral = nn.ModuleList(
            SpectralConv2d(width, width, modes, boundary, g) for _ in range(layers)
        )
        self.skip = nn.ModuleList(
            seeded(Pointwise, width, width, generator=g) for _ in range(layers)
        )
        self.film = nn.ModuleList(FiLM(time_dim, width, g) for _ in range(layers))
        self.project = nn.Sequential(
            seeded(Pointwise, width, 2 * width, generator=g),
            nn.GELU(),
            seeded(Pointwise, 2 * width, out_channels, generator=g),
        )

    @property
    def min_resolution(self) -> int:
        """Smallest supported grid size ``n`` (``2·modes`` periodic, ``modes`` neumann)."""
        return self.spectral[0].min_resolution()

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        check_input(x, t, self.in_channels)
        n = x.shape[-1]
        if n < self.min_resolution:
            modes = self.spectral[0].modes
            raise MldiffError(
                f"FNO: resolution n={n} too small for modes={modes} ({self.boundary}): "
                f"need n >= {self.min_resolution}"
            )
        grid = coordinate_features(n, self.boundary, self.origin, self.length).to(x)
        e = self.time(t)
        if not torch.is_grad_enabled():
            return self._infer(x, grid, e)
        h = self.lift(torch.cat([x, grid.expand(x.shape[0], -1, -1, -1)], dim=1))
        for spectral, skip, film in zip(self.spectral, self.skip, self.film, strict=True):
            h = F.gelu(film(spectral(h) + skip(h), e))
        return self.project(h)

    def chunk_size(self, n: int, dtype: torch.dtype) -> int:
        """Samples per chunk of :meth:`_infer`: the widest activation (the projection's
        ``2·width`` channels) of one chunk fits in :data:`CHUNK_BYTES`."""
        per_sample = self.project[0].out_features * n * n * dtype.itemsize
        return max(1, CHUNK_BYTES // per_sample)

    def _scratch(self, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """A buffer kept across calls while its shape, dtype, device and inference mode stay
        the same (a sampler calls the network hundreds of times with one shape): large blocks
        freshly allocated at every operation cost page faults and zeroing (glibc maps each one
        over 32 MiB from the kernel). Not for concurrent calls of one network from threads."""
        key = (shape, like.dtype, like.device, torch.is_inference_mode_enabled())
        held = self._workspace.get(name)
        if held is None or held[0] != key:
            held = self._workspace[name] = (key, like.new_empty(shape))
        return held[1]

    def _infer(self, x: torch.Tensor, grid: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """The forward pass without autograd, bit-identical to the differentiable one.

        Every large activation lives in a reused buffer (:meth:`_scratch`) and is updated in
        place (skip, ``+=`` spectral part, FiLM, GELU), chunk by chunk of samples
        (:meth:`chunk_size`). Only the mode-wise product (and the time embedding, by the
        caller) couples samples, in batched matrix products whose rounding depends on the batch
        size; they run on the whole batch as in the differentiable pass.
        """
        batch, n, width = x.shape[0], x.shape[-1], self.project[0].in_features
        size = min(batch, self.chunk_size(n, x.dtype))
        chunks = [slice(s, s + size) for s in range(0, batch, size)]
        h, spare = (self._scratch(name, (batch, width, n, n), x) for name in ("h", "spare"))
        synth = self._scratch("synth", (size, width, n, n), x)
        hidden = self._scratch("hidden", (size, 2 * width, n, n), x)
        for c in chunks:
            features = torch.cat([x[c], grid.expand(len(x[c]), -1, -1, -1)], dim=1)
            self.lift(features, out=h[c])
        for spectral, skip, film in zip(self.spectral, self.skip, self.film, strict=True):
            low = modewise(torch.cat([spectral.analyse(h[c]) for c in chunks]), spectral.kernel())
            gain, shift = film.coefficients(e)
            for c in chunks:
                k = skip(h[c], out=spare[c])
                k += spectral.synthesise(low[c], n, into=synth[: len(k)])
                torch.ops.aten.gelu_(torch.addcmul(shift[c], k, gain[c], out=k))
            h, spare = spare, h
        out = x.new_empty(batch, self.project[-1].out_features, n, n)
        for c in chunks:
            wide = self.project[0](h[c], out=hidden[: len(out[c])])
            self.project[2](torch.ops.aten.gelu_(wide), out=out[c])
        return out


def coordinate_features(n: int, boundary: Boundary, origin: float, length: float) -> torch.Tensor:
    """Smooth encoding ``γ`` of the cell-centre coordinates, ``(4, n, n)`` periodic /
    ``(2, n, n)`` neumann, float64, channels ``[y-features…, x-features…]``."""
    xi = cell_centres(n, length, origin)
    phase = (2.0 if boundary == "periodic" else 1.0) * math.pi * (xi - origin) / length
    feats = [phase.cos(), phase.sin()] if boundary == "periodic" else [phase.cos()]
    along_y = [f[:, None].expand(n, n) for f in feats]
    along_x = [f[None, :].expand(n, n) for f in feats]
    return torch.stack(along_y + along_x)


def check_hyper(boundary: str, length: float, **positive: int) -> None:
    """Raise MldiffError for an unknown boundary, ``length <= 0`` or a non-positive size."""
    if boundary not in BOUNDARIES:
        raise MldiffError(f"boundary: expected one of {BOUNDARIES}, got {boundary!r}")
    if length <= 0:
        raise MldiffError(f"length: expected > 0, got {length}")
    for key, value in positive.items():
        if not isinstance(value, int) or value < 1:
            raise MldiffError(f"{key}: expected a positive integer, got {value!r}")


def check_input(x: torch.Tensor, t: torch.Tensor, in_channels: int) -> None:
    """Raise MldiffError unless ``x`` is ``(B, in_channels, n, n)`` and ``t`` is ``(B,)``."""
    if x.ndim != 4 or x.shape[1] != in_channels or x.shape[-1] != x.shape[-2]:
        raise MldiffError(f"x: expected shape (B, {in_channels}, n, n), got {tuple(x.shape)}")
    if t.shape != (x.shape[0],):
        raise MldiffError(f"t: expected shape ({x.shape[0]},), got {tuple(t.shape)}")
