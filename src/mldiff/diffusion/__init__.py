"""Function-space score-based diffusion: covariance operators, forward processes, samplers."""

from mldiff.diffusion.dimvarying import (
    DimVaryingGaussianScore,
    DimVaryingVP,
    StageNetworks,
    switch_times_from_data,
)
from mldiff.diffusion.elbo import elbo, elbo_report, gaussian_log_likelihood
from mldiff.diffusion.multivariate import (
    ALDA,
    CLD,
    MALDA,
    JointGaussianScore,
    LearnedProcess,
    LinearProcess,
    as_linear,
)
from mldiff.diffusion.priors import (
    PRIORS,
    Combined,
    Fitted,
    Laplacian,
    Matern,
    Prior,
    WhiteNoise,
    build_prior,
    fit_prior_spec,
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
    "ALDA",
    "CLD",
    "MALDA",
    "PRIORS",
    "PROCESSES",
    "VPSDE",
    "Combined",
    "DimVaryingGaussianScore",
    "DimVaryingVP",
    "Fitted",
    "ForwardProcess",
    "GaussianScore",
    "JointGaussianScore",
    "Laplacian",
    "LearnedProcess",
    "LinearProcess",
    "Matern",
    "Prior",
    "StageNetworks",
    "WhiteNoise",
    "as_linear",
    "build_prior",
    "build_process",
    "elbo",
    "fit_prior_spec",
    "elbo_report",
    "gaussian_log_likelihood",
    "sample_em",
    "sample_ode",
    "switch_times_from_data",
]
