"""Training a score network on the store's levels: per level, or multilevel (coarse → fine).

A run (``params.train.runs[name]``) is a network, a prior and a schedule ``[(n_1, s_1), …]``:
``s_j`` optimizer steps on level ``n_j``, each level warm-started from the previous one (same
weights, optimizer and EMA; one learning-rate schedule over all ``Σ s_j`` steps: linear
warm-up, then cosine decay to ``min_lr_ratio · lr``). A single stage is per-level training.

Each step draws a batch of normalized training fields ``x0 (B, C, n, n)``, times
``t ~ U[t_min, 1]`` and the process's noise from one seeded ``torch.Generator``, and takes an
AdamW step on the denoising score-matching loss of :meth:`ForwardProcess.loss` (gradient norm
clipped). The EMA of the weights, ``θ̄ ← d θ̄ + (1 − d) θ``, is what is validated and saved.

Validation: the DSM loss of the EMA weights on the validation split of *every* store level the
network can run at, with fixed times (``validation_times`` stratified in ``[t_min, 1]``) and
fixed noise, so values are comparable across steps and levels.

Checkpoints (model, EMA, optimizer, scheduler, generator state, step, history, params) are
written atomically every ``checkpoint_every`` steps, at each level switch and at the end;
resuming from one continues bit-exactly on CPU. A finished run deletes its checkpoint, so
only an interrupted run is ever resumed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from mldiff import config, io
from mldiff.config import Params
from mldiff.datasets import normalize, open_level
from mldiff.diffusion import (
    ForwardProcess,
    StageNetworks,
    build_prior,
    build_process,
    elbo_report,
    fit_prior_spec,
    switch_times_from_data,
)
from mldiff.diffusion.priors import shell_power
from mldiff.errors import MldiffError, one_line
from mldiff.models import build_model, count_parameters, estimate_flops

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1


class Distributed:
    """Data-parallel context from ``torchrun``'s environment (single process without it).

    Every rank draws the same global batch (indices, times, noise) from one seeded generator
    and computes the loss on its contiguous shard; DDP averages the gradients, so training
    equals single-process training with the same global batch up to summation order.
    """

    def __init__(self, device: torch.device) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.device = device
        if self.world > 1 and not torch.distributed.is_initialized():
            if device.type == "cuda":
                local = int(os.environ.get("LOCAL_RANK", "0"))
                self.device = torch.device("cuda", local)
                torch.cuda.set_device(self.device)
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            torch.distributed.init_process_group(backend)

    @property
    def writer(self) -> bool:
        """Only rank 0 writes checkpoints and outputs."""
        return self.rank == 0

    def shard(self, batch: int) -> slice:
        if batch % self.world:
            raise MldiffError(
                f"train.batch_size: {batch} is not divisible by the {self.world} processes"
            )
        size = batch // self.world
        return slice(self.rank * size, (self.rank + 1) * size)

    def wrap(self, net: torch.nn.Module) -> torch.nn.Module:
        if self.world == 1:
            return net
        ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(
            net, device_ids=ids, find_unused_parameters=isinstance(net, StageNetworks)
        )

    def average_gradients(self, module: torch.nn.Module | None) -> None:
        """Average the gradients of a module that DDP does not wrap (a learned process)."""
        if self.world == 1 or module is None:
            return
        for p in module.parameters():
            if p.grad is not None:
                torch.distributed.all_reduce(p.grad)
                p.grad /= self.world

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is set on any rank (a collective: every rank must call it)."""
        if self.world == 1:
            return flag
        value = torch.tensor([float(flag)], device=self.device)
        torch.distributed.all_reduce(value)
        return bool(value.item() > 0)

    def close(self) -> None:
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


