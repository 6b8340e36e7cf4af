"""Plain sanity of a sample set against the data: variance ratio, value range, a blow-up flag.

For samples ``x`` and data ``d`` (normalized, ``(N, C, n, n)``) per species ``c``:
``variance_ratio_c = Var(x_c) / Var(d_c)`` over all samples and grid values; the set's
``variance_ratio`` is the species farthest from 1 (in log). ``value_min/max`` and
``reference_min/max`` are the extremes over all species. The flag is a sentence a reader cannot
miss: ``samples blow up: variance 40x the data (A)`` when the ratio exceeds :data:`BLOW_UP`,
``samples collapse: …`` below :data:`COLLAPSE`, ``samples blow up: non-finite values`` for
NaN/inf, else empty.
"""

from __future__ import annotations

import math
from typing import Any

import torch

BLOW_UP = 4.0
COLLAPSE = 0.25


def sanity(x: torch.Tensor, data: torch.Tensor, species: tuple[str, ...]) -> dict[str, Any]:
    """``variance_ratio``, ``variance_ratio_c<k>``, ``value_min/max``, ``reference_min/max`` and
    ``sanity`` (the flag) of samples ``x`` against ``data``."""
    if not bool(torch.isfinite(x).all()):
        return {"sanity": "samples blow up: non-finite values"}
    x, data = x.double(), data.double()
    ratios = (x.transpose(0, 1).flatten(1).var(1) / data.transpose(0, 1).flatten(1).var(1))
    worst = int(ratios.log().abs().argmax())
    ratio = float(ratios[worst])
    flag = ""
    if ratio > BLOW_UP or ratio < COLLAPSE:
        verb = "blow up" if ratio > BLOW_UP else "collapse"
        flag = f"samples {verb}: variance {ratio:.3g}x the data ({species[worst]})"
    return {
        "variance_ratio": ratio,
        **{f"variance_ratio_c{c}": float(r) for c, r in enumerate(ratios)},
        "value_min": float(x.min()), "value_max": float(x.max()),
        "reference_min": float(data.min()), "reference_max": float(data.max()),
        "sanity": flag if math.isfinite(ratio) else "samples blow up: zero data variance",
    }
