"""The params model: one source of truth for validating ``params.yaml``.

``load_params(path)`` reads YAML with a bounded strict loader (see :func:`read_yaml`: YAML 1.2
core scalars, no duplicate keys, no alias bombs), validates every key with strict types (no
``yes`` for 1, no ``"5"`` for 5, finite floats only) and returns a frozen :class:`Params`. Any
problem raises :class:`~mldiff.errors.MldiffError` with one line naming the file, the dotted
key and what was expected (unknown keys get a did-you-mean).
The Snakemake schema in ``workflow/schemas/params.schema.json`` is generated from this model
(``mldiff schema``), and a test checks that the two agree.
"""

from __future__ import annotations

import difflib
import importlib
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mldiff.errors import MldiffError

PRESETS_DIR = Path(__file__).resolve().parents[2] / "workflow" / "presets"

PosInt = Annotated[int, Field(ge=1)]
Count = Annotated[int, Field(ge=1, le=10**7)]  # sizes that are allocated: bounded up front
# Names of the evaluation's reference rows (``evaluate.matrix``): no run may take one.
RESERVED_RUN_NAMES = ("reference", "heldout_test", "heldout_vs_train")
RESERVED_RUN_PREFIXES = ("prior_", "naive_upsampling_")
MAX_NAME = 64
PosFloat = Annotated[float, Field(gt=0)]


def _is_power_of_two(n: int) -> bool:
    return n >= 1 and (n & (n - 1)) == 0


def _distinct_powers_of_two(values: list[int]) -> list[int]:
    bad = [n for n in values if not _is_power_of_two(n)]
    if bad:
        raise ValueError(f"expected powers of two, got {bad}")
    if len(set(values)) != len(values):
        raise ValueError(f"expected distinct values, got {values}")
    return values


class Section(BaseModel):
    """Base of every params section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class SolverParams(Section):
    """Time stepping of the ETDRK4 solver (see :mod:`mldiff.pde.etdrk4`): the first step
    ``dt0`` (None: ``min(dt_max, 0.02, 0.4 h²/max D)``) doubles every ``ramp_steps`` steps up
    to ``dt_max``, landing exactly on the save times."""

    dt_max: PosFloat = 0.5
    dt0: PosFloat | None = None
    ramp_steps: Annotated[int, Field(ge=1)] = 2

    @model_validator(mode="after")
    def _ordered(self) -> SolverParams:
        if self.dt0 is not None and self.dt0 > self.dt_max:
            raise ValueError(f"dt0 ({self.dt0}) must not exceed dt_max ({self.dt_max})")
        return self


class PdeParams(Section):
    """The reaction-diffusion simulation that produces the raw dataset."""

    system: str = "fitzhugh_nagumo"
    imports: list[str] = []
    parameters: dict[str, float | str] = {}
    boundary: Literal["periodic", "neumann"] | None = None
    laplacian: Literal["spectral", "finite_volume"] = "finite_volume"
    n: Annotated[int, Field(ge=8, le=4096)] = 64
    length: PosFloat = 2.0
    origin: float = -1.0
    times: Annotated[list[Annotated[float, Field(ge=0)]], Field(min_length=1)] = [2.5]
    n_samples: Count = 640
    batch_size: Count = 64
    solver: SolverParams = Field(default_factory=SolverParams)
    dtype: Literal["float32", "float64"] = "float64"
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @field_validator("solver", mode="before")
    @classmethod
    def _named_solver(cls, value: Any) -> Any:
        """``solver: tight`` names the documented accurate setting :data:`mldiff.pde.TIGHT`."""
        if value == "tight":
            from mldiff.pde import TIGHT

            return SolverParams(**TIGHT)
        if isinstance(value, str):
            raise ValueError(f"expected the name 'tight' or a mapping of "
                             f"{list(SolverParams.model_fields)}, got {value!r}")
        return value

    @field_validator("n")
    @classmethod
    def _n_power_of_two(cls, n: int) -> int:
        if not _is_power_of_two(n):
            raise ValueError(f"expected a power of two (e.g. 64, 128), got {n}")
        return n

    @field_validator("times")
    @classmethod
    def _times_increasing(cls, times: list[float]) -> list[float]:
        if any(b <= a for a, b in zip(times, times[1:], strict=False)):
            raise ValueError(f"expected strictly increasing times, got {times}")
        return times

    @model_validator(mode="after")
    def _system_known(self) -> PdeParams:
        from mldiff.pde import get_system

        if self.imports and os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())  # the run directory, as for `python -m`
        for module in self.imports:  # user modules that register their own systems
            try:
                importlib.import_module(module)
            except ImportError as exc:
                raise ValueError(f"imports: cannot import {module!r} ({exc})") from None
        get_system(self.system, self.parameters)  # raises MldiffError naming the problem
        return self

    def solver_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`mldiff.pde.simulate_dataset` besides the system, grid,
        times, samples and seed: geometry, batching, dtype, device and the step settings."""
        return {"length": self.length, "origin": self.origin, "boundary": self.boundary,
                "laplacian": self.laplacian, "batch_size": self.batch_size, "dtype": self.dtype,
                "device": self.device, **self.solver.model_dump()}


