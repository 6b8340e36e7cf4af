"""Time and peak memory of ``mldiff.evaluate.metrics.compare`` for 1000 vs 1000 samples.

Run: ``python tests/benchmarks/bench_metrics.py [--sizes 64 128] [--threads 2]``.

Each measurement runs in a fresh spawned process (so peaks do not carry over) that builds the
two sets (float32, smooth random fields), records ``resource.getrusage(RUSAGE_SELF).ru_maxrss``,
runs the call and reports the wall time and the growth of the peak resident set over that
baseline (memory the call needed beyond the data and the imports).

Peer, side by side: the direct implementation with ``scipy.spatial.distance.cdist`` on the
flattened float64 arrays (energy distance, Gaussian MMD with the median bandwidth, Vendi of both
sets, no bootstrap), which computes the same three numbers as ``compare`` (checked) but not the
spectra, sliced W2, statistics or intervals.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import time

import torch

N_SAMPLES = 1000


def _fields(n: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    """Smooth random fields, white noise filtered by ``1 / (1 + |m|²/16)``, in chunks of 50 so
    that building them does not raise the peak much above the set itself."""
    gen = torch.Generator().manual_seed(seed)
    m = torch.fft.fftfreq(n, 1 / n)
    k2 = m[:, None] ** 2 + torch.fft.rfftfreq(n, 1 / n)[None, :] ** 2
    std = (1 + (m[:, None] ** 2 + m[None, :] ** 2) / 16).pow(-2).mean().sqrt()  # of the output
    out = torch.empty(N_SAMPLES, 1, n, n)
    for s in range(0, N_SAMPLES, 50):
        noise = torch.randn(50, 1, n, n, generator=gen)
        smooth = torch.fft.irfft2(torch.fft.rfft2(noise) / (1 + k2 / 16), s=(n, n))
        out[s : s + 50] = scale * smooth / std
    return out


def _peer(x, y) -> dict[str, float]:
    import numpy as np
    from scipy.spatial.distance import cdist

    n = x.shape[-1]
    a = x.numpy().reshape(len(x), -1).astype(np.float64) / n
    b = y.numpy().reshape(len(y), -1).astype(np.float64) / n
    pooled = np.concatenate([a, b])
    d = cdist(pooled, pooled)
    na, nb = len(a), len(b)
    dxx, dyy, dxy = d[:na, :na], d[na:, na:], d[:na, na:]
    energy = 2 * dxy.mean() - dxx.sum() / (na * (na - 1)) - dyy.sum() / (nb * (nb - 1))
    h = np.median(d[np.triu_indices(len(d), 1)])
    k = np.exp(-(d**2) / (2 * h**2))
    kxx, kyy = k[:na, :na], k[na:, na:]
    mmd = (
        (kxx.sum() - na) / (na * (na - 1))
        + (kyy.sum() - nb) / (nb * (nb - 1))
        - 2 * k[:na, na:].mean()
    )

    def vendi(z):
        u = z / np.linalg.norm(z, axis=1, keepdims=True)
        lam = np.clip(np.linalg.eigvalsh(u @ u.T / len(u)), 0, None)
        lam = lam[lam > 0]
        return float(np.exp(-(lam * np.log(lam)).sum()))

    return {
        "energy_distance": energy,
        "mmd2": mmd,
        "vendi_samples": vendi(a),
        "vendi_reference": vendi(b),
    }


def _measure(kind: str, n: int, n_boot: int, threads: int, queue) -> None:
    from mldiff.evaluate import metrics

    torch.set_num_threads(threads)
    x, y = _fields(n, 0), _fields(n, 1, 1.1)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if kind == "ours":
        out = metrics.compare(x, y, 2.0, torch.Generator().manual_seed(0), n_boot)
    else:
        out = _peer(x, y)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base  # KiB on Linux
    queue.put((seconds, peak / 1024, {k: float(out[k]) for k in ("energy_distance", "mmd2")}))


def _run(kind: str, n: int, n_boot: int, threads: int):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_measure, args=(kind, n, n_boot, threads, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n-boot", type=int, default=200)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    print(
        f"compare(): {N_SAMPLES} vs {N_SAMPLES} samples, {args.threads} threads; "
        "peak = growth of ru_maxrss over the loaded data"
    )
    header = (
        f"{'n':>4} {'call':<28} {'time s':>8} {'peak MiB':>9} "
        f"{'x peer time':>12} {'x peer mem':>11}"
    )
    print(header)
    print("-" * len(header))
    for n in args.sizes:
        peer_t, peer_m, peer_vals = _run("peer", n, 0, args.threads)
        rows = [("peer: scipy cdist ED+MMD+Vendi", peer_t, peer_m)]
        for n_boot in (0, args.n_boot):
            t, m, vals = _run("ours", n, n_boot, args.threads)
            for key, v in vals.items():
                assert abs(v - peer_vals[key]) <= 1e-9 * max(1.0, abs(v)), (key, v, peer_vals)
            rows.append((f"ours: compare n_boot={n_boot}", t, m))
        for name, t, m in rows:
            print(
                f"{n:>4} {name:<28} {t:>8.2f} {m:>9.0f} {t / peer_t:>12.2f} "
                f"{m / max(peer_m, 1e-9):>11.2f}"
            )


if __name__ == "__main__":
    main()
