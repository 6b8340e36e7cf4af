"""Multilevel vs single-level training, and sampling throughput (issue: function-space models).

(b) Wall time for multilevel training (coarse level first, then the finest) to reach the final
    validation DSM loss (at the finest level) of a model trained only at the finest level with
    the same number of steps; ratio multilevel / single (target <= 0.5).
(c) Samples per second of 200-step Euler-Maruyama sampling at 64x64 and 128x128.

Both runs use the same FitzHugh-Nagumo store, network, prior and optimizer settings; times are
the trainer's own per-step wall clock (validation excluded), read from validation.csv.

    python tests/benchmarks/bench_training.py [--steps 1500] [--threads 2]
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import torch

from mldiff import config, io
from mldiff.datasets import build_level, read_source
from mldiff.pde import simulate_dataset
from mldiff.sample import generate
from mldiff.train import train_run


def build_store(root: Path, fine: int, coarse: int, samples: int) -> dict[int, Path]:
    raw = simulate_dataset("fitzhugh_nagumo", None, 64, [2.5], samples, 0,
                           laplacian="finite_volume", batch_size=64, progress=False)
    io.write_netcdf(raw, root / "raw.nc")
    source = read_source(root / "raw.nc", variables=["u"], time={"dim": "time", "value": 2.5})
    paths = {}
    for n in (coarse, fine):
        paths[n] = root / f"level_{n}.nc"
        io.write_netcdf(build_level(source, n), paths[n])
    return paths


def curve(model: Path, level: int) -> list[tuple[float, float]]:
    with open(model.with_name("validation.csv")) as f:
        return [(float(r["elapsed_s"]), float(r[f"val_loss_{level}"])) for r in csv.DictReader(f)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--coarse-share", type=float, default=0.75)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--samples", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    coarse, fine = 16, 32
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = build_store(root, fine, coarse, args.samples)
        n_coarse = int(args.steps * args.coarse_share)
        runs = {"single": [[fine, args.steps]],
                "multilevel": [[coarse, n_coarse], [fine, args.steps - n_coarse]]}
        raw = config.Params().model_dump(mode="json")
        raw["pde"]["n"] = 64
        raw["store"]["levels"] = [coarse, fine]
        raw["sample"]["resolutions"] = [fine]
        raw["train"].update(validate_every=25, device="cpu", elbo_times=0, runs={
            name: {"network": "fno", "prior": "matern", "schedule": s}
            for name, s in runs.items()})
        params = config.validate(raw)
        results = {}
        for name in runs:
            out = root / name / "model.pt"
            summary = train_run(params, name, paths, out, root / name / "c.pt", progress=False)
            results[name] = (summary, curve(out, fine))
        target = results["single"][1][-1][1]
        single_time = results["single"][0]["wall_time_s"]
        reached = next((t for t, loss in results["multilevel"][1] if loss <= target), None)
        print(f"\n(b) validation DSM loss at {fine}x{fine}, {args.steps} steps each "
              f"(multilevel: {n_coarse} at {coarse}, then {args.steps - n_coarse} at {fine})")
        print(f"{'run':<12}{'final loss':>12}{'train s':>10}{'est. GFLOP':>12}{'s to target':>14}")
        for name, (summary, pts) in results.items():
            t_hit = next((t for t, loss in pts if loss <= target), float("nan"))
            print(f"{name:<12}{pts[-1][1]:>12.4f}{summary['wall_time_s']:>10.2f}"
                  f"{summary['estimated_flops'] / 1e9:>12.1f}{t_hit:>14.2f}")
        ratio = reached / single_time if reached is not None else float("nan")
        print(f"multilevel / single wall time to the single-level final loss: {ratio:.2f} "
              f"({'never reached' if reached is None else 'target <= 0.5'})")

        print("\n(c) 200-step Euler-Maruyama sampling, batch 16, single-level model")
        print(f"{'n':>6}{'samples/s':>12}")
        for n in (64, 128):
            tic = time.perf_counter()
            generate(root / "single" / "model.pt", n, sampler="em", steps=200, n_samples=16,
                     batch_size=16, seed=0, device="cpu", progress=False)
            print(f"{n:>6}{16 / (time.perf_counter() - tic):>12.2f}")


if __name__ == "__main__":
    main()
