"""A small convolutional UNet score network: the resolution-bound baseline.

``net(x, t)``: ``x (B, C_in, n, n)``, ``t (B,)`` -> ``(B, C_out, n, n)`` with ``n == resolution``
only. Its 3×3 kernels have a fixed size in grid cells, so the operator it represents changes
with the grid: it makes no claim of resolution consistency and refuses other sizes.

Levels ``l = 0 … depth-1`` carry ``width · 2^l`` channels at ``n / 2^l`` cells; each level is a
residual block ``h + conv(SiLU(FiLM(conv(SiLU(h)), e(t))))``; 2×2 average pooling down,
nearest-neighbour upsampling and skip concatenation up.

No normalization layers: GroupNorm (per-channel instance normalization at these widths) removes
each sample's spatial mean and amplitude, but the score needs both (for Gaussian data the
optimal output is a per-mode gain times the input, the mean mode included). With it the
default study's UNet had 325× the data's variance at its own 16² grid (mean mode 10⁴×); without
it the same training gives the data's variance (README "Which prior"). Padding follows the boundary:
circular (periodic) or replicate (neumann: the mirror ghost cell of a cell-centred grid).
Inputs are ``[x, coordinate_features]`` as for the FNO.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mldiff.errors import MldiffError
from mldiff.models.embedding import FiLM, TimeEmbedding, seeded
from mldiff.models.fno import N_COORDS, check_hyper, check_input, coordinate_features
from mldiff.spectral import Boundary

PADDING = {"periodic": "circular", "neumann": "replicate"}


class ResBlock(nn.Module):
    """``(B, C_in, n, n), e -> (B, C_out, n, n)``: two SiLU-conv3×3 stages, FiLM between."""

    def __init__(
        self, c_in: int, c_out: int, time_dim: int, padding: str, generator: torch.Generator
    ) -> None:
        super().__init__()
        self.conv1 = seeded(
            nn.Conv2d, c_in, c_out, 3, padding=1, padding_mode=padding, generator=generator
        )
        self.film = FiLM(time_dim, c_out, generator)
        self.conv2 = seeded(
            nn.Conv2d, c_out, c_out, 3, padding=1, padding_mode=padding, generator=generator
        )
        self.shortcut = (
            seeded(nn.Conv2d, c_in, c_out, 1, generator=generator) if c_in != c_out else None
        )

    def forward(self, h: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        z = self.film(self.conv1(F.silu(h)), e)
        z = self.conv2(F.silu(z))
        return z + (h if self.shortcut is None else self.shortcut(h))


class UNet(nn.Module):
    """Time-conditioned UNet for ``resolution × resolution`` grids (``2^(depth-1)`` must divide it).

    Weights are drawn from ``torch.Generator().manual_seed(seed)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        resolution: int,
        width: int = 32,
        depth: int = 3,
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
            resolution=resolution,
            width=width,
            depth=depth,
            time_dim=time_dim,
        )
        if resolution % 2 ** (depth - 1):
            raise MldiffError(
                f"resolution: expected a multiple of 2^(depth-1) = {2 ** (depth - 1)}, "
                f"got {resolution}"
            )
        g = torch.Generator().manual_seed(seed)
        self.in_channels, self.resolution = in_channels, resolution
        self.boundary, self.origin, self.length = boundary, origin, length
        pad = PADDING[boundary]
        chans = [width * 2**level for level in range(depth)]
        self.inp = seeded(
            nn.Conv2d,
            in_channels + N_COORDS[boundary],
            width,
            3,
            padding=1,
            padding_mode=pad,
            generator=g,
        )
        self.time = TimeEmbedding(time_dim, g)
        self.down = nn.ModuleList(
            ResBlock(c_prev, c, time_dim, pad, g)
            for c_prev, c in zip([width, *chans[:-1]], chans, strict=True)
        )
        self.up = nn.ModuleList(
            ResBlock(c + c_skip, c_skip, time_dim, pad, g)
            for c, c_skip in zip(chans[:0:-1], chans[-2::-1], strict=True)
        )
        self.out = seeded(
            nn.Conv2d, width, out_channels, 3, padding=1, padding_mode=pad, generator=g
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        check_input(x, t, self.in_channels)
        if x.shape[-1] != self.resolution:
            raise MldiffError(
                f"UNet: built for resolution {self.resolution}, got n={x.shape[-1]} "
                "(a UNet is resolution-bound; use the FNO to change resolution)"
            )
        grid = coordinate_features(x.shape[-1], self.boundary, self.origin, self.length)
        h = self.inp(torch.cat([x, grid.to(x).expand(x.shape[0], -1, -1, -1)], dim=1))
        e = self.time(t)
        skips = []
        for level, block in enumerate(self.down):
            if level:
                h = F.avg_pool2d(h, 2)
            h = block(h, e)
            skips.append(h)
        for block, skip in zip(self.up, skips[-2::-1], strict=True):
            h = F.interpolate(h, scale_factor=2.0, mode="nearest")
            h = block(torch.cat([h, skip], dim=1), e)
        return self.out(F.silu(h))
