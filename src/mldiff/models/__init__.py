"""Score networks ``net(x, t)``: ``x (B, C_in, n, n)``, ``t (B,)`` -> ``(B, C_out, n, n)``.

``fno``: Fourier neural operator, evaluable at any ``n >= min_resolution`` with the same
weights. ``unet``: convolutional baseline bound to the ``resolution`` it was built for.
"""

from __future__ import annotations

import inspect
import math

import torch
from torch import nn

from mldiff.errors import MldiffError
from mldiff.models.fno import FNO, Pointwise, SpectralConv2d
from mldiff.models.unet import UNet

MODELS: dict[str, type[nn.Module]] = {"fno": FNO, "unet": UNet}

__all__ = [
    "FNO",
    "MODELS",
    "UNet",
    "build_model",
    "count_parameters",
    "estimate_flops",
    "hyperparameters",
]


def hyperparameters(name: str) -> dict[str, object]:
    """Keyword hyperparameters of model ``name`` with defaults (``Parameter.empty``: required)."""
    if name not in MODELS:
        raise MldiffError(f"model: unknown name {name!r}; expected one of {sorted(MODELS)}")
    params = inspect.signature(MODELS[name]).parameters.values()
    return {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY}


def build_model(name: str, in_channels: int, out_channels: int, **hyper: object) -> nn.Module:
    """Build score network ``name`` ("fno" or "unet") from validated hyperparameters."""
    allowed = hyperparameters(name)
    for key in hyper:
        if key not in allowed:
            raise MldiffError(
                f"{name}: unknown hyperparameter {key!r}; expected one of {sorted(allowed)}"
            )
    missing = [k for k, v in allowed.items() if v is inspect.Parameter.empty and k not in hyper]
    if missing:
        raise MldiffError(f"{name}: missing hyperparameter {missing[0]!r}")
    return MODELS[name](in_channels, out_channels, **hyper)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable real scalars (a complex weight counts twice)."""
    return sum(
        p.numel() * (2 if p.is_complex() else 1) for p in model.parameters() if p.requires_grad
    )


def estimate_flops(model: nn.Module, n: int) -> int:
    """Rough forward FLOPs for one sample at resolution ``n``.

    Counted on one traced forward pass: ``2 · weights · outputs`` for every convolution and
    linear layer; per :class:`SpectralConv2d`, forward + inverse transform of each channel at
    ``5 N log2 N`` with ``N = n²``, plus the mode-wise multiply (8 FLOPs per complex, 2 per
    real multiply-add). Normalizations and activations are ignored.
    """
    total = 0

    def count(module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, Pointwise):
            total += 2 * module.weight.numel() * out[0, 0].numel()
        elif isinstance(module, nn.Conv2d):
            total += 2 * module.weight.numel() * out.shape[-2] * out.shape[-1]
        elif isinstance(module, nn.Linear):
            total += 2 * module.weight.numel() * out.shape[:-1].numel()
        elif isinstance(module, SpectralConv2d):
            size = out.shape[-2] * out.shape[-1]
            fft = 5 * size * math.log2(size)
            per_scalar = 4 if module.boundary == "periodic" else 2  # weights stored as reals
            total += int(fft * (args[0].shape[1] + out.shape[1]))
            total += per_scalar * module.weight.numel()

    handles = [m.register_forward_hook(count) for m in model.modules()]
    try:
        p = next(model.parameters())
        x = torch.zeros(1, model.in_channels, n, n, dtype=p.dtype, device=p.device)
        with torch.enable_grad():  # the plain layer-by-layer pass (FNO chunks without autograd)
            model(x, torch.zeros(1, dtype=p.dtype, device=p.device))
    finally:
        for h in handles:
            h.remove()
    return total