class Preempted(MldiffError):
    """SIGTERM (as SLURM sends before preemption) or SIGINT (Ctrl-C) arrived: checkpoint saved,
    exit to resume."""


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def stop_flag() -> Iterator[list[str | None]]:
    """Catch SIGTERM and SIGINT during training: ``flag[0]`` becomes the signal's name, and the
    loop checkpoints and stops at the next step. A second Ctrl-C interrupts at once (the
    checkpoint write is atomic either way)."""
    flag: list[str | None] = [None]

    def handler(signum: int, frame: object) -> None:
        flag[0] = signal.Signals(signum).name
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    try:
        previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    except ValueError:  # not the main thread: leave signals alone
        yield flag
        return
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def pick_device(name: str) -> torch.device:
    """``auto``: CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise MldiffError("device: 'cuda' requested but torch sees no CUDA device")
    return torch.device(name)


def run_spec(params: Params, run: str) -> dict[str, Any]:
    """Everything needed to rebuild run ``run``'s network and process: JSON-ready."""
    if run not in params.train.runs:
        raise MldiffError(f"--run {run!r}: not in train.runs {sorted(params.train.runs)}")
    spec = params.train.runs[run]
    network = params.networks[spec.network]
    return {
        "run": run,
        "network": {"arch": network.arch, "params": dict(network.params)},
        "prior": params.priors[spec.prior].model_dump(mode="json"),
        "process": params.diffusion.model_dump(mode="json"),
        "schedule": [list(stage) for stage in spec.schedule],
    }


def resolve_prior(spec: dict[str, Any], data: Data) -> dict[str, Any]:
    """``spec`` with a ``fitted`` prior fitted to the normalized training fields at the run's
    finest level (:meth:`~mldiff.diffusion.Fitted.fit`; the model file keeps the spectrum, so
    sampling at any resolution uses the same Q); other priors unchanged."""
    n = int(spec["schedule"][-1][0])
    prior = fit_prior_spec(spec["prior"], data.train[n], data.geometry["boundary"],
                           data.geometry["length"])
    return {**spec, "prior": prior}


def check_prior(process: ForwardProcess, x: torch.Tensor, geometry: dict[str, Any],
                key: str) -> None:
    """Compare the data's spectrum with Q's before training (VP-type processes).

    With ``ρ_s = c_s / λ_s`` per species and shell of the normalized training fields ``x`` at
    the run's finest level (:func:`~mldiff.diffusion.priors.shell_power`): where
    ``ρ_s > 1 / α(1)²`` the data are rougher than Q beyond what the forward process noises
    (``p_1`` is not ``N(0, Q)`` there and sampling starts from the wrong law): MldiffError
    naming ``priors.<key>``, the band and the remedy. Where ``ρ_s < σ(t_min)²`` the data are
    smoother than the sampler resolves (samples keep Q's texture ``σ(t_min)² λ``): a warning.
    """
    if not (hasattr(process, "alpha_sigma") and hasattr(process, "prior")):
        return
    knots, ratio = shell_power(x, geometry["boundary"], geometry["length"], process.prior)
    alpha, sigma = process.alpha_sigma(torch.tensor([process.t_max, process.t_min],
                                                    dtype=torch.float64))
    high, low = float(alpha[0] ** -2), float(sigma[1] ** 2)
    remedy = "use the prior fitted to the data (priors: {fitted: {name: fitted}})"
    for c, species in enumerate(geometry["species"]):
        for bad, words, fix, bound in ((ratio[c] > high, "rougher than Q beyond what the "
                                        "forward process noises", "a smaller gamma", high),
                                       (ratio[c] < low, "smoother than the sampler resolves "
                                        "(samples keep Q's texture)", "a larger gamma", low)):
            if not bool(bad.any()):
                continue
            band = knots[bad]
            text = (f"priors.{key}: species {species} is {words} at wavenumbers "
                    f"{float(band.min()):.3g}-{float(band.max()):.3g} (data/Q spectrum "
                    f"{float(ratio[c][bad].max() if bound == high else ratio[c][bad].min()):.3g}"
                    f" vs {bound:.3g}); {remedy} or {fix}")
            if bound == high:
                raise MldiffError(text)
            log.warning(text)


