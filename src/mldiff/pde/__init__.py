"""Reaction–diffusion simulators: systems, the batched ETDRK4 solver, dataset simulation."""

from mldiff.pde.etdrk4 import (
    ETDRK4,
    ETDRK4Coefficients,
    clear_coefficient_cache,
    coefficient_cache_info,
    etdrk4_coefficients,
    step_schedule,
)
from mldiff.pde.simulate import (
    TIGHT,
    estimate_step_error,
    resolve_dt0,
    simulate_dataset,
    solve,
)
from mldiff.pde.systems import (
    SYSTEMS,
    FitzHughNagumo,
    GrayScott,
    ReactionDiffusionSystem,
    get_system,
    register_system,
)

__all__ = [
    "ETDRK4",
    "ETDRK4Coefficients",
    "SYSTEMS",
    "TIGHT",
    "clear_coefficient_cache",
    "coefficient_cache_info",
    "FitzHughNagumo",
    "GrayScott",
    "ReactionDiffusionSystem",
    "estimate_step_error",
    "etdrk4_coefficients",
    "get_system",
    "register_system",
    "resolve_dt0",
    "simulate_dataset",
    "solve",
    "step_schedule",
]
