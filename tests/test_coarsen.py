"""Restriction/prolongation: constants, means, band-limited exactness, orthonormal identities."""

import math

import numpy as np
import pytest
import torch

from mldiff.datasets.coarsen import prolong, restrict
from mldiff.errors import MldiffError
from mldiff.spectral import cell_centres

KINDS = [(m, b) for m in ("average", "spectral") for b in ("periodic", "neumann")]
L, X0 = 2.0, -1.0


def grid(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Y, X)`` cell centres of the n×n grid on [-1, 1]², float64, each ``(n, n)``."""
    c = cell_centres(n, L, X0)
    return torch.meshgrid(c, c, indexing="ij")


def band_limited(n: int, boundary: str) -> torch.Tensor:
    """A field whose modes lie strictly inside the band of an 8×8 grid, sampled on n×n."""
    y, x = ((c - X0) / L for c in grid(n))
    if boundary == "periodic":  # |m| <= 3 < 8 / 2
        arg = 2 * math.pi
        return (
            0.7
            + torch.cos(arg * x)
            - 0.5 * torch.sin(arg * 3 * y)
            + 0.3 * torch.cos(arg * (2 * x - 3 * y) + 0.4)
        )
    return (
        0.7
        + torch.cos(math.pi * 7 * x)
        + 0.4 * torch.cos(math.pi * 3 * y) * torch.cos(math.pi * 5 * x)
    )


def matrix(op, n_in: int, factor: int, method: str, boundary: str) -> torch.Tensor:
    """Dense matrix of a linear grid operator, columns = images of the unit fields."""
    basis = torch.eye(n_in * n_in, dtype=torch.float64).reshape(-1, n_in, n_in)
    return op(basis, factor, method, boundary, orthonormal=True).reshape(n_in * n_in, -1).T


@pytest.mark.parametrize(("method", "boundary"), KINDS)
def test_constant_stays_the_same_constant_at_every_level(method, boundary):
    field = torch.full((2, 64, 64), 3.25, dtype=torch.float64)
    for factor in (2, 4, 8, 16):
        coarse = restrict(field, factor, method, boundary)
        assert coarse.shape == (2, 64 // factor, 64 // factor)
        torch.testing.assert_close(coarse, torch.full_like(coarse, 3.25), rtol=0, atol=1e-13)
        back = prolong(coarse, factor, method, boundary)
        torch.testing.assert_close(back, field, rtol=0, atol=1e-13)


@pytest.mark.parametrize(("method", "boundary"), KINDS)
def test_domain_mean_is_preserved(method, boundary):
    field = torch.randn(3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for factor in (2, 4, 8):
        coarse = restrict(field, factor, method, boundary)
        torch.testing.assert_close(coarse.mean((-2, -1)), field.mean((-2, -1)), rtol=0, atol=1e-14)


def test_cell_average_is_the_block_mean():
    field = torch.arange(16.0, dtype=torch.float64).reshape(4, 4)
    expected = torch.tensor([[2.5, 4.5], [10.5, 12.5]], dtype=torch.float64)
    torch.testing.assert_close(restrict(field, 2, "average"), expected, rtol=0, atol=0)


@pytest.mark.parametrize("boundary", ["periodic", "neumann"])
def test_spectral_truncation_of_band_limited_field_is_exact(boundary):
    fine = band_limited(32, boundary)
    coarse = restrict(fine, 4, "spectral", boundary)
    torch.testing.assert_close(coarse, band_limited(8, boundary), rtol=0, atol=1e-12)
    # spectral interpolation back to the fine grid is exact as well
    torch.testing.assert_close(prolong(coarse, 4, "spectral", boundary), fine, rtol=0, atol=1e-12)
    # cell averaging is not exact on the same field (the test would catch a mix-up)
    assert (restrict(fine, 4, "average", boundary) - band_limited(8, boundary)).abs().max() > 0.05


def test_periodic_nyquist_keeps_sine_with_unit_rms_and_drops_cosine():
    y, x = grid(16)
    phase = math.pi * 4 * (x - X0) / L  # frequency of the Nyquist of a 4×4 grid
    _, xc = grid(4)
    alternating = torch.sin(math.pi * 4 * (xc - X0) / L)  # (-1)^j at coarse centres
    sine = restrict(torch.sin(phase), 4, "spectral", "periodic")
    torch.testing.assert_close(sine, alternating / math.sqrt(2), rtol=0, atol=1e-12)
    torch.testing.assert_close(sine.pow(2).mean(), torch.sin(phase).pow(2).mean())
    cosine = restrict(torch.cos(phase), 4, "spectral", "periodic")
    torch.testing.assert_close(cosine, torch.zeros_like(cosine), rtol=0, atol=1e-12)


@pytest.mark.parametrize(("method", "boundary"), KINDS)
@pytest.mark.parametrize("factor", [2, 4])
def test_orthonormal_restriction_identities(method, boundary, factor):
    n = 8
    r = matrix(restrict, n, factor, method, boundary)
    u = matrix(prolong, n // factor, factor, method, boundary)
    eye = torch.eye(r.shape[0], dtype=torch.float64)
    torch.testing.assert_close(r @ r.T, eye, rtol=0, atol=1e-13)  # R Rᵀ = I
    torch.testing.assert_close(u, r.T, rtol=0, atol=1e-13)  # U = Rᵀ
    p = u @ r
    torch.testing.assert_close(p @ p, p, rtol=0, atol=1e-13)  # idempotent
    torch.testing.assert_close(p, p.T, rtol=0, atol=1e-13)  # symmetric
    torch.testing.assert_close(torch.trace(p).item(), float((n // factor) ** 2))  # rank
    # value-preserving operators are the orthonormal ones scaled by f
    x = torch.randn(n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(
        restrict(x, factor, method, boundary) * factor,
        restrict(x, factor, method, boundary, orthonormal=True),
    )


@pytest.mark.parametrize(("method", "boundary"), KINDS)
def test_restrict_undoes_prolong(method, boundary):
    y = torch.randn(2, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(restrict(prolong(y, 4, method, boundary), 4, method, boundary), y)


def test_dtype_and_array_type_are_kept():
    x32 = torch.randn(2, 16, 16)
    assert restrict(x32, 2, "spectral", "periodic").dtype == torch.float32
    arr = np.random.default_rng(0).normal(size=(16, 16))
    out = restrict(arr, 2, "spectral", "neumann")
    assert isinstance(out, np.ndarray) and out.shape == (8, 8)
    np.testing.assert_allclose(out.mean(), arr.mean(), atol=1e-14)


@pytest.mark.parametrize(
    ("shape", "factor", "method", "boundary", "needle"),
    [
        ((8, 8), 3, "average", "periodic", "factor"),
        ((8, 4), 2, "average", "periodic", "shape"),
        ((12, 12), 8, "average", "periodic", "divisible"),
        ((8, 8), 2, "nearest", "periodic", "method"),
        ((8, 8), 2, "spectral", "dirichlet", "boundary"),
    ],
)
def test_bad_arguments_raise(shape, factor, method, boundary, needle):
    with pytest.raises(MldiffError, match=needle):
        restrict(torch.zeros(shape), factor, method, boundary)
