"""Reaction–diffusion systems ``∂_t u_s = D_s Δu_s + R_s(u_1, …, u_S)``, one small class each.

A system declares its species, which parameter holds each species' diffusivity, its default
boundary and parameters, and the reaction ``R``; the solver (:mod:`mldiff.pde.etdrk4`) and the
dataset builder (:mod:`mldiff.pde.simulate`) never branch on the system. Adding one::

    import torch
    from mldiff.pde import ReactionDiffusionSystem, register_system

    @register_system("brusselator")
    class Brusselator(ReactionDiffusionSystem):
        \"\"\"u_t = Du Δu + a − (b + 1) u + u² v,   v_t = Dv Δv + b u − u² v.\"\"\"

        species = ("u", "v")
        diffusivity_params = ("Du", "Dv")
        boundary = "periodic"
        defaults = {"Du": 2e-3, "Dv": 1e-2, "a": 1.0, "b": 3.0}

        def reaction(self, u: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
            a, b = self.params["a"], self.params["b"]
            u2v = u * u * v
            return a - (b + 1.0) * u + u2v, b * u - u2v

after which ``simulate_dataset("brusselator", {"b": 3.2}, ...)`` works. ``reaction`` receives one
tensor ``(batch, n, n)`` per species (in ``species`` order, working dtype and device) and returns
one rate tensor per species of the same shape. Override
:meth:`ReactionDiffusionSystem.initial_condition` for another random initial condition (the
default is N(0, 1) white noise per cell) and set ``presets`` for named parameter sets.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import numpy as np
import torch

from mldiff.errors import MldiffError
from mldiff.spectral import BOUNDARIES, cell_centres


class ReactionDiffusionSystem:
    """Base class: ``∂_t u_s = D_s Δu_s + R_s(u)``, ``s = 1 … S``, on the square ``[x0, x0 + L]²``.

    Subclasses set the class attributes and implement :meth:`reaction`. An instance holds the
    resolved parameters ``params``: ``defaults``, then the named ``preset`` (``default_preset``
    unless a preset key is given explicitly), then the explicit values. Unknown names, non-finite
    values, negative diffusivities and a preset given together with its own keys raise
    :class:`~mldiff.errors.MldiffError`.
    """

    name: ClassVar[str] = ""
    species: ClassVar[tuple[str, ...]] = ()
    diffusivity_params: ClassVar[tuple[str, ...]] = ()
    boundary: ClassVar[str] = "periodic"
    defaults: ClassVar[Mapping[str, float]] = {}
    presets: ClassVar[Mapping[str, Mapping[str, float]]] = {}
    default_preset: ClassVar[str | None] = None
    long_names: ClassVar[Mapping[str, str]] = {}

    def __init__(self, parameters: Mapping[str, Any] | None = None) -> None:
        given = dict(parameters or {})
        label = f"pde parameters of {self.name or type(self).__name__!r}"
        preset = given.pop("preset", None)
        if preset is not None and preset not in self.presets:
            raise MldiffError(
                f"{label}: preset must be one of {sorted(self.presets)}, got {preset!r}"
            )
        unknown = sorted(set(given) - set(self.defaults))
        if unknown:
            allowed = sorted(self.defaults) + (["preset"] if self.presets else [])
            raise MldiffError(f"{label}: unknown name(s) {unknown}; expected some of {allowed}")
        if preset is not None:
            clash = sorted(set(given) & set(self.presets[preset]))
            if clash:
                raise MldiffError(f"{label}: give either preset={preset!r} or {clash}, not both")
        elif not set(given) & {k for p in self.presets.values() for k in p}:
            preset = self.default_preset
        self.preset: str | None = preset
        params = {**self.defaults, **(self.presets[preset] if preset else {}), **given}
        for key, value in params.items():
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise MldiffError(f"{label}: {key} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise MldiffError(f"{label}: {key} must be finite, got {value!r}")
        for key in self.diffusivity_params:
            if params[key] < 0:
                raise MldiffError(f"{label}: diffusivity {key} must be >= 0, got {params[key]}")
        self.params: dict[str, float] = {k: float(v) for k, v in params.items()}

    @property
    def diffusivities(self) -> tuple[float, ...]:
        """``(D_1, …, D_S)`` in species order."""
        return tuple(self.params[key] for key in self.diffusivity_params)

    def reaction(self, *fields: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Rates ``R_s(u_1, …, u_S)``: one ``(batch, n, n)`` tensor in and out per species."""
        raise NotImplementedError

    def initial_condition(
        self, n: int, seed: int, length: float = 2.0, origin: float = -1.0
    ) -> np.ndarray:
        """Initial state ``(S, n, n)`` float64 indexed ``[species, y, x]`` for one sample.

        Default (PDEBench): ``rng = numpy.random.default_rng(seed)``, then for each species in
        order ``rng.standard_normal(n * n).reshape(n, n)`` (row-major ``(y, x)``).
        """
        rng = np.random.default_rng(seed)
        return np.stack([rng.standard_normal(n * n).reshape(n, n) for _ in self.species])