def resolve_switch_times(spec: dict[str, Any], data: Data) -> dict[str, Any]:
    """``spec`` with ``switch_times: auto`` replaced by :func:`switch_times_from_data` of the
    normalized training fields at the run's finest level (the model file keeps the times, so
    sampling uses them); other specs unchanged."""
    process = spec["process"]
    options = process.get("options", {})
    if options.get("switch_times") != "auto":
        return spec
    n = int(spec["schedule"][-1][0])
    prior = build_prior(spec["prior"]["name"], length=data.geometry["length"],
                        **spec["prior"]["params"])
    times = switch_times_from_data(
        data.train[n], prior, data.geometry["boundary"], options.get("factors", [2, 4]),
        beta_min=process["beta_min"], beta_max=process["beta_max"],
        method=options.get("method", "spectral"),
    )
    log.info("switch times chosen from the training data at level %d: %s", n, times)
    return {**spec, "process": {**process, "options": {**options, "switch_times": times}}}


def build_components(
    spec: dict[str, Any], level: dict[str, Any]
) -> tuple[torch.nn.Module, ForwardProcess]:
    """Network and forward process for ``spec`` on a store whose geometry is ``level``.

    ``level`` holds ``boundary``, ``origin``, ``length``, ``channels`` and the first training
    resolution ``resolution`` (used only by resolution-bound networks).
    """
    prior = build_prior(spec["prior"]["name"], length=level["length"], **spec["prior"]["params"])
    process_params = dict(spec["process"])
    name = process_params.pop("process")
    process_params.update(process_params.pop("options", {}))
    process = build_process(name, prior, level["boundary"], **process_params)
    hyper = dict(spec["network"]["params"])
    hyper.update(boundary=level["boundary"], origin=level["origin"], length=level["length"])
    if spec["network"]["arch"] == "unet":
        hyper["resolution"] = level["resolution"]
    channels = level["channels"]
    arch, width = spec["network"]["arch"], process.state_channels(channels)
    if getattr(process, "network", "shared") == "per_stage":  # one network per grid stage
        seed = int(hyper.pop("seed", 0))
        nets = [build_model(arch, width, width, seed=seed + j, **hyper)
                for j in range(process.stages)]
        return StageNetworks(nets, process), process
    return build_model(arch, width, width, **hyper), process


def expected_flops(
    net: torch.nn.Module, process: ForwardProcess, n: int, points: int = 1024
) -> float:
    """Forward FLOPs per sample at output resolution ``n``, averaged over the training law of
    ``t`` (``points`` stratified times): the network runs on ``process.grid_size(t, n)``, so
    dimensionality-varying diffusion counts its coarser stages at their own grids."""
    grids = [process.grid_size(float(t), n) for t in process.stratified_times(points)]
    cost = {g: estimate_flops(net, g) for g in set(grids)}
    return sum(cost[g] for g in grids) / points


def supports(net: torch.nn.Module, process: ForwardProcess, n: int) -> bool:
    """Whether ``net`` can run every grid that ``process`` uses for output resolution ``n``."""
    try:
        grids = {process.grid_size(t, n) for t in (process.t_min, process.t_max)}
    except MldiffError:
        return False
    if hasattr(net, "resolution"):
        return grids == {net.resolution}
    return min(grids) >= getattr(net, "min_resolution", 1)


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay from 1 to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


