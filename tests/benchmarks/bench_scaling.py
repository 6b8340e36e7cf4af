"""Throughput across grid sizes: sampling, training steps, the solver, peak memory; one table.

The network of the issue's comparison (FNO width 32, 12 modes, 4 layers, VP SDE with the Matérn
prior): ``--samples`` samples × ``--steps`` Euler–Maruyama steps per size (one batch), and
Adam training steps (denoising score matching, batch ``--batch``). ``×`` columns are the ratio of
a row's time to the previous row's (4× the grid points each doubling: the ideal is ≈ 4×).
Peak memory: CUDA ``max_memory_allocated`` per row; on CPU the process's peak resident set
after the row (monotone, so rows must grow). The solver row times ``simulate_dataset`` on
FitzHugh–Nagumo (finite volumes, float32, default steps, to t = 5) for ``--trajectories``
trajectories, all in one batch on CUDA. ``--cuda-tests`` first runs the test suite's CUDA tests
(``pytest -k cuda``) and puts the outcome in the table. ``--dry-run`` shrinks everything to a
few seconds (32² and 48², 2 samples × 2 steps; CI runs it).

    python tests/benchmarks/bench_scaling.py [--device cpu|cuda] [--sizes 32 64 128 256]
    bash tests/benchmarks/gpu_check.sh     # CUDA: tests + 128²/256² + 1000 trajectories
"""

from __future__ import annotations

import argparse
import re
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from mldiff.diffusion import VPSDE, build_prior, sample_em
from mldiff.models import FNO
from mldiff.pde import simulate_dataset

ROOT = Path(__file__).resolve().parents[2]


def timed(device: torch.device, run: Callable[[], object]) -> tuple[float, float]:
    """``(seconds, peak MiB)`` of one call of ``run``."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    tic = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    return time.perf_counter() - tic, peak


def sampling(net: FNO, process: VPSDE, n: int, samples: int, steps: int, device: torch.device):
    generator = torch.Generator(device=device).manual_seed(0)
    sample_em(process, net, samples, 1, n, 1, generator, progress=False)  # warm-up
    return timed(device, lambda: sample_em(process, net, samples, 1, n, steps, generator, False))


def training(net: FNO, process: VPSDE, n: int, batch: int, steps: int, device: torch.device):
    generator = torch.Generator(device=device).manual_seed(0)
    x0 = torch.randn(batch, 1, n, n, generator=generator, device=device)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)

    def step() -> None:
        t = process.sample_time(batch, generator)
        loss = process.loss(net, x0, t, generator).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up
    seconds, peak = timed(device, lambda: [step() for _ in range(steps)])
    return seconds / steps, peak


def solver(n: int, trajectories: int, device: torch.device) -> tuple[float, float]:
    return timed(device, lambda: simulate_dataset(
        "fitzhugh_nagumo", None, n, [5.0], trajectories, 0, laplacian="finite_volume",
        batch_size=trajectories if device.type == "cuda" else 16, dtype="float32",
        device=device.type, progress=False))


def cuda_tests() -> str:
    """Run the suite's CUDA tests; their pytest summary (e.g. ``6 passed, 1 skipped``)."""
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "cuda", "tests"],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )
    lines = [s for s in out.stdout.splitlines() if re.search(r"\d+ (passed|failed|error)", s)]
    summary = lines[-1].strip("= ") if lines else "no summary"
    if out.returncode != 0:
        print(out.stdout[-4000:], out.stderr[-2000:], sep="\n", file=sys.stderr)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--boundary", default="neumann", choices=["neumann", "periodic"])
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--steps", type=int, default=200, help="Euler-Maruyama steps")
    parser.add_argument("--batch", type=int, default=8, help="training batch")
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--trajectories", type=int, default=0, help="solver row (0: none)")
    parser.add_argument("--solver-n", type=int, default=128)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--cuda-tests", action="store_true")
    parser.add_argument("--dry-run", action="store_true", help="a few seconds, for CI")
    args = parser.parse_args()
    if args.dry_run:
        args.sizes, args.samples, args.steps, args.train_steps = [32, 48], 2, 2, 2
        args.batch, args.trajectories, args.solver_n = 2, min(args.trajectories, 2), 32
    if args.threads:
        torch.set_num_threads(args.threads)
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if args.device == "auto" else args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"

    rows = []
    if args.cuda_tests:
        rows.append(f"| CUDA tests (pytest -k cuda) | {cuda_tests()} |||||||")
    previous = None
    for n in sorted(args.sizes):
        net = FNO(1, 1, width=32, modes=12, layers=4, boundary=args.boundary).to(device)
        process = VPSDE(build_prior("matern"), args.boundary)
        sample_s, sample_peak = sampling(net, process, n, args.samples, args.steps, device)
        train_s, train_peak = training(net, process, n, args.batch, args.train_steps, device)
        ratio = ("–", "–") if previous is None else (
            f"{sample_s / previous[0]:.2f}×", f"{train_s / previous[1]:.2f}×")
        rows.append(
            f"| {n}² | {sample_s:.2f} | {args.samples / sample_s:.2f} | {ratio[0]} "
            f"| {1e3 * train_s:.1f} | {1 / train_s:.1f} | {ratio[1]} "
            f"| {max(sample_peak, train_peak):.0f} |"
        )
        previous = (sample_s, train_s)
    if args.trajectories:
        seconds, peak = solver(args.solver_n, args.trajectories, device)
        rows.append(
            f"| solver: {args.trajectories} × {args.solver_n}² FitzHugh–Nagumo to t = 5 "
            f"| {seconds:.2f} | {args.trajectories / seconds:.1f} traj/s |||||{peak:.0f} |"
        )
    print(
        f"\ntorch {torch.__version__} on {name}, {torch.get_num_threads()} threads; FNO width 32, "
        f"12 modes, 4 layers, {args.boundary}; sampling {args.samples} × {args.steps} EM steps; "
        f"training batch {args.batch}\n"
    )
    print("| grid | sampling s | samples/s | × | train ms/step | steps/s | × | peak MiB |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
