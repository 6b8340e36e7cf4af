"""Cost and likelihood of the forward processes, each against the VP SDE, side by side.

1. Training step (forward + backward + Adam) of one small FNO with ``K·C`` channels per
   process at ``--n`` (64), batch ``--batch``; rounds interleaved across processes, median.
2. Sampling: ``--sample-steps`` Euler–Maruyama steps of the same (untrained) FNO, batch 4.
3. ELBO in bits/dim at 16 and 32 on synthetic Gaussian fields ``N(0, C_data)`` (Matérn
   γ = 2 data, Matérn γ = 1.5 prior): with the exact score (the bound's tightness; the exact
   NLL is printed beside it) and with a tiny FNO trained ``--train-steps`` steps per process
   (the fixed processes, VP included, on ``--objective``, DSM by default; "learned" always on
   the ELBO, jointly with its parameters). With
   ``--store DIR`` holding ``level_16.nc``/``level_32.nc``, the trained-FNO ELBO is also
   measured on those levels' validation split (normalized fields). Continuous-density bound,
   no dequantization.

    python tests/benchmarks/bench_processes.py [--n 64] [--train-steps 400] \
        [--store /tmp/e2e/data/store]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import torch

from mldiff.datasets import normalize, open_level
from mldiff.diffusion import (
    JointGaussianScore,
    build_prior,
    build_process,
    elbo_report,
    gaussian_log_likelihood,
    sample_em,
)
from mldiff.models import build_model

PROCESSES = ("vp", "cld", "alda", "malda", "learned")
BOUNDARY = "neumann"
FNO = {"width": 16, "modes": 8, "layers": 2, "time_dim": 16, "boundary": BOUNDARY}


def network(process, channels: int = 1) -> torch.nn.Module:
    size = process.state_channels(channels)
    return build_model("fno", size, size, **FNO)


def make_process(name: str, prior, args):
    """Process ``name`` training on ``args.objective`` (the learned one always on the ELBO;
    VP on the ELBO is the K = 1 linear process ``Q = 0``, ``D = ½``)."""
    if name == "learned" or args.objective == "dsm":
        return build_process(name, prior, BOUNDARY)
    if name == "vp":
        return build_process("linear", prior, BOUNDARY, q=[[0.0]], d=[[0.5]], objective="elbo")
    return build_process(name, prior, BOUNDARY, objective="elbo")


def median_time(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return statistics.median(times)


def train(process, net, x: torch.Tensor, steps: int, batch: int, seed: int = 0) -> None:
    """Adam on the process's training loss (its parameters too, if it has any)."""
    params = list(net.parameters())
    if isinstance(process, torch.nn.Module):
        params += list(process.parameters())
    optimizer = torch.optim.Adam(params, lr=2e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x0 = x[torch.randint(len(x), (batch,), generator=gen)]
        loss = process.loss(net, x0, process.sample_time(batch, gen), gen).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def costs(args, prior) -> dict[str, tuple[float, float]]:
    """Median train-step and sampling seconds per process (interleaved rounds)."""
    x = prior.sample((args.batch, 1), args.n, BOUNDARY, torch.Generator().manual_seed(0))
    setups = {}
    for name in PROCESSES:
        process = build_process(name, prior, BOUNDARY)
        setups[name] = (process, network(process))
    step_times = {name: [] for name in PROCESSES}
    sample_times = {name: [] for name in PROCESSES}
    for round_ in range(args.rounds + 1):  # round 0 warms up and is not counted
        for name, (process, net) in setups.items():
            step = median_time(lambda p=process, m=net: train(p, m, x, 1, args.batch), 1)
            sample = median_time(
                lambda p=process, m=net: sample_em(p, m, 4, 1, args.n, args.sample_steps,
                                                   torch.Generator().manual_seed(1), False), 1)
            if round_:
                step_times[name].append(step)
                sample_times[name].append(sample)
    return {name: (statistics.median(step_times[name]), statistics.median(sample_times[name]))
            for name in PROCESSES}


def likelihoods(args, prior, data) -> dict[tuple[str, int], dict[str, float]]:
    """bits/dim per process and level: exact score, trained FNO (synthetic), trained FNO (store)."""
    out = {}
    for n in (16, 32):
        gen = torch.Generator().manual_seed(n)
        x_train = data.sample((512, 1), n, BOUNDARY, gen)
        x_val = data.sample((args.val, 1), n, BOUNDARY, gen)
        exact_bits = float(-gaussian_log_likelihood(x_val, data, BOUNDARY).mean()) / (
            n * n * math.log(2))
        store = None
        if args.store and (Path(args.store) / f"level_{n}.nc").exists():
            ds = open_level(Path(args.store) / f"level_{n}.nc")
            store = (normalize(ds, "train"), normalize(ds, "validation"))
        for name in PROCESSES:
            process = make_process(name, prior, args)
            row = {"exact_nll": exact_bits}
            report = elbo_report(process, JointGaussianScore(process, data), x_val, args.n_times,
                                 torch.Generator().manual_seed(2))
            row["exact_score"], row["exact_se"] = report["bits_per_dim"], report["bits_per_dim_se"]
            net = network(process)
            tic = time.perf_counter()
            train(process, net, x_train, args.train_steps, 16)
            row["train_s"] = time.perf_counter() - tic
            report = elbo_report(process, net, x_val, args.n_times,
                                 torch.Generator().manual_seed(3))
            row["fno"], row["fno_se"] = report["bits_per_dim"], report["bits_per_dim_se"]
            if store is not None:
                process = make_process(name, prior, args)
                net = network(process, store[0].shape[1])
                train(process, net, store[0], args.train_steps, 8)
                row["store_fno"] = elbo_report(process, net, store[1], args.n_times,
                                               torch.Generator().manual_seed(3))["bits_per_dim"]
            out[name, n] = row
            print(f"  ELBO {name} n={n}: {row}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sample-steps", type=int, default=20)
    parser.add_argument("--train-steps", type=int, default=400)
    parser.add_argument("--n-times", type=int, default=32)
    parser.add_argument("--val", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--objective", choices=("dsm", "elbo"), default="dsm")
    parser.add_argument("--store", default="", help="folder with level_16.nc / level_32.nc")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    prior = build_prior("matern", gamma=1.5)
    data = build_prior("matern", gamma=2.0, tau=5.0, scale=4.0)

    timing = costs(args, prior)
    step_vp, sample_vp = timing["vp"]
    print(f"\nCost at {args.n}x{args.n} (FNO width {FNO['width']}, modes {FNO['modes']}, "
          f"layers {FNO['layers']}; median of {args.rounds} interleaved rounds)")
    print(f"{'process':8} {'K':>2} {'train step ms':>14} {'x VP':>6} "
          f"{'sample s (' + str(args.sample_steps) + ' EM)':>20} {'x VP':>6}")
    for name in PROCESSES:
        step, sample = timing[name]
        k = build_process(name, prior, BOUNDARY).state_channels(1)
        print(f"{name:8} {k:>2} {1e3 * step:14.1f} {step / step_vp:6.2f} {sample:20.3f} "
              f"{sample / sample_vp:6.2f}")

    rows = likelihoods(args, prior, data)
    store_cols = any("store_fno" in r for r in rows.values())
    print(f"\nELBO, bits/dim (lower is better; '- VP': difference to VP), {args.val} "
          f"validation fields, {args.n_times} times; FNO trained {args.train_steps} steps "
          f"(fixed processes on {args.objective})")
    header = f"{'process':8} {'n':>3} {'exact NLL':>10} {'exact score ± se':>18} {'- VP':>7} " \
             f"{'FNO ± se':>15} {'- VP':>7} {'train s':>8}"
    print(header + (f" {'store FNO':>10}" if store_cols else ""))
    for n in (16, 32):
        vp = rows["vp", n]
        for name in PROCESSES:
            r = rows[name, n]
            line = (f"{name:8} {n:>3} {r['exact_nll']:10.3f} {r['exact_score']:10.3f} ± "
                    f"{r['exact_se']:5.3f} {r['exact_score'] - vp['exact_score']:+7.3f} "
                    f"{r['fno']:7.3f} ± {r['fno_se']:5.3f} {r['fno'] - vp['fno']:+7.3f} "
                    f"{r['train_s']:8.1f}")
            print(line + (f" {r['store_fno']:10.3f}" if "store_fno" in r else ""))


if __name__ == "__main__":
    main()
