"""Conditioning shared by the score networks: time embedding, FiLM, seeded layers.

The diffusion time ``t ∈ [0, 1]`` enters every layer through FiLM (feature-wise linear
modulation): ``e = MLP(φ(t))`` once per call, then per layer ``h ↦ h ⊙ (1 + γ(e)) + β(e)``
with one scale and shift per channel.

Every layer is drawn from an explicit ``torch.Generator`` (never the global RNG), so a seed
fixes a model's initial weights on its own.
"""

from __future__ import annotations

import math
from typing import TypeVar

import torch
from torch import nn

LayerT = TypeVar("LayerT", bound=nn.Module)


def seeded(cls: type[LayerT], *args: int, generator: torch.Generator, **kwargs: object) -> LayerT:
    """Build ``nn.Linear`` / ``nn.Conv2d`` with PyTorch's default law drawn from ``generator``.

    Weight and bias ``~ U(−1/√fan_in, 1/√fan_in)``; construction never touches the global RNG.
    """
    layer = torch.nn.utils.skip_init(cls, *args, **kwargs)
    bound = 1.0 / math.sqrt(layer.weight[0].numel())
    with torch.no_grad():
        for p in layer.parameters():
            p.uniform_(-bound, bound, generator=generator)
    return layer


class TimeEmbedding(nn.Module):
    """``t (B,) -> e (B, dim)``: sinusoidal features of ``t``, then a two-layer SiLU MLP.

    ``φ(t) = [sin(ω_j t), cos(ω_j t)]_{j<dim/2}`` with angular frequencies ``ω_j`` log-spaced
    in ``[1, max_frequency]``, so both slow and fast changes of the score in ``t`` (it varies
    fastest near ``t = 0``) are easy to represent.
    """

    def __init__(self, dim: int, generator: torch.Generator, max_frequency: float = 1000.0) -> None:
        super().__init__()
        half = dim // 2
        omega = torch.exp(torch.linspace(0.0, math.log(max_frequency), half, dtype=torch.float64))
        self.register_buffer("omega", omega.float())
        self.mlp = nn.Sequential(
            seeded(nn.Linear, 2 * half, dim, generator=generator),
            nn.SiLU(),
            seeded(nn.Linear, dim, dim, generator=generator),
            nn.SiLU(),
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        phase = t[:, None].to(self.omega.dtype) * self.omega
        return self.mlp(torch.cat([phase.sin(), phase.cos()], dim=-1))


class FiLM(nn.Module):
    """``h (B, C, n, n), e (B, D) -> h ⊙ (1 + γ) + β`` with ``(γ, β) = Linear(e)`` per channel."""

    def __init__(self, embed_dim: int, channels: int, generator: torch.Generator) -> None:
        super().__init__()
        self.linear = seeded(nn.Linear, embed_dim, 2 * channels, generator=generator)

    def coefficients(self, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(1 + γ, β)``, each ``(B, C, 1, 1)``."""
        gamma, beta = (p[:, :, None, None] for p in self.linear(e).chunk(2, dim=-1))
        return 1 + gamma, beta

    def forward(self, h: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        gain, shift = self.coefficients(e)
        return torch.addcmul(shift, h, gain)
