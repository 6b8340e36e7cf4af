"""Training throughput of mldiff's FNO against neuraloperator's FNO, side by side on CPU.

One training step = forward, MSE loss, backward, Adam step, batch ``--batch`` at n×n.
Both networks: ``--width`` channels, ``--layers`` Fourier layers, the same kept modes
(ours ``modes``; neuraloperator ``n_modes = 2·modes − 1`` per axis, which keeps
``k_y ∈ [−(modes−1), modes−1]``, ``k_x ∈ [0, modes−1]`` like ours), a linear lifting and
a ``2·width`` projection MLP. "matched" turns neuraloperator's channel MLP off so each layer is
spectral conv + linear skip + GELU like ours (ours adds FiLM time conditioning);
"default" keeps neuraloperator's defaults otherwise (channel MLP on, 2·width lifting MLP).
Timing rounds of the models are interleaved, so load from other processes hits all of them;
the median over rounds is reported.

    pip install neuraloperator   # the peer, for this script only
    python tests/benchmarks/bench_fno.py [--batch 16] [--rounds 7] [--steps 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from mldiff.models import FNO, count_parameters


def peer_fno(width: int, modes: int, layers: int, matched: bool) -> nn.Module:
    """neuraloperator's FNO with our width, kept modes and layer count."""
    from neuralop.models import FNO as NeuralopFNO

    extra = {"lifting_channel_ratio": 0, "use_channel_mlp": False} if matched else {}
    return NeuralopFNO(
        n_modes=(2 * modes - 1, 2 * modes - 1),
        in_channels=1,
        out_channels=1,
        hidden_channels=width,
        n_layers=layers,
        projection_channel_ratio=2,
        **extra,
    )


def train_step(net: nn.Module, conditioned: bool, batch: int, n: int) -> Callable[[], None]:
    """A closure doing one Adam step of ``net`` on a fixed random batch."""
    g = torch.Generator().manual_seed(0)
    x, target = torch.randn(2, batch, 1, n, n, generator=g)
    t = torch.rand(batch, generator=g)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)

    def step() -> None:
        out = net(x, t) if conditioned else net(x)
        loss = (out - target).square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--modes", type=int, default=12)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=5, help="steps per timing round")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; batch {args.batch}, "
        f"width {args.width}, modes {args.modes}, layers {args.layers}"
    )
    print(f"{'n':>4} {'model':>16} {'params':>9} {'samples/s':>10} {'ours / model':>13}")
    for n in args.sizes:
        nets = {
            "mldiff": (FNO(1, 1, width=args.width, modes=args.modes, layers=args.layers), True),
            "neuralop matched": (peer_fno(args.width, args.modes, args.layers, True), False),
            "neuralop default": (peer_fno(args.width, args.modes, args.layers, False), False),
        }
        steps = {k: train_step(net, cond, args.batch, n) for k, (net, cond) in nets.items()}
        rates: dict[str, list[float]] = {k: [] for k in nets}
        for step in steps.values():
            step()  # warm-up
        for _ in range(args.rounds):
            for key, step in steps.items():
                start = time.perf_counter()
                for _ in range(args.steps):
                    step()
                rates[key].append(args.batch * args.steps / (time.perf_counter() - start))
        ours = statistics.median(rates["mldiff"])
        for key, (net, _) in nets.items():
            rate = statistics.median(rates[key])
            params = count_parameters(net)
            print(f"{n:>4} {key:>16} {params:>9} {rate:>10.1f} {ours / rate:>12.2f}x")


if __name__ == "__main__":
    main()
