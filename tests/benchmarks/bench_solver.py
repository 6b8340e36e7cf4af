"""Benchmark: mldiff's batched ETDRK4 vs py-pde vs the PDEBench method, FitzHugh–Nagumo to t = 5.

All three solve the same semi-discrete system (PDEBench's cell-centred 5-point finite volumes
with mirror ghost cells on [-1, 1]², white-noise initial conditions), so errors are comparable:
relative L2 error of ``u`` at t = 5 against a fine ETDRK4 reference, on the first
``--error-samples`` trajectories. Wall time per trajectory, side by side in one process, with
``--threads`` threads for torch and numba (default 1: one core per trajectory stream).

* mldiff: ``simulate_dataset`` on ``--trajectories`` trajectories (batched, IC generation and
  coefficient set-up included): default steps (float32/64), twice the default ``dt0`` (~1e-3,
  float32) and ``TIGHT`` (~1e-6, float32/64); best of ``--repeats`` timings (shared machine).
* py-pde: stepper built once, numba compilation excluded (a warm-up call), then one call per
  trajectory; adaptive Euler (~1e-3) and adaptive Runge–Kutta (~1e-6).
* PDEBench: ``scipy.integrate.solve_ivp`` RK45 on the sparse system, one trajectory at a time;
  rtol 1e-3 (PDEBench's default) and 1e-7.

Peers are installed for the benchmark only: ``pip install py-pde``. Run::

    python tests/benchmarks/bench_solver.py            # 128 (64 traj.) and 512 (16 traj.)
    python tests/benchmarks/bench_solver.py --quick    # 128 only, 16 trajectories, 1 repeat
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from functools import partial

import numpy as np
import scipy.sparse as sp
import torch
from scipy.integrate import solve_ivp

from mldiff.pde import TIGHT, get_system, resolve_dt0, simulate_dataset

T_END = 5.0
REFERENCE = {"dt_max": 0.01, "dt0": 1e-5, "ramp_steps": 8}


def ours(n: int, count: int, batch: int, dtype: str, steps: dict) -> tuple[np.ndarray, float]:
    """(u at T_END for every trajectory, seconds per trajectory)."""
    start = time.perf_counter()
    ds = simulate_dataset(
        "fitzhugh_nagumo",
        None,
        n,
        [T_END],
        count,
        0,
        laplacian="finite_volume",
        batch_size=batch,
        dtype=dtype,
        device="cpu",
        progress=False,
        **steps,
    )
    return ds.u.values[:, 0].astype(np.float64), (time.perf_counter() - start) / count


def pypde(n: int, seeds: range, scheme: str, tolerance: float) -> tuple[np.ndarray, float]:
    """py-pde on the same grid and boundary; stepper built and compiled before timing."""
    import pde

    grid = pde.CartesianGrid([[-1, 1], [-1, 1]], [n, n])
    eq = pde.PDE(
        {"u": "Du*laplace(u) + u - u**3 - k - v", "v": "Dv*laplace(v) + u - v"},
        consts=get_system("fitzhugh_nagumo").params,
        bc={"derivative": 0},
    )
    system = get_system("fitzhugh_nagumo")

    def state(seed: int):  # py-pde stores fields as [x, y]
        ic = system.initial_condition(n, seed)
        return pde.FieldCollection([pde.ScalarField(grid, ic[s].T.copy()) for s in range(2)])

    cls = pde.EulerSolver if scheme == "euler" else pde.RungeKuttaSolver
    solver = cls(eq, adaptive=True, tolerance=tolerance)
    stepper = solver.make_stepper(state(0), dt=1e-4)
    stepper(state(0), 0.0, 1e-3)  # numba compilation happens here, outside the timing
    out, elapsed = [], 0.0
    for seed in seeds:
        s = state(seed)
        start = time.perf_counter()
        stepper(s, 0.0, T_END)
        elapsed += time.perf_counter() - start
        out.append(s[0].data.T.copy())
    return np.stack(out), elapsed / len(seeds)


def pdebench(n: int, seeds: range, rtol: float, atol: float) -> tuple[np.ndarray, float]:
    """PDEBench's method: RK45 on the sparse mirror-ghost-cell finite-volume system."""
    system = get_system("fitzhugh_nagumo")
    du, dv, k = system.params["Du"], system.params["Dv"], system.params["k"]
    h = 2.0 / n
    main = -2.0 * np.ones(n)
    main[[0, -1]] = -1.0
    one_d = sp.diags([np.ones(n - 1), main, np.ones(n - 1)], [-1, 0, 1]) / h**2
    lap = (sp.kron(sp.identity(n), one_d) + sp.kron(one_d, sp.identity(n))).tocsr()

    def rhs(_t, y):
        u, v = y[: n * n], y[n * n :]
        return np.concatenate([du * (lap @ u) + u - u**3 - k - v, dv * (lap @ v) + u - v])

    out, start = [], time.perf_counter()
    for seed in seeds:
        y0 = system.initial_condition(n, seed).reshape(-1)
        sol = solve_ivp(rhs, (0, T_END), y0, method="RK45", t_eval=[T_END], rtol=rtol, atol=atol)
        out.append(sol.y[: n * n, -1].reshape(n, n))
    return np.stack(out), (time.perf_counter() - start) / len(seeds)


