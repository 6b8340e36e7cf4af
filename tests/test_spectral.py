"""Spectral bases: unitary transforms, exact round trips, and the Laplacian symbols."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft
import torch
import torch.nn.functional as F

from mldiff import spectral


@pytest.mark.parametrize("grad", [False, True], ids=["scipy", "torch"])
@pytest.mark.parametrize("n", [7, 8, 32, 128, 256])
def test_dct2_matches_scipy_and_inverts(n, grad):
    """Both routes (scipy on CPU; matrix or FFT in torch under autograd and on GPUs)."""
    x = torch.randn(3, n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    expected = scipy.fft.dctn(x.numpy(), axes=(-2, -1), norm="ortho")
    x.requires_grad_(grad)
    c = spectral.dct2(x)
    np.testing.assert_allclose(c.detach().numpy(), expected, atol=1e-12)
    np.testing.assert_allclose(spectral.idct2(c).detach().numpy(), x.detach().numpy(), atol=1e-12)


@pytest.mark.parametrize("boundary", spectral.BOUNDARIES)
@pytest.mark.parametrize("n", [8, 9, 16])
def test_transforms_are_unitary(boundary, n):
    x = torch.randn(2, n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    c = spectral.forward(x, boundary)
    weights = spectral.mode_weights(n, boundary)
    assert torch.allclose((weights * c.abs() ** 2).sum(), (x**2).sum())
    assert torch.allclose(spectral.inverse(c, boundary, n), x)


def five_point(x, h, boundary):
    """Cell-centred 5-point Laplacian with mirror (Neumann) or wrapped (periodic) ghost cells."""
    mode = "replicate" if boundary == "neumann" else "circular"
    p = F.pad(x[None], (1, 1, 1, 1), mode=mode)[0]
    neighbours = p[..., 2:, 1:-1] + p[..., :-2, 1:-1] + p[..., 1:-1, 2:] + p[..., 1:-1, :-2]
    return (neighbours - 4 * x) / h**2


@pytest.mark.parametrize("boundary", spectral.BOUNDARIES)
def test_finite_volume_symbol_is_the_five_point_stencil(boundary):
    n, length = 16, 2.0
    x = torch.randn(2, n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    symbol = spectral.laplacian_symbol(n, length, boundary, "finite_volume")
    applied = spectral.inverse(symbol * spectral.forward(x, boundary), boundary, n)
    assert torch.allclose(applied, five_point(x, length / n, boundary), atol=1e-9)


@pytest.mark.parametrize("boundary", spectral.BOUNDARIES)
def test_spectral_symbol_differentiates_a_basis_function_exactly(boundary):
    n, length = 32, 2.0
    y = x = spectral.cell_centres(n, length, -1.0)
    my, mx = 3, 2
    k = (2 if boundary == "periodic" else 1) * torch.pi / length
    f = torch.cos(k * my * (y[:, None] + 1)) * torch.cos(k * mx * (x[None, :] + 1))
    symbol = spectral.laplacian_symbol(n, length, boundary)
    lap = spectral.inverse(symbol * spectral.forward(f, boundary), boundary, n)
    assert torch.allclose(lap, -(k**2) * (my**2 + mx**2) * f, atol=1e-9)


def test_unknown_boundary_and_operator_raise():
    with pytest.raises(ValueError, match="boundary"):
        spectral.forward(torch.zeros(4, 4), "dirichlet")
    with pytest.raises(ValueError, match="laplacian"):
        spectral.laplacian_symbol(4, 1.0, "periodic", "nine_point")