class SourceDims(Section):
    sample: str
    y: str
    x: str


class SourceTime(Section):
    """Which snapshot of a file with a time axis (``dim``, default ``time``): by ``index`` or
    by ``value`` (not both)."""

    dim: str | None = None
    index: int | None = None
    value: float | None = None

    @model_validator(mode="after")
    def _one_of(self) -> SourceTime:
        if (self.index is None) == (self.value is None):
            raise ValueError("give exactly one of 'index' or 'value'")
        return self


class SourceParams(Section):
    """A scientist's own NetCDF/zarr/HDF5 file, described by configuration alone."""

    path: str
    variables: Annotated[list[str], Field(min_length=1)] | None = None  # None: every variable
    # over the sample, y and x dims (checked against store.species when the file is imported)
    dims: SourceDims
    time: SourceTime | None = None
    boundary: Literal["periodic", "neumann"] | None = None  # None: the file's attr, else neumann
    length: PosFloat | None = None
    drop_constant: bool = False  # members constant in every variable: refused, or dropped


class DataParams(Section):
    """Where the raw fields come from: the PDE simulation (default) or ``source``."""

    source: SourceParams | None = None


class SplitParams(Section):
    train: Annotated[float, Field(gt=0, le=1)] = 0.7
    validation: Annotated[float, Field(ge=0, lt=1)] = 0.1
    test: Annotated[float, Field(ge=0, lt=1)] = 0.2

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitParams:
        total = self.train + self.validation + self.test
        if not math.isclose(total, 1.0, abs_tol=1e-9):
            raise ValueError(f"train + validation + test must be 1, got {total:g}")
        return self


class StoreParams(Section):
    """The multiresolution store: which snapshot and species, which levels, how to coarsen."""

    species: Annotated[list[str], Field(min_length=1)] = ["u"]
    time: float | None = 2.5
    levels: Annotated[list[int], Field(min_length=1)] = [8, 16, 32, 64]
    method: Literal["average", "spectral"] = "average"
    split: SplitParams = Field(default_factory=SplitParams)
    seed: Annotated[int, Field(ge=0)] = 0

    @field_validator("levels")
    @classmethod
    def _levels_valid(cls, levels: list[int]) -> list[int]:
        bad = [n for n in levels if not _is_power_of_two(n) or n < 4]
        if bad:
            raise ValueError(f"expected powers of two >= 4, got {bad}")
        if any(b <= a for a, b in zip(levels, levels[1:], strict=False)):
            raise ValueError(f"expected strictly increasing levels, got {levels}")
        return levels