@dataclass
class Data:
    """Normalized fields of every store level: ``train[n]``, ``validation[n]`` ``(N, C, n, n)``."""

    train: dict[int, torch.Tensor]
    validation: dict[int, torch.Tensor]
    geometry: dict[str, Any]
    stats: dict[str, list[float]] = field(default_factory=dict)

    @classmethod
    def load(cls, paths: dict[int, Path]) -> Data:
        train, validation, geometry, stats = {}, {}, {}, {}
        first = None
        for n, path in sorted(paths.items()):
            ds = open_level(path)  # attributes parsed and checked there
            if ds.attrs["level"] != n:
                raise MldiffError(f"{path}: holds level {ds.attrs['level']}, expected {n}")
            train[n], validation[n] = normalize(ds, "train"), normalize(ds, "validation")
            if len(train[n]) == 0:
                raise MldiffError(f"{path}: no sample has split code 0 (train); rebuild the "
                                  "level with `mldiff store`")
            here = {
                "boundary": ds.attrs["boundary"],
                "origin": ds.attrs["origin"],
                "length": ds.attrs["length"],
                "species": ds.attrs["species"].split(),
                "channels": train[n].shape[1],
            }
            level_stats = {
                "mean": [float(v) for v in ds["norm_mean"].values],
                "std": [float(v) for v in ds["norm_std"].values],
                "split": ds["split"].values.tolist(),
            }
            if first is not None and here != geometry:
                raise MldiffError(f"{path}: geometry {here} differs from {first}'s {geometry}")
            if first is not None and level_stats != stats:
                raise MldiffError(f"{path}: normalization statistics or splits differ from "
                                  f"{first}'s: the levels come from different raw data; "
                                  "rebuild the store")
            first, geometry, stats = first or path, here, level_stats
        stats = {k: stats[k] for k in ("mean", "std")}
        return cls(train, validation, geometry, stats)


def validation_losses(
    net: torch.nn.Module,
    process: ForwardProcess,
    data: Data,
    times: int,
    seed: int,
    device: torch.device,
) -> dict[int, float]:
    """Mean DSM loss on each level's validation split, at fixed stratified times and noise."""
    out = {}
    for n, x in data.validation.items():
        if not supports(net, process, n) or len(x) == 0:
            continue
        g = torch.Generator(device=device).manual_seed(seed)
        x = x.to(device)
        t_grid = process.stratified_times(times, x.dtype, device)
        total = 0.0
        with torch.no_grad():
            for t in t_grid:
                total += float(process.loss(net, x, t.expand(len(x)), g).mean())
        out[n] = total / times
    return out


