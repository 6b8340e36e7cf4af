"""Dimensionality-varying vs plain VP sampling: quality and cost at the same grid and steps.

Run: ``python tests/benchmarks/bench_dimvarying.py [--sizes 64 128] [--samples 256]
[--steps 100] [--threshold 0.01] [--threads 2] [--device cpu]``.

Data: synthetic Gaussian random fields ``x ~ m + N(0, C)`` on the Neumann square, ``C`` a
Matérn law smoother than the noise prior ``Q = Matérn(γ = 1.5)``. Both processes sample with
their *exact* score, so differences in quality come from the process, not from training:
``VPSDE`` with ``GaussianScore`` (the peer) and ``DimVaryingVP`` (factors 2 and 4: the first
steps run on n/4, then n/2; switch times from ``switch_times_from_data`` on 256 training
draws) with ``DimVaryingGaussianScore``. Euler–Maruyama with ``--steps`` steps and Heun on the
probability flow with half as many.

Quality against a fresh reference set of the same size: energy distance (unit-area L², the
``data`` row compares two data sets: the sampling-noise floor) and the spectrum's mean log error
over shells 1 … n/2. Cost: network grid points per sample (Σ_steps n_t²) and wall time per
sample with the exact score (FFT-only: the process's own overhead), and with the cost of a
score network added (``ε = exact + 0 · FNO``, width 32, 4 layers, 8 modes, on ``--timing-batch``
samples, EM only).
"""

from __future__ import annotations

import argparse
import time

import torch

from mldiff.diffusion import (
    VPSDE,
    DimVaryingGaussianScore,
    GaussianScore,
    build_prior,
    build_process,
    sample_em,
    sample_ode,
    switch_times_from_data,
)
from mldiff.evaluate.metrics import energy_distance
from mldiff.evaluate.spectra import power_spectrum, spectrum_log_error
from mldiff.models import build_model
from mldiff.sample import CountingNet

BOUNDARY, MEAN, FACTORS = "neumann", 0.5, [2, 4]


class WithNetworkCost(torch.nn.Module):
    """The exact score plus zero times a score network: exact dynamics, a network's cost."""

    def __init__(self, exact: torch.nn.Module, net: torch.nn.Module) -> None:
        super().__init__()
        self.exact, self.net = exact, net

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.exact(x, t) + 0.0 * self.net(x, t)


def _run(process, score, sampler, batch, n, steps, seed, device):
    counted = CountingNet(score)
    gen = torch.Generator(device=device).manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.synchronize()
    tic = time.perf_counter()
    x = sampler(process, counted, batch, 1, n, steps, gen, progress=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return x, time.perf_counter() - tic, counted.points / batch


def bench(n: int, args: argparse.Namespace, device: torch.device) -> list[dict]:
    prior = build_prior("matern", gamma=1.5)
    data = build_prior("matern", gamma=2.5, tau=4.0, scale=40.0)
    gen = torch.Generator(device=device).manual_seed(n)

    def draw(count: int) -> torch.Tensor:
        return MEAN + data.sample((count, 1), n, BOUNDARY, gen, torch.float32)

    times = switch_times_from_data(draw(256), prior, BOUNDARY, FACTORS, threshold=args.threshold)
    reference, floor = draw(args.samples), draw(args.samples)
    vp = VPSDE(prior, BOUNDARY)
    dv = build_process("dimvarying", prior, BOUNDARY, factors=FACTORS, switch_times=times)
    scores = {
        "vp": (vp, GaussianScore(vp, data, mean=MEAN).to(device)),
        "dimvarying": (dv, DimVaryingGaussianScore(dv, data, mean=MEAN).to(device)),
    }
    fno = build_model("fno", 1, 1, width=32, modes=8, layers=4, boundary=BOUNDARY).to(device)
    spectrum = power_spectrum(reference, boundary=BOUNDARY)
    rows = [{
        "n": n, "sampler": "-", "process": "data", "switch": "-",
        "energy": energy_distance(floor, reference),
        "spectrum": spectrum_log_error(power_spectrum(floor, boundary=BOUNDARY), spectrum),
    }]
    for sampler, steps in ((sample_em, args.steps), (sample_ode, args.steps // 2)):
        for name, (process, exact) in scores.items():
            x, seconds, points = _run(process, exact, sampler, args.samples, n, steps, 1, device)
            row = {
                "n": n, "sampler": sampler.__name__[7:], "process": name,
                "switch": " ".join(f"{t:.3f}" for t in times) if name == "dimvarying" else "-",
                "energy": energy_distance(x, reference),
                "spectrum": spectrum_log_error(power_spectrum(x, boundary=BOUNDARY), spectrum),
                "points": points, "time": seconds / args.samples,
            }
            if sampler is sample_em:
                _, seconds, _ = _run(process, WithNetworkCost(exact, fno), sampler,
                                     args.timing_batch, n, steps, 2, device)
                row["net_time"] = seconds / args.timing_batch
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--threshold", type=float, default=0.01)
    parser.add_argument("--timing-batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    header = (f"{'n':>4} {'sampler':>7} {'process':>10} {'switch times':>12} {'energy':>9} "
              f"{'spec.err':>8} {'points/s':>9} {'pts ratio':>9} {'s/sample':>9} "
              f"{'+FNO s/smp':>10} {'time ratio':>10}")
    print(f"device {device}, {args.samples} samples, EM {args.steps} / Heun {args.steps // 2} "
          f"steps, switch threshold {args.threshold}")
    print(header)
    print("-" * len(header))
    with torch.no_grad():
        for n in args.sizes:
            rows = bench(n, args, device)
            peers = {r["sampler"]: r for r in rows if r["process"] == "vp"}
            for r in rows:
                peer = peers.get(r["sampler"])
                cost = ""
                if "points" in r:
                    cost = (f"{r['points']:9.0f} {r['points'] / peer['points']:9.3f} "
                            f"{r['time']:9.4f}")
                if "net_time" in r:
                    cost += (f" {r['net_time']:10.4f} "
                             f"{r['net_time'] / peer['net_time']:10.3f}")
                print(f"{r['n']:>4} {r['sampler']:>7} {r['process']:>10} {r['switch']:>12} "
                      f"{r['energy']:9.5f} {r['spectrum']:8.4f} {cost}")


if __name__ == "__main__":
    main()