def rel_error(u: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(u - ref) / np.linalg.norm(ref))


def run_size(n: int, args: argparse.Namespace) -> list[tuple]:
    """Rows (method, setting, error class, error, s/trajectory) for grid size n."""
    k = args.error_samples if n <= 128 else 1
    count = args.trajectories if n <= 128 else args.trajectories_large
    batch = args.batch_size
    start = time.perf_counter()
    ref, _ = ours(n, k, k, "float64", REFERENCE)
    note = ""
    if n <= 128:  # how far the reference itself is from a run with every step halved
        half = {"dt_max": REFERENCE["dt_max"] / 2, "dt0": REFERENCE["dt0"] / 2, "ramp_steps": 16}
        note = f"; step-halving change {rel_error(ref[:1], ours(n, 1, 1, 'float64', half)[0]):.1e}"
    print(f"[{n}] reference {REFERENCE}: {time.perf_counter() - start:.0f} s{note}", flush=True)
    rows = []

    def add(method, setting, cls, run, repeats=args.repeats):
        """Time ``run`` (best of ``repeats``: the machine is shared) and record a row."""
        u, seconds = min((run() for _ in range(repeats)), key=lambda result: result[1])
        m = min(k, len(u))
        rows.append((n, method, setting, cls, rel_error(u[:m], ref[:m]), seconds))
        print(
            f"[{n}] {method:8s} {setting:34s} err {rows[-1][4]:.1e}  {seconds:.3f} s/traj",
            flush=True,
        )

    auto = resolve_dt0(get_system("fitzhugh_nagumo"), n, 2.0, None, 0.5)
    default = {"dt_max": 0.5, "dt0": auto, "ramp_steps": 2}
    coarse = {**default, "dt0": 2 * auto}
    for dtype, steps, label, cls in (
        ("float32", coarse, f"dt0=2x default={2 * auto:.2g}", "1e-3"),
        ("float32", default, f"defaults (dt0={auto:.2g})", "1e-3"),
        ("float64", default, f"defaults (dt0={auto:.2g})", "1e-3"),
        ("float32", TIGHT, "TIGHT", "1e-6"),
        ("float64", TIGHT, "TIGHT", "1e-6"),
    ):
        add("mldiff", f"{dtype} {label}", cls, partial(ours, n, count, batch, dtype, steps))
    add("py-pde", "Euler adaptive tol 1e-4", "1e-3", partial(pypde, n, range(k), "euler", 1e-4))
    add("py-pde", "Runge-Kutta adaptive tol 1e-6", "1e-6", partial(pypde, n, range(k), "rk", 1e-6))
    if n <= 128 or args.pdebench_large:  # slow: one trajectory, timed once
        for rtol, atol, cls in ((1e-3, 1e-6, "1e-3"), (1e-7, 1e-9, "1e-6")):
            setting = f"solve_ivp RK45 rtol {rtol:g} atol {atol:g}"
            add("PDEBench", setting, cls, partial(pdebench, n, range(1), rtol, atol), repeats=1)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--trajectories", type=int, default=64, help="mldiff batch run at n<=128")
    parser.add_argument("--trajectories-large", type=int, default=16, help="mldiff run at n>128")
    parser.add_argument("--error-samples", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2, help="best-of timing repeats")
    parser.add_argument("--pdebench-large", action="store_true", help="run PDEBench at n>128")
    parser.add_argument("--quick", action="store_true", help="128 only, 16 trajectories")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.trajectories, args.repeats = [128], 16, 1
    torch.set_num_threads(args.threads)
    import numba
    import pde

    numba.set_num_threads(args.threads)
    pde.config["backend.numba.multithreading"] = "always" if args.threads > 1 else "never"
    warnings.filterwarnings("ignore")
    print(
        f"threads {args.threads}; load average at start {os.getloadavg()[0]:.2f} "
        f"on {os.cpu_count()} CPUs (other jobs share the machine)",
        flush=True,
    )
    rows = [row for n in args.sizes for row in run_size(n, args)]
    print(f"\nload average at end {os.getloadavg()[0]:.2f}")
    head = f"{'n':>4} {'method':8} {'setting':38} {'class':5} {'err(u)':>8} {'s/traj':>8}"
    print(f"\n{head} {'ours x':>7}")
    for n, method, setting, cls, err, seconds in rows:
        mine = min(r[5] for r in rows if r[0] == n and r[1] == "mldiff" and r[3] == cls)
        print(
            f"{n:4d} {method:8} {setting:38} {cls:5} {err:8.1e} {seconds:8.3f} "
            f"{seconds / mine:7.1f}"
        )
    print("'ours x' = this row's time / mldiff's fastest time in the same error class")


if __name__ == "__main__":
    main()
