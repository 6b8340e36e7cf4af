"""Function-space score-based diffusion: covariance operators, forward processes, samplers."""

from mldiff.diffusion.priors import (
    PRIORS,
    Combined,
    Laplacian,
    Matern,
    Prior,
    WhiteNoise,
    build_prior,
)
from mldiff.diffusion.processes import (
    PROCESSES,
    VPSDE,
    ForwardProcess,
    GaussianScore,
    build_process,
)
from mldiff.diffusion.samplers import sample_em, sample_ode

__all__ = [
    "PRIORS",
    "PROCESSES",
    "VPSDE",
    "Combined",
    "ForwardProcess",
    "GaussianScore",
    "Laplacian",
    "Matern",
    "Prior",
    "WhiteNoise",
    "build_prior",
    "build_process",
    "sample_em",
    "sample_ode",
]
