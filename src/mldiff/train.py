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

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from mldiff import io
from mldiff.config import Params
from mldiff.datasets import normalize, open_level
from mldiff.diffusion import ForwardProcess, build_prior, build_process
from mldiff.errors import MldiffError
from mldiff.models import build_model, count_parameters, estimate_flops

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1


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
    process = build_process(name, prior, level["boundary"], **process_params)
    hyper = dict(spec["network"]["params"])
    hyper.update(boundary=level["boundary"], origin=level["origin"], length=level["length"])
    if spec["network"]["arch"] == "unet":
        hyper["resolution"] = level["resolution"]
    channels = level["channels"]
    net = build_model(
        spec["network"]["arch"], process.state_channels(channels),
        process.state_channels(channels), **hyper,
    )
    return net, process


def supports(net: torch.nn.Module, n: int) -> bool:
    """Whether ``net`` can be evaluated on an ``n × n`` grid."""
    if hasattr(net, "resolution"):
        return n == net.resolution
    return n >= getattr(net, "min_resolution", 1)


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
        for n, path in sorted(paths.items()):
            ds = open_level(path)
            if int(ds.attrs["level"]) != n:
                raise MldiffError(f"{path}: holds level {ds.attrs['level']}, expected {n}")
            train[n], validation[n] = normalize(ds, "train"), normalize(ds, "validation")
            here = {
                "boundary": str(ds.attrs["boundary"]),
                "origin": float(ds.attrs["origin"]),
                "length": float(ds.attrs["length"]),
                "species": str(ds.attrs["species"]).split(),
                "channels": train[n].shape[1],
            }
            if geometry and here != geometry:
                raise MldiffError(f"{path}: geometry {here} differs from the other levels")
            geometry = here
            stats = {
                "mean": [float(v) for v in ds["norm_mean"].values],
                "std": [float(v) for v in ds["norm_std"].values],
            }
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
        if not supports(net, n) or len(x) == 0:
            continue
        g = torch.Generator(device=device).manual_seed(seed)
        x = x.to(device)
        t_grid = process.t_min + (process.t_max - process.t_min) * (
            (torch.arange(times, dtype=x.dtype, device=device) + 0.5) / times
        )
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
    ``validation.csv`` and ``train.json`` beside it. Returns the summary of ``train.json``.

    ``level_paths`` maps every store level to its file (validation uses all of them).
    ``stop_after`` ends after that many total steps with only a checkpoint written (tests).
    """
    cfg = params.train
    spec = run_spec(params, run)
    key = _checkpoint_key(spec, cfg.model_dump(mode="json"))
    device = pick_device(cfg.device)
    data = Data.load(level_paths)
    schedule = [(int(n), int(s)) for n, s in spec["schedule"]]
    geometry = {**data.geometry, "resolution": schedule[0][0]}
    torch.manual_seed(cfg.seed)
    net, process = build_components(spec, geometry)
    net.to(device)
    ema = build_components(spec, geometry)[0].to(device)
    ema.load_state_dict(net.state_dict())
    ema.requires_grad_(False)
    total_steps = sum(s for _, s in schedule)
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    factor: Callable[[int], float] = lambda step: lr_factor(  # noqa: E731
        step, total_steps, cfg.warmup_steps, cfg.min_lr_ratio
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    state: dict[str, Any] = {"step": 0, "history": [], "validation": [], "elapsed": 0.0,
                             "samples": 0, "flops": 0.0}

    if resume and checkpoint.exists():
        saved = load_checkpoint(checkpoint)
        if saved["key"] != key:
            log.warning("%s: made with other params; starting %s from scratch", checkpoint, run)
        else:
            net.load_state_dict(saved["model"])
            ema.load_state_dict(saved["ema"])
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            generator.set_state(saved["generator"].to(generator.get_state().device))
            state = json.loads(saved["state"])
            log.info("resumed %s at step %d from %s", run, state["step"], checkpoint)

    def save() -> None:
        save_checkpoint(checkpoint, {
            "format": CHECKPOINT_FORMAT,
            "key": key,
            "model": net.state_dict(),
            "ema": ema.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "generator": generator.get_state(),
            "state": json.dumps(state),
        })

    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16)
    flops_per_sample = {n: 3.0 * estimate_flops(net, n) for n, _ in schedule}
    bar = tqdm(total=total_steps, initial=state["step"], desc=run, disable=not progress)
    start_of_stage = 0
    for n, steps in schedule:
        end_of_stage = start_of_stage + steps
        x_train = data.train[n].to(device)
        while state["step"] < end_of_stage:
            if stop_after is not None and state["step"] >= stop_after:
                save()
                bar.close()
                return {}
            tic = time.perf_counter()
            index = torch.randperm(len(x_train), generator=generator, device=device)
            x0 = x_train[index[: cfg.batch_size]]
            t = process.sample_time(len(x0), generator, x0.dtype)
            with autocast:
                loss = process.loss(net, x0, t, generator).mean()
            value = loss.item()
            if not math.isfinite(value):
                raise MldiffError(
                    f"train {run}: loss is {value} at step {state['step']} (level {n}); "
                    f"lower train.lr or enable train.grad_clip; last good checkpoint {checkpoint}"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            _ema_update(ema, net, cfg.ema_decay)
            state["step"] += 1
            state["samples"] += len(x0)
            state["flops"] += flops_per_sample[n] * len(x0)
            state["elapsed"] += time.perf_counter() - tic
            state["history"].append([state["step"], n, scheduler.get_last_lr()[0], value])
            bar.update()
            bar.set_postfix(level=n, loss=f"{value:.4f}")
            last = state["step"] == total_steps
            if state["step"] % cfg.validate_every == 0 or last or state["step"] == end_of_stage:
                losses = validation_losses(
                    ema, process, data, cfg.validation_times, cfg.seed + 1, device
                )
                state["validation"].append(
                    {"step": state["step"], "level": n, "elapsed": state["elapsed"],
                     **{str(k): v for k, v in losses.items()}}
                )
            if state["step"] % cfg.checkpoint_every == 0 or state["step"] == end_of_stage:
                save()
        start_of_stage = end_of_stage
    bar.close()
    summary = _write_outputs(out, run, spec, geometry, data, ema, state, net)
    checkpoint.unlink(missing_ok=True)  # only interrupted runs leave one to resume from
    return summary


def _write_outputs(
    out: Path,
    run: str,
    spec: dict[str, Any],
    geometry: dict[str, Any],
    data: Data,
    ema: torch.nn.Module,
    state: dict[str, Any],
    net: torch.nn.Module,
) -> dict[str, Any]:
    """The trained model, its loss curves (CSV for ``dvc plots``) and compute summary."""
    levels = sorted(data.validation)
    final = state["validation"][-1]
    summary = {
        "run": run,
        "schedule": spec["schedule"],
        "steps": state["step"],
        "samples_seen": state["samples"],
        "estimated_flops": state["flops"],
        "wall_time_s": round(state["elapsed"], 3),
        "parameters": count_parameters(net),
        "final_validation_loss": {k: final[k] for k in map(str, levels) if k in final},
    }
    model = {
        "format": CHECKPOINT_FORMAT,
        "spec": json.dumps(spec),
        "geometry": json.dumps(geometry),
        "stats": json.dumps(data.stats),
        "summary": json.dumps(summary),
        "ema": ema.state_dict(),
    }
    save_checkpoint(out, model)
    rows = ["step,level,lr,train_loss"] + [
        f"{s},{n},{lr:.6g},{loss:.6g}" for s, n, lr, loss in state["history"]
    ]
    io.write_text(out.with_name("loss.csv"), "\n".join(rows) + "\n")
    header = ["step", "level", "elapsed_s"] + [f"val_loss_{n}" for n in levels]
    lines = [",".join(header)]
    for row in state["validation"]:
        values = [row["step"], row["level"], f"{row['elapsed']:.4f}"]
        values += [f"{row[str(n)]:.6g}" if str(n) in row else "" for n in levels]
        lines.append(",".join(map(str, values)))
    io.write_text(out.with_name("validation.csv"), "\n".join(lines) + "\n")
    io.write_json(out.with_name("train.json"), summary)
    return summary


def save_checkpoint(path: Path, obj: dict[str, Any]) -> None:
    """``torch.save`` of tensors, numbers and strings only (loadable with weights_only)."""
    with io.atomic_path(path) as tmp:
        torch.save(obj, tmp)


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
    info = {k: json.loads(obj[k]) for k in ("spec", "geometry", "stats", "summary")}
    net, process = build_components(info["spec"], info["geometry"])
    try:
        net.load_state_dict(obj["ema"])
    except RuntimeError as exc:
        raise MldiffError(f"{path}: weights do not match its network spec ({exc})") from None
    return net.to(device).eval(), process, info