def _ema_update(ema: torch.nn.Module, net: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for e, p in zip(ema.parameters(), net.parameters(), strict=True):
            e.lerp_(p, 1.0 - decay)


def _checkpoint_key(spec: dict[str, Any], train: dict[str, Any]) -> str:
    """Fingerprint of what determines the training trajectory (resuming requires equality)."""
    relevant = {k: v for k, v in train.items() if k not in ("runs", "device")}
    return json.dumps({"spec": spec, "train": relevant}, sort_keys=True)


class Trainer:
    """State of one run's training: network, EMA, optimizer, scheduler, generator, counters."""

    def __init__(self, params: Params, run: str, data: Data, checkpoint: Path) -> None:
        self.cfg = cfg = params.train
        self.run, self.data, self.checkpoint = run, data, checkpoint
        self.spec = resolve_switch_times(resolve_prior(run_spec(params, run), data), data)
        self.key = _checkpoint_key(self.spec, cfg.model_dump(mode="json"))
        self.dist = Distributed(pick_device(cfg.device))
        device = self.device = self.dist.device
        self.schedule = [(int(n), int(s)) for n, s in self.spec["schedule"]]
        self.geometry = {**data.geometry, "resolution": self.schedule[0][0]}
        self.net, self.process = build_components(self.spec, self.geometry)
        check_prior(self.process, data.train[self.schedule[-1][0]], data.geometry,
                    params.train.runs[run].prior)
        self.net.to(device)
        # A process with parameters (a learned diffusion) is trained jointly with the network.
        self.learned = self.process if isinstance(self.process, torch.nn.Module) else None
        if self.learned is not None:
            self.learned.to(device)
        self.ema = build_components(self.spec, self.geometry)[0].to(device)
        self.ema.load_state_dict(self.net.state_dict())
        self.ema.requires_grad_(False)
        self.model = self.dist.wrap(self.net)
        self.total_steps = sum(s for _, s in self.schedule)
        self.optimizer = torch.optim.AdamW(
            self.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay
        )
        total = self.total_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda step: lr_factor(step, total, cfg.warmup_steps, cfg.min_lr_ratio),
        )
        self.generator = torch.Generator(device=device).manual_seed(cfg.seed)
        self.state: dict[str, Any] = {
            "step": 0, "history": [], "validation": [], "elapsed": 0.0, "samples": 0,
            "flops": 0.0,
        }
        self.stopped_by: str | None = None
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16)
        self.flops = {n: 3.0 * expected_flops(self.net, self.process, n) for n, _ in self.schedule}

    def parameters(self) -> list[torch.nn.Parameter]:
        """What the optimizer trains: the network's and a learned process's parameters."""
        extra = list(self.learned.parameters()) if self.learned is not None else []
        return list(self.net.parameters()) + extra

    def process_state(self) -> dict[str, torch.Tensor]:
        return self.learned.state_dict() if self.learned is not None else {}

    def resume(self) -> None:
        """Load the checkpoint if it was made with the same params (else start afresh)."""
        if not self.checkpoint.exists():
            return
        saved = load_checkpoint(self.checkpoint)
        if saved["key"] != self.key:
            log.warning("%s: made with other params; starting %s afresh", self.checkpoint, self.run)
            return
        self.net.load_state_dict(saved["model"])
        self.ema.load_state_dict(saved["ema"])
        if self.learned is not None:
            self.learned.load_state_dict(saved["process"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.generator.set_state(saved["generator"])
        self.state = json.loads(saved["state"])
        log.info("resumed %s at step %d from %s", self.run, self.state["step"], self.checkpoint)

    def save(self) -> None:
        if not self.dist.writer:
            return
        save_checkpoint(self.checkpoint, {
            "format": CHECKPOINT_FORMAT,
            "key": self.key,
            "model": self.net.state_dict(),
            "ema": self.ema.state_dict(),
            "process": self.process_state(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(),
            "state": json.dumps(self.state),
        })

    def step(self, x_train: torch.Tensor, n: int) -> None:
        """One optimizer step on a global batch drawn from ``x_train`` (level ``n``)."""
        cfg, g, state = self.cfg, self.generator, self.state
        tic = time.perf_counter()
        index = torch.randperm(len(x_train), generator=g, device=self.device)
        x0 = x_train[index[: cfg.batch_size]]
        t = self.process.sample_time(len(x0), g, x0.dtype)
        with self.autocast:
            loss = self.process.loss(self.model, x0, t, g, self.dist.shard(len(x0))).mean()
        value = loss.item()
        if not math.isfinite(value):
            raise MldiffError(
                f"train {self.run}: loss is {value} at step {state['step']} (level {n}); lower "
                f"train.lr or train.grad_clip; last good checkpoint {self.checkpoint}"
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.dist.average_gradients(self.learned)
        torch.nn.utils.clip_grad_norm_(self.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        _ema_update(self.ema, self.net, cfg.ema_decay)
        state["step"] += 1
        state["samples"] += len(x0)
        state["flops"] += self.flops[n] * len(x0)
        state["elapsed"] += time.perf_counter() - tic
        state["history"].append([state["step"], n, self.scheduler.get_last_lr()[0], value])

    def validate(self, n: int) -> None:
        losses = validation_losses(
            self.ema, self.process, self.data, self.cfg.validation_times, self.cfg.seed + 1,
            self.device,
        )
        self.state["validation"].append({
            "step": self.state["step"], "level": n, "elapsed": self.state["elapsed"],
            **{str(k): v for k, v in losses.items()},
        })

    def fit(self, progress: bool, stop_after: int | None) -> bool:
        """Run the schedule from the current step; False if stopped early (checkpoint saved).

        Stops early after ``stop_after`` total steps (tests), on SIGTERM (preemption) or on
        SIGINT (Ctrl-C); ``self.stopped_by`` names the signal.
        """
        cfg, state = self.cfg, self.state
        bar = tqdm(total=self.total_steps, initial=state["step"], desc=self.run,
                   disable=not progress or not self.dist.writer)
        end = 0
        with stop_flag() as stop, bar:
            for n, steps in self.schedule:
                end += steps
                x_train = self.data.train[n].to(self.device)
                while state["step"] < end:
                    if self.dist.any(stop[0] is not None) or state["step"] == stop_after:
                        self.stopped_by = stop[0] or "a signal to another rank"
                        self.save()
                        return False
                    self.step(x_train, n)
                    bar.set_postfix(level=n, loss=f"{state['history'][-1][-1]:.4f}",
                                    refresh=False)  # drawn once, by the update
                    bar.update()
                    step, last = state["step"], state["step"] == self.total_steps
                    if step % cfg.validate_every == 0 or step == end or last:
                        self.validate(n)
                    if step % cfg.checkpoint_every == 0 or step == end:
                        self.save()
        return True


def train_run(
    params: Params,
    run: str,
    level_paths: dict[int, Path],
    out: Path,
    checkpoint: Path,
    resume: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Train run ``run`` and write ``out`` (EMA weights + spec), ``loss.csv``,
    ``validation.csv`` and ``train.json`` beside it; return the summary of ``train.json``.

    ``level_paths`` maps every store level to its file (validation uses all of them).
    With ``resume``, a checkpoint made with the same params is continued. ``stop_after``
    stops after that many total steps with only a checkpoint written (returns ``{}``); SIGTERM
    and SIGINT (Ctrl-C) stop the same way and raise :class:`Preempted`.
    """
    torch.manual_seed(params.train.seed)
    trainer = Trainer(params, run, Data.load(level_paths), checkpoint)
    try:
        if resume:
            trainer.resume()
        if not trainer.fit(progress, stop_after):
            if stop_after is not None and trainer.state["step"] == stop_after:
                return {}
            raise Preempted(
                f"train {run}: {trainer.stopped_by} at step {trainer.state['step']}; checkpoint "
                f"saved to {checkpoint}, rerun with --resume to continue"
            )
        if not trainer.dist.writer:
            return {}
        summary = _write_outputs(out, trainer)
        io.discard(checkpoint)  # only interrupted runs leave one to resume from
        return summary
    finally:
        trainer.dist.close()


# What `train` writes beside the model file.
TRAIN_SIDE_OUTPUTS = LOSS_CSV, VALIDATION_CSV, SUMMARY_JSON = (
    "loss.csv", "validation.csv", "train.json")


def _write_outputs(out: Path, trainer: Trainer) -> dict[str, Any]:
    """The trained model, its loss curves (CSV for ``dvc plots``) and compute summary."""
    run, spec, data, state = trainer.run, trainer.spec, trainer.data, trainer.state
    levels = sorted(data.validation)
    final = state["validation"][-1]
    elbo = validation_elbo(trainer) if trainer.cfg.elbo_times else {}
    summary = {
        "run": run,
        "schedule": spec["schedule"],
        "steps": state["step"],
        "samples_seen": state["samples"],
        "estimated_flops": state["flops"],
        "wall_time_s": round(state["elapsed"], 3),
        "parameters": count_parameters(trainer.net),
        "processes": trainer.dist.world,
        "final_validation_loss": {k: final[k] for k in map(str, levels) if k in final},
        "elbo_bits_per_dim": {k: v["bits_per_dim"] for k, v in elbo.items()},
        "elbo_nats_per_point": {k: v["nll_nats_per_point"] for k, v in elbo.items()},
    }
    model = {
        "format": CHECKPOINT_FORMAT,
        "spec": json.dumps(spec),
        "geometry": json.dumps(trainer.geometry),
        "stats": json.dumps(data.stats),
        "summary": json.dumps(summary),
        "ema": trainer.ema.state_dict(),
        "process": trainer.process_state(),
    }
    save_checkpoint(out, model)
    rows = ["step,level,lr,train_loss"] + [
        f"{s},{n},{lr:.6g},{loss:.6g}" for s, n, lr, loss in state["history"]
    ]
    io.write_text(out.with_name(LOSS_CSV), "\n".join(rows) + "\n")
    header = ["step", "level", "elapsed_s"] + [f"val_loss_{n}" for n in levels]
    lines = [",".join(header)]
    for row in state["validation"]:
        values = [row["step"], row["level"], f"{row['elapsed']:.4f}"]
        values += [f"{row[str(n)]:.6g}" if str(n) in row else "" for n in levels]
        lines.append(",".join(map(str, values)))
    io.write_text(out.with_name(VALIDATION_CSV), "\n".join(lines) + "\n")
    io.write_json(out.with_name(SUMMARY_JSON), summary)
    return summary


def validation_elbo(trainer: Trainer) -> dict[str, dict[str, float]]:
    """Likelihood bound of the EMA model on each level's validation split (negative ELBO in
    bits/dim and nats per grid point, normalized units); empty for processes or priors
    without one (e.g. dimensionality-varying, or a prior with a zero eigenvalue)."""
    out = {}
    for n, x in trainer.data.validation.items():
        if not supports(trainer.ema, trainer.process, n) or len(x) == 0:
            continue
        g = torch.Generator(device=trainer.device).manual_seed(trainer.cfg.seed + 2)
        try:
            out[str(n)] = elbo_report(trainer.process, trainer.ema, x.to(trainer.device),
                                      trainer.cfg.elbo_times, g)
        except MldiffError as exc:
            log.info("no ELBO for %s: %s", trainer.run, exc)
            return {}
    return out


def save_checkpoint(path: Path, obj: dict[str, Any]) -> None:
    """``torch.save`` of tensors, numbers and strings only (loadable with weights_only),
    serialized in memory first so that a full disk is the OS's plain ``ENOSPC``."""
    buffer = BytesIO()
    torch.save(obj, buffer)
    with io.atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())


def load_checkpoint(path: Path) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with one-line errors naming the file."""
    path = Path(path)
    if not path.is_file():
        raise MldiffError(f"{path}: checkpoint not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated, foreign or pickled-object files
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise MldiffError(f"{path}: not a loadable mldiff checkpoint ({first})") from None
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise MldiffError(f"{path}: not an mldiff checkpoint (format {CHECKPOINT_FORMAT})")
    return obj


def load_model(path: Path, device: torch.device) -> tuple[torch.nn.Module, ForwardProcess, dict]:
    """A trained model file → ``(EMA network in eval mode, process, info)``.

    ``info`` has ``spec``, ``geometry``, ``stats`` (normalization) and ``summary``.
    """
    obj = load_checkpoint(path)
    if "ema" not in obj or "spec" not in obj:
        raise MldiffError(f"{path}: a training checkpoint, not a trained model file")
    info = {k: io.attr(obj, path, k, "json") for k in ("spec", "geometry", "stats", "summary")}
    geometry, stats = info["geometry"], info["stats"]
    try:
        channels, resolution = geometry["channels"], geometry["resolution"]
        if not (isinstance(channels, int) and 1 <= channels <= 64
                and len(geometry["species"]) == channels == len(stats["mean"])
                == len(stats["std"]) and isinstance(resolution, int)
                and 4 <= resolution <= 4096):
            raise ValueError("channels, species, stats and resolution disagree")
        # The network and process sections pass the same validation as params.yaml's.
        config.validate_section(config.NetworkSpec, info["spec"]["network"], "spec.network")
        config.validate_section(config.ProcessParams, info["spec"]["process"], "spec.process")
        net, process = build_components(info["spec"], geometry)
    except MldiffError as exc:
        raise MldiffError(f"{path}: {exc}") from None
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
        raise MldiffError(f"{path}: its spec, geometry or stats are not ones this mldiff "
                          f"builds ({type(exc).__name__}: {one_line(exc, 200)})") from None
    bad = [k for k, v in obj["ema"].items() if v.is_floating_point() and not v.isfinite().all()]
    if bad:
        raise MldiffError(f"{path}: weights {bad[:3]} hold NaN or inf (a diverged or damaged "
                          "model); retrain it")
    try:
        net.load_state_dict(obj["ema"])
        if isinstance(process, torch.nn.Module):
            process.load_state_dict(obj["process"])
            process.to(device)
    except (RuntimeError, KeyError) as exc:
        raise MldiffError(f"{path}: weights do not match its network spec (a model of another "
                          f"mldiff version? retrain it; {one_line(exc, 200)})") from None
    return net.to(device).eval(), process, info