class ProcessParams(Section):
    """The forward process (``mldiff.diffusion.PROCESSES``) and its schedule."""

    process: str = "vp"
    beta_min: PosFloat = 0.1
    beta_max: PosFloat = 20.0
    t_min: Annotated[float, Field(gt=0, lt=0.5)] = 1e-3
    options: dict[str, Any] = {}

    @model_validator(mode="after")
    def _known(self) -> ProcessParams:
        from mldiff.diffusion import build_prior, build_process

        if self.beta_max < self.beta_min:
            raise ValueError(f"beta_max ({self.beta_max}) must be >= beta_min ({self.beta_min})")
        build_process(self.process, build_prior("white"), "periodic", **self.kwargs())
        return self

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``build_process`` besides the name, prior and boundary.

        ``switch_times: auto`` (dimensionality-varying diffusion) is chosen from the training
        data by ``mldiff train``; until then evenly spaced times stand in (validation and grid
        sizes do not depend on them).
        """
        options = dict(self.options)
        factors = options.get("factors", [2, 4])
        if options.get("switch_times") == "auto" and isinstance(factors, list):
            options["switch_times"] = [(k + 1) / (len(factors) + 1) for k in range(len(factors))]
        return {"beta_min": self.beta_min, "beta_max": self.beta_max, "t_min": self.t_min,
                **options}


class PriorSpec(Section):
    """A noise covariance Q: a name in ``mldiff.diffusion.PRIORS`` and its parameters."""

    name: str
    params: dict[str, float] = {}

    @model_validator(mode="after")
    def _buildable(self) -> PriorSpec:
        from mldiff.diffusion import build_prior

        build_prior(self.name, **self.params)
        return self


class NetworkSpec(Section):
    """A score network: ``arch`` in ``mldiff.models.MODELS`` and its hyperparameters."""

    arch: str
    params: dict[str, int | float] = {}

    @model_validator(mode="after")
    def _known(self) -> NetworkSpec:
        from mldiff.models import hyperparameters

        allowed = hyperparameters(self.arch)
        reserved = {"boundary", "origin", "length", "resolution"}
        unknown = sorted(set(self.params) - (set(allowed) - reserved))
        if unknown:
            raise ValueError(
                f"unknown {self.arch} hyperparameter(s) {unknown}; expected one of "
                f"{sorted(set(allowed) - reserved)} (grid and boundary come from the store)"
            )
        for key, value in self.params.items():  # integers (sizes, counts, seeds) as the
            if isinstance(allowed[key], int):   # network's own defaults are: bounded
                low, high = (0, INT64) if key == "seed" else (1, 4096)
                if not (isinstance(value, int) and low <= value <= high):
                    raise ValueError(f"params.{key}: expected an integer from {low} to {high}, "
                                     f"got {value!r}")
        return self


class RunSpec(Section):
    """One trained model: a network, a prior and a schedule of ``[level, steps]`` stages
    (one stage: per-level training; several: multilevel, warm-started coarse to fine)."""

    network: str
    prior: str
    schedule: Annotated[list[tuple[Annotated[int, Field(ge=4)], PosInt]], Field(min_length=1)]

    @field_validator("schedule")
    @classmethod
    def _coarse_to_fine(cls, schedule: list[tuple[int, int]]) -> list[tuple[int, int]]:
        levels = [level for level, _ in schedule]
        if any(b <= a for a, b in zip(levels, levels[1:], strict=False)):
            raise ValueError(f"expected strictly increasing levels, got {levels}")
        return schedule


class TrainParams(Section):
    """Optimization settings shared by every run, and the runs themselves."""

    batch_size: Count = 16
    lr: PosFloat = 1e-3
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    warmup_steps: Annotated[int, Field(ge=0)] = 20
    min_lr_ratio: Annotated[float, Field(ge=0, le=1)] = 0.1
    ema_decay: Annotated[float, Field(ge=0, lt=1)] = 0.99
    grad_clip: PosFloat = 1.0
    checkpoint_every: PosInt = 500
    validate_every: PosInt = 250
    validation_times: Count = 8
    elbo_times: Annotated[int, Field(ge=0, le=10**7)] = 16
    bf16: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    processes: Annotated[int, Field(ge=1, le=64)] = 1
    seed: Annotated[int, Field(ge=0)] = 0
    runs: Annotated[dict[str, RunSpec], Field(min_length=1)] = Field(
        default_factory=lambda: {
            **{f"fno_matern_l{n}": RunSpec(network="fno", prior="matern", schedule=[(n, 1500)])
               for n in (8, 16, 32)},
            "fno_matern_multilevel": RunSpec(
                network="fno", prior="matern", schedule=[(8, 1000), (16, 500)]
            ),
            "fno_white_l16": RunSpec(network="fno", prior="white", schedule=[(16, 1500)]),
            "unet_matern_l16": RunSpec(network="unet", prior="fitted", schedule=[(16, 1500)]),
        }
    )

    @field_validator("runs")
    @classmethod
    def _names(cls, runs: dict[str, RunSpec]) -> dict[str, RunSpec]:
        bad = [name for name in runs if not re.fullmatch(rf"[A-Za-z0-9_]{{1,{MAX_NAME}}}", name)]
        if bad:
            raise ValueError(f"run names must be 1 to {MAX_NAME} letters, digits and '_', got "
                             f"{[b[:MAX_NAME] + '...' if len(b) > MAX_NAME else b for b in bad]}")
        reserved = [name for name in runs if name in RESERVED_RUN_NAMES
                    or name.startswith(RESERVED_RUN_PREFIXES)]
        if reserved:
            raise ValueError(f"run names {reserved} are reserved for the evaluation's reference "
                             f"rows ({', '.join(RESERVED_RUN_NAMES)}, "
                             f"{', '.join(p + '*' for p in RESERVED_RUN_PREFIXES)})")
        return runs


class SampleParams(Section):
    """Sampling every trained run at several resolutions."""

    sampler: Literal["em", "ode"] = "em"
    steps: Count = 50
    n_samples: Annotated[int, Field(ge=2, le=10**7)] = 100  # metrics need two samples
    batch_size: Count = 25
    resolutions: Annotated[list[Annotated[int, Field(ge=4)]], Field(min_length=1)] = [
        8, 16, 32, 64, 128
    ]
    seed: Annotated[int, Field(ge=0)] = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"

    _powers = field_validator("resolutions")(_distinct_powers_of_two)


class EvaluateParams(Section):
    """Cross-resolution evaluation: bootstrap and permutation counts, seed, the verdicts' test
    level (family-wise, Holm-corrected per model), and how many fields figures show."""

    n_boot: Annotated[int, Field(ge=0, le=10**7)] = 200
    n_permutations: Annotated[int, Field(ge=19, le=10**6)] = 999
    alpha: Annotated[float, Field(gt=0, lt=1)] = 0.05
    seed: Annotated[int, Field(ge=0)] = 0
    samples_shown: Annotated[int, Field(ge=1, le=16)] = 4


class ReferenceParams(Section):
    """Reference data simulated directly on grids finer than the store (simulated PDE only).

    For each of ``resolutions`` the ``reference`` step re-simulates the store's test split and
    the first ``train_samples`` of its training split, every sample from its own initial
    condition drawn on ``pde.n`` cells and held piecewise constant: the same functions, solved
    on a finer grid (see :mod:`mldiff.datasets.reference`). Evaluation compares samples at
    these grids with them instead of restricting the samples to the finest store level.
    """

    resolutions: list[Annotated[int, Field(le=4096)]] = [128]
    train_samples: Count = 100

    _powers = field_validator("resolutions")(_distinct_powers_of_two)


class Params(Section):
    """All of ``params.yaml``."""

    seed: Annotated[int, Field(ge=0)] = 0
    pde: PdeParams = Field(default_factory=PdeParams)
    data: DataParams = Field(default_factory=DataParams)
    store: StoreParams = Field(default_factory=StoreParams)
    diffusion: ProcessParams = Field(default_factory=ProcessParams)
    priors: Annotated[dict[str, PriorSpec], Field(min_length=1)] = Field(
        default_factory=lambda: {
            "matern": PriorSpec(name="matern", params={"gamma": 1.5}),
            "white": PriorSpec(name="white"),
            "fitted": PriorSpec(name="fitted", params={"margin": 0.25}),
        }
    )
    networks: Annotated[dict[str, NetworkSpec], Field(min_length=1)] = Field(
        default_factory=lambda: {
            "fno": NetworkSpec(arch="fno", params={"width": 16, "modes": 6, "layers": 3}),
            "unet": NetworkSpec(arch="unet", params={"width": 8, "depth": 2}),
        }
    )
    train: TrainParams = Field(default_factory=TrainParams)
    sample: SampleParams = Field(default_factory=SampleParams)
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams)
    reference: ReferenceParams = Field(default_factory=ReferenceParams)

    @model_validator(mode="after")
    def _consistent(self) -> Params:
        source = self.data.source
        if source is not None:
            absent = [s for s in self.store.species if s not in (source.variables or [s])]
            if absent:
                raise ValueError(
                    f"store.species: {absent} are not among data.source.variables "
                    f"{source.variables}"
                )
        else:
            finest = self.store.levels[-1]
            if finest > self.pde.n:
                raise ValueError(
                    f"store.levels: finest level {finest} exceeds the simulation grid pde.n = "
                    f"{self.pde.n}"
                )
            if self.store.time is None or not any(
                math.isclose(self.store.time, t) for t in self.pde.times
            ):
                raise ValueError(
                    f"store.time: {self.store.time} is not one of the saved pde.times "
                    f"{self.pde.times}"
                )
            from mldiff.pde import get_system

            species = get_system(self.pde.system, self.pde.parameters).species
            absent = [s for s in self.store.species if s not in species]
            if absent:
                raise ValueError(f"store.species: {absent} are not species of pde.system "
                                 f"{self.pde.system!r} {list(species)}")
            self.check_split(self.pde.n_samples, "pde.n_samples")
        self._check_reference()
        if self.train.batch_size % self.train.processes:
            raise ValueError(
                f"train.batch_size: {self.train.batch_size} is not divisible by "
                f"train.processes = {self.train.processes}"
            )
        for name, run in self.train.runs.items():
            self._check_run(name, run)
        family = 3 * len(self.sample.resolutions)  # a model's p-values: 2 + 1 per resolution
        if family / (self.evaluate.n_permutations + 1) > self.evaluate.alpha:
            need = math.ceil(family / self.evaluate.alpha) - 1
            raise ValueError(f"evaluate.n_permutations: {self.evaluate.n_permutations} cannot "
                             f"give a Holm-adjusted p <= {self.evaluate.alpha:g} over up to "
                             f"{family} tests per model; use at least {need}")
        return self

    def check_split(self, n_samples: int, what: str) -> None:
        """Raise ValueError unless ``store.split`` of ``n_samples`` gives the evaluation at least
        two training and two test samples (and validation one when its fraction is positive)."""
        from mldiff.datasets.store import split_sizes

        fractions = list(self.store.split.model_dump().values())
        try:
            sizes = split_sizes(n_samples, fractions)
        except MldiffError as exc:
            raise ValueError(f"{what}: {exc}") from None
        if sizes[0] < 2 or sizes[2] < 2:
            raise ValueError(f"{what}: {n_samples} samples split by store.split {fractions} give "
                             f"(train, validation, test) = {tuple(sizes)}; training and "
                             "evaluation need at least 2 train and 2 test samples")

    def _check_reference(self) -> None:
        wanted = self.reference.resolutions
        if wanted and self.data.source is not None:
            raise ValueError("reference.resolutions: data.source data cannot be re-simulated on "
                             "finer grids; leave it empty (samples are then compared at the "
                             "finest store level)")
        low = [n for n in wanted if n <= self.store.levels[-1] or n < self.pde.n]
        if low:
            fine = max(2 * self.store.levels[-1], self.pde.n)
            raise ValueError(f"reference.resolutions: {low} must be finer than the finest store "
                             f"level {self.store.levels[-1]} and at least pde.n = {self.pde.n}; "
                             f"give e.g. [{fine}], or [] for no reference data")

    def _check_run(self, name: str, run: RunSpec) -> None:
        key = f"train.runs.{name}"
        if run.network not in self.networks:
            raise ValueError(f"{key}.network: {run.network!r} is not one of networks "
                             f"{sorted(self.networks)}")
        if run.prior not in self.priors:
            raise ValueError(f"{key}.prior: {run.prior!r} is not one of priors "
                             f"{sorted(self.priors)}")
        levels = [level for level, _ in run.schedule]
        missing = [level for level in levels if level not in self.store.levels]
        if missing:
            raise ValueError(f"{key}.schedule: levels {missing} are not in store.levels "
                             f"{self.store.levels}")
        network = self.networks[run.network]
        coarsest = self._coarsest_grids(key, levels + self.sample.resolutions)
        if network.arch == "unet" and (len(levels) > 1 or coarsest[levels[0]] != levels[0]):
            raise ValueError(f"{key}: the unet is resolution-bound; give one level and a "
                             "process on a fixed grid")
        if network.arch == "fno":
            modes = int(network.params.get("modes", 12))
            need = 2 * modes if self.boundary == "periodic" else modes
            small = sorted({n for n, m in coarsest.items() if m < need})
            if small:
                raise ValueError(f"{key}: resolutions {small} are too small for "
                                 f"networks.{run.network} modes={modes} (need grids >= {need}, "
                                 f"coarsest grids {[coarsest[n] for n in small]})")

    def _coarsest_grids(self, key: str, resolutions: list[int]) -> dict[int, int]:
        """The coarsest grid the forward process uses for each output resolution."""
        from mldiff.diffusion import build_prior, build_process

        process = build_process(self.diffusion.process, build_prior("white"), "periodic",
                                **self.diffusion.kwargs())
        try:
            return {n: process.grid_size(process.t_max, n) for n in resolutions}
        except MldiffError as exc:
            raise ValueError(f"{key}: {exc}") from None

    @property
    def boundary(self) -> str:
        """Boundary condition of the data: the source's, or the PDE system's default."""
        if self.data.source is not None:
            from mldiff.datasets.source import stated_boundary

            return self.data.source.boundary or stated_boundary(self.data.source.path)
        if self.pde.boundary is not None:
            return self.pde.boundary
        from mldiff.pde import get_system

        return get_system(self.pde.system, self.pde.parameters).boundary


def _location(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc) or "<root>"


def _known_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The allowed keys of the section at ``loc`` (for did-you-mean)."""
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        if field is None:
            return []
        annotation = field.annotation
        candidates = [a for a in getattr(annotation, "__args__", (annotation,))]
        sub = next(
            (c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None
        )
        if sub is None:
            return []
        model = sub
    return list(model.model_fields)


def _first_error(exc: ValidationError, source: str) -> MldiffError:
    err = exc.errors()[0]
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    key = _location(loc)
    if err["type"] == "extra_forbidden":
        known = _known_keys(Params, loc)
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; allowed keys: {sorted(known)}"
        return MldiffError(f"{source}: {key}: unknown key{hint}")
    if isinstance(err.get("ctx", {}).get("error"), MldiffError):
        return MldiffError(f"{source}: {key}: {err['ctx']['error']}")
    msg = err["msg"].removeprefix("Value error, ")
    got = err.get("input")
    suffix = "" if isinstance(got, dict) or err["type"] == "value_error" else f", got {got!r}"
    where = f"{source}: {key}: " if loc else f"{source}: "
    return MldiffError(f"{where}{msg}{suffix}")


def validate(raw: Any, source: str = "params") -> Params:
    """Validate a params mapping; raise :class:`MldiffError` with one line on the first problem.

    Types are strict (JSON semantics): no ``True`` or ``"5"`` where an integer is expected,
    integers are accepted for floats; every value must be plain data (see :func:`check_plain`).
    """
    if not isinstance(raw, dict):
        kind = "an empty file" if raw is None else type(raw).__name__
        raise MldiffError(f"{source}: expected a YAML mapping of sections, got {kind}")
    check_plain(raw, source)
    try:
        return Params.model_validate_json(json.dumps(raw), strict=True)
    except ValidationError as exc:
        raise _first_error(exc, source) from None
    except MldiffError as exc:
        raise MldiffError(f"{source}: {exc}") from None


def validate_section(model: type[Section], raw: Any, key: str) -> Section:
    """Validate one section (e.g. a model file's network spec) with the rules of params.yaml;
    :class:`MldiffError` naming ``key`` and the first problem."""
    check_plain(raw, key)
    try:
        return model.model_validate_json(json.dumps(raw), strict=True)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(map(str, (key, *err["loc"])))
        raise MldiffError(f"{where}: {err['msg'].removeprefix('Value error, ')}") from None


MAX_DEPTH = 16  # nesting of mappings/lists in a params file
MAX_NODES = 100_000  # YAML nodes after alias expansion
MAX_BYTES = 1 << 20
INT64 = 2**63 - 1
TEMPLATE_KEYS = ("__use_yte__",)  # Snakemake would evaluate a file holding one as a template


def check_plain(value: Any, source: str, key: tuple[Any, ...] = ()) -> None:
    """Refuse anything but string-keyed mappings, lists, strings, booleans, None, integers of
    at most 64 bits and finite floats, naming the dotted key."""
    where = f"{source}: {_location(key)}"
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise MldiffError(f"{where}: keys must be strings, got {k!r}")
            if not key and k in TEMPLATE_KEYS:
                raise MldiffError(f"{source}: {k}: templated params files are refused (a "
                                  "template runs code before validation)")
            check_plain(v, source, (*key, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            check_plain(v, source, (*key, i))
    elif isinstance(value, bool) or value is None or isinstance(value, str):
        pass
    elif isinstance(value, int):
        if abs(value) > INT64:
            raise MldiffError(f"{where}: expected an integer of at most 64 bits, got "
                              f"{len(str(abs(value)))} digits")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise MldiffError(f"{where}: expected a finite number, got {value}")
    else:
        raise MldiffError(f"{where}: expected plain data (mapping, list, string, number, "
                          f"boolean or null), got {type(value).__name__}")


class _StrictLoader(yaml.SafeLoader):
    """``SafeLoader`` with YAML 1.2 core scalars: ``true``/``false`` only (``yes``, ``on``,
    ``y`` stay strings), decimal integers (no octal ``010``, no sexagesimal ``1:30``, no
    ``1_000``), no timestamps or merge keys; a duplicated mapping key is an error."""

    yaml_implicit_resolvers: dict = {}

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else id(key_node)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


for _tag, _regex, _first in (
    ("bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    ("int", r"^[-+]?[0-9]+$", "-+0123456789"),
    ("float", r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
              r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$", "-+0123456789."),
    ("null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
):
    _StrictLoader.add_implicit_resolver(f"tag:yaml.org,2002:{_tag}", re.compile(_regex),
                                        list(_first))


def _construct_decimal_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    return int(loader.construct_scalar(node))  # base 10: "010" is ten


_StrictLoader.add_constructor("tag:yaml.org,2002:int", _construct_decimal_int)


def _bounded(node: yaml.Node, path: Path) -> None:
    """Refuse documents nested deeper than MAX_DEPTH or larger than MAX_NODES once aliases
    are expanded (a "billion laughs" file is a few hundred bytes); sizes are counted on the
    node graph with memoization, never by expanding it."""
    sizes: dict[int, int] = {}

    def size(n: yaml.Node, depth: int) -> int:
        if depth > MAX_DEPTH:
            raise MldiffError(f"{path}: nested deeper than {MAX_DEPTH} levels")
        if id(n) not in sizes:
            children = (n.value if isinstance(n, yaml.SequenceNode) else
                        [c for pair in n.value for c in pair]
                        if isinstance(n, yaml.MappingNode) else [])
            sizes[id(n)] = 1 + sum(size(c, depth + 1) for c in children)
            if sizes[id(n)] > MAX_NODES:
                raise MldiffError(f"{path}: more than {MAX_NODES} values once YAML aliases are "
                                  "expanded")
        return sizes[id(n)]

    size(node, 0)


def read_yaml(path: str | os.PathLike) -> Any:
    """Parse ``path`` (UTF-8, at most 1 MiB) with the strict, bounded loader
    (:class:`_StrictLoader`, :func:`_bounded`); one-line errors naming the file."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a params file" if path.is_dir() else "params file not found"
        raise MldiffError(f"{path}: {what}")
    try:
        data = path.read_bytes()
        if len(data) > MAX_BYTES:
            raise MldiffError(f"{path}: larger than {MAX_BYTES} bytes; not a params file")
        text = data.decode("utf-8")
    except OSError as exc:
        raise MldiffError(f"{path}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise MldiffError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _bounded(node, path)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        problem = getattr(exc, "problem", None)
        raise MldiffError(f"{path}: not valid YAML{where}{': ' + problem if problem else ''}"
                          ) from None
    except RecursionError:
        raise MldiffError(f"{path}: nested deeper than {MAX_DEPTH} levels") from None
    finally:
        loader.dispose()


def load_params(path: str | os.PathLike = "params.yaml") -> Params:
    """Read and validate a params file."""
    return validate(read_yaml(path), str(path))


def deep_merge(
    base: dict[str, Any], override: dict[str, Any], depth: int | None = None
) -> dict[str, Any]:
    """``base`` updated by ``override``: mappings merge down to ``depth`` levels (all when
    None), below that values replace. Presets use ``depth=2``: a preset's ``train.runs`` or
    ``pde.solver`` replaces the default one instead of adding to it."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and depth != 1:
            out[key] = deep_merge(out[key], value, None if depth is None else depth - 1)
        else:
            out[key] = value
    return out


def json_schema() -> dict[str, Any]:
    """JSON schema (draft 2020-12) of ``params.yaml``, for Snakemake's ``validate``."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            **Params.model_json_schema()}


# The params sections each pipeline step reads: recorded in its outputs' provenance, passed
# to Snakemake's ``params:`` (rerun trigger) and listed in the DVC stage's ``params:``.
STEP_PARAMS: dict[str, tuple[str, ...]] = {
    "simulate": ("seed", "pde", "data"),
    "store": ("store",),
    "train": ("diffusion", "priors", "networks", "train"),
    "sample": ("sample",),
    "reference": ("seed", "pde", "store", "reference"),
    "evaluate": ("store", "priors", "train", "sample", "evaluate", "reference"),
    "report": ("pde", "data", "store", "diffusion", "priors", "networks", "train", "sample",
               "evaluate", "reference"),
}


def step_params(params: Params, step: str, run: str | None = None) -> dict[str, Any]:
    """The sections of ``params`` that ``step`` reads, as plain data with keys sorted at every
    level (so reordering keys in params.yaml changes nothing Snakemake compares). With ``run``
    (a ``train.runs`` name): only that run's entry of ``train.runs`` and the prior and network
    it names, i.e. what training that one run reads."""
    dumped = params.model_dump(mode="json")
    out = {key: dumped[key] for key in STEP_PARAMS[step]}
    if run is not None:
        spec = dumped["train"]["runs"][run]
        out["train"] = {**out["train"], "runs": {run: spec}}
        out["priors"] = {spec["prior"]: dumped["priors"][spec["prior"]]}
        out["networks"] = {spec["network"]: dumped["networks"][spec["network"]]}
    return json.loads(json.dumps(out, sort_keys=True))
