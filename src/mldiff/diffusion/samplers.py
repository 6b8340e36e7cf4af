"""Samplers: integrate a process's reverse dynamics from ``t_max`` to ``t_min``.

Both call only the :class:`~mldiff.diffusion.processes.ForwardProcess` interface, on the
process's time grid ``t_0 = t_max > t_1 > … > t_N = t_min`` (``h_i = t_i − t_{i+1}``). The step
from ``t_i`` to ``t_{i+1}`` runs on the grid ``grid_size(t_{i+1}, n)``; when that differs from the
current one the state is first moved by ``resize(y, t_i, t_{i+1})``. The network is called as
``net(y, t)`` with ``t`` of shape ``(B,)``. Sampling runs in ``torch.inference_mode``; a
non-finite state raises :class:`MldiffError`.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from mldiff.diffusion.priors import check_grid
from mldiff.diffusion.processes import ForwardProcess, Net
from mldiff.errors import MldiffError


def _start(
    process: ForwardProcess,
    batch: int,
    channels: int,
    n: int,
    steps: int,
    generator: torch.Generator,
    dtype: torch.dtype,
) -> tuple[list[float], torch.Tensor]:
    """Validated time grid and a draw from the terminal law on the grid at ``t_max``."""
    for name, value in (("batch", batch), ("channels", channels), ("steps", steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise MldiffError(f"{name}: expected a positive integer, got {value!r}")
    times = process.time_grid(steps).tolist()
    y = process.prior_sample(
        batch, channels, process.grid_size(times[0], check_grid(n)), generator, dtype
    )
    return times, y


def _regrid(
    process: ForwardProcess,
    y: torch.Tensor,
    t_from: float,
    t_to: float,
    n: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """The state on the grid of the step ending at ``t_to``."""
    if y.shape[-1] != process.grid_size(t_to, n):
        y = process.resize(y, t_from, t_to, generator)
    return y


def _checked(y: torch.Tensor, step: int, t: float) -> torch.Tensor:
    if not bool(torch.isfinite(y).all()):
        raise MldiffError(
            f"sampler diverged at step {step}, t={t:.4g}; try more steps / check the model"
        )
    return y


@torch.inference_mode()
def sample_em(
    process: ForwardProcess,
    net: Net,
    batch: int,
    channels: int,
    n: int,
    steps: int,
    generator: torch.Generator,
    progress: bool = True,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Euler–Maruyama on the reverse SDE ``dy = [f − G Gᵀ ∇log p_t] dt + G dW̄``::

        y_{i+1} = y_i − h_i · reverse_drift(y_i, t_i, net(y_i, t_i)) + √h_i · G(t_i) z_i,

    ``z_i ~ N(0, I)``. The last step adds no noise: the result is the mean of the final
    transition (as in Song et al. 2021). Returns ``output(y_N)``, ``(batch, channels, n, n)``
    on the generator's device.
    """
    times, y = _start(process, batch, channels, n, steps, generator, dtype)
    for i in tqdm(range(steps), desc="sample_em", disable=not progress):
        t, t_next = times[i], times[i + 1]
        y = _regrid(process, y, t, t_next, n, generator)
        h, t_batch = t - t_next, y.new_full((batch,), t)
        y = y - h * process.reverse_drift(y, t_batch, net(y, t_batch))
        if i < steps - 1:
            z = torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
            y = y + h**0.5 * process.diffusion_apply(z, t_batch)
        y = _checked(y, i + 1, t_next)
    return process.output(y)


@torch.inference_mode()
def sample_ode(
    process: ForwardProcess,
    net: Net,
    batch: int,
    channels: int,
    n: int,
    steps: int,
    generator: torch.Generator,
    progress: bool = True,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Heun's method (2nd order, two network calls per step) on the probability-flow ODE
    ``dy/dt = v(y, t) = f − ½ G Gᵀ ∇log p_t``::

        d_i = v(y_i, t_i),   ỹ = y_i − h_i d_i,   y_{i+1} = y_i − ½ h_i (d_i + v(ỹ, t_{i+1})).

    Deterministic given the terminal draw (the generator only seeds it and any noise a
    ``resize`` injects). Returns ``output(y_N)``, ``(batch, channels, n, n)``.
    """
    times, y = _start(process, batch, channels, n, steps, generator, dtype)

    def velocity(y: torch.Tensor, t: float) -> torch.Tensor:
        t_batch = y.new_full((batch,), t)
        return process.probability_flow_drift(y, t_batch, net(y, t_batch))

    for i in tqdm(range(steps), desc="sample_ode", disable=not progress):
        t, t_next = times[i], times[i + 1]
        y = _regrid(process, y, t, t_next, n, generator)
        h = t - t_next
        d = velocity(y, t)
        d_next = velocity(_checked(y - h * d, i + 1, t_next), t_next)
        y = _checked(y - 0.5 * h * (d + d_next), i + 1, t_next)
    return process.output(y)