SYSTEMS: dict[str, type[ReactionDiffusionSystem]] = {}


def register_system(
    name: str,
) -> Callable[[type[ReactionDiffusionSystem]], type[ReactionDiffusionSystem]]:
    """Class decorator adding a :class:`ReactionDiffusionSystem` subclass to :data:`SYSTEMS`."""

    def add(cls: type[ReactionDiffusionSystem]) -> type[ReactionDiffusionSystem]:
        if name in SYSTEMS:
            raise MldiffError(f"register_system: name {name!r} is already taken")
        if not cls.species or len(cls.diffusivity_params) != len(cls.species):
            raise MldiffError(f"{cls.__name__}: needs one diffusivity_params entry per species")
        if not set(cls.diffusivity_params) <= set(cls.defaults):
            raise MldiffError(f"{cls.__name__}: diffusivity_params must be keys of defaults")
        if cls.boundary not in BOUNDARIES:
            raise MldiffError(f"{cls.__name__}: boundary must be one of {BOUNDARIES}")
        cls.name = name
        SYSTEMS[name] = cls
        return cls

    return add


def get_system(name: str, parameters: Mapping[str, Any] | None = None) -> ReactionDiffusionSystem:
    """The registered system ``name`` with ``parameters`` overriding its defaults."""
    if name not in SYSTEMS:
        raise MldiffError(f"pde system: expected one of {sorted(SYSTEMS)}, got {name!r}")
    return SYSTEMS[name](parameters)


@register_system("fitzhugh_nagumo")
class FitzHughNagumo(ReactionDiffusionSystem):
    """PDEBench's 2D diffusion–reaction data::

        u_t = Du Δu + u − u³ − k − v,    v_t = Dv Δv + u − v,

    Du = 1e-3, Dv = 5e-3, k = 5e-3, no-flux boundaries, N(0, 1) white-noise initial condition.
    """

    species = ("u", "v")
    diffusivity_params = ("Du", "Dv")
    boundary = "neumann"
    defaults = {"Du": 1e-3, "Dv": 5e-3, "k": 5e-3}
    long_names = {"u": "activator u", "v": "inhibitor v"}

    def reaction(self, u: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return u - u * u * u - self.params["k"] - v, u - v


@register_system("gray_scott")
class GrayScott(ReactionDiffusionSystem):
    """The Well's Gray–Scott data::

        A_t = δA ΔA − A B² + f (1 − A),    B_t = δB ΔB + A B² − (f + k) B,

    δA = 2e-5, δB = 1e-5, periodic; (f, k) from a named ``preset`` (default ``gliders``) or
    given explicitly as ``f`` and ``k``.
    """

    species = ("A", "B")
    diffusivity_params = ("delta_A", "delta_B")
    boundary = "periodic"
    defaults = {"delta_A": 2e-5, "delta_B": 1e-5, "f": 0.014, "k": 0.054}
    presets = {
        "gliders": {"f": 0.014, "k": 0.054},
        "bubbles": {"f": 0.098, "k": 0.057},
        "maze": {"f": 0.029, "k": 0.057},
        "worms": {"f": 0.058, "k": 0.065},
        "spirals": {"f": 0.018, "k": 0.051},
        "spots": {"f": 0.03, "k": 0.062},
    }
    default_preset = "gliders"
    long_names = {"A": "concentration of A", "B": "concentration of B"}

    def reaction(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, ...]:
        f, k = self.params["f"], self.params["k"]
        ab2 = a * b * b
        return f * (1.0 - a) - ab2, ab2 - (f + k) * b

    def initial_condition(
        self, n: int, seed: int, length: float = 2.0, origin: float = -1.0
    ) -> np.ndarray:
        """Pearson-style seeds: ``A = 1, B = 0`` except in random squares where ``A = B = ½``.

        ``rng = numpy.random.default_rng(seed)`` draws the number of squares (4 to 12), then
        for each its centre (uniform on the domain) and side (uniform in ``[0.05 L, 0.15 L]``).
        Squares wrap around periodically and are defined in physical coordinates, so the same
        seed gives the same function at every resolution ``n`` (a cell belongs to a square when
        its centre does). ``B = ½`` (rather than Pearson's ¼) lies above the B-rich state
        ``B ≈ 0.36`` of the ``bubbles`` regime, so that preset does not decay to ``A = 1, B = 0``.
        """
        rng = np.random.default_rng(seed)
        count = int(rng.integers(4, 13))
        centres = origin + length * rng.random((count, 2))
        sides = length * rng.uniform(0.05, 0.15, count)
        x = cell_centres(n, length, origin).numpy()
        inside = np.zeros((n, n), dtype=bool)
        for (cy, cx), side in zip(centres, sides, strict=True):
            dy = np.abs((x - cy + length / 2) % length - length / 2)
            dx = np.abs((x - cx + length / 2) % length - length / 2)
            inside |= (dy[:, None] < side / 2) & (dx[None, :] < side / 2)
        return np.stack([np.where(inside, 0.5, 1.0), np.where(inside, 0.5, 0.0)])
